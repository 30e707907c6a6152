// Package kratos is a Kratos registry (github.com/go-kratos/kratos/v2,
// registry.Registrar and registry.Discovery) backed by Muster, so that a
// Kratos application uses Muster as its registry unchanged. It is a module
// of its own, github.com/mustersd/muster/contrib/kratos; import it under
// another name beside Kratos's package kratos:
//
//	import mk "github.com/mustersd/muster/contrib/kratos"
//
//	r, err := mk.New(cli) // cli: an etcd *clientv3.Client
//	if err != nil {
//		return err
//	}
//	defer r.Close()
//
//	// Server: Kratos registers the app's instance through r once its
//	// servers listen, and deregisters it before they stop.
//	app := kratos.New(kratos.Name("order"), kratos.Server(grpcSrv), kratos.Registrar(r))
//
//	// Client: Kratos's gRPC transport resolves discovery:///order through r.
//	conn, err := grpc.DialInsecure(ctx, grpc.WithEndpoint("discovery:///order"), grpc.WithDiscovery(r))
//
// Register writes the instance in Muster's own format (Muster's resolver,
// muster.NewClient, etcd's resolver and the muster CLI see it as service
// "order", at the address of its grpc:// endpoint), under one lease that
// Muster keeps alive and heals after etcd outages, with no retry limit.
// WithKratosKeys also writes it where and as Kratos's own etcd registry
// (contrib/registry/etcd) does, under the same lease, for the Kratos
// clients not moved yet. The instance's ID, version, metadata and endpoint
// list travel with it: GetService and Watch hand back instances equal to
// those registered.
//
// GetService and Watch read Muster's format, or with WithFormats the
// formats given, merged: WithFormats("native", "kratos") makes a client
// that finds both the servers moved to Muster and those still on Kratos's
// registry. A Watcher is built on a discovery.Subscription, so it behaves
// as Muster's resolver does (see Watcher): one etcd watch per service per
// process, no re-list per change, no giving up after an outage, and never
// an empty list.
package kratos
