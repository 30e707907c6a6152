// Package xds is Muster's discovery server for proxyless gRPC clients in any
// language: an xDS server (Aggregated Discovery Service, state of the world,
// built on go-control-plane) that serves the services registered in etcd.
//
// A gRPC client resolving xds:///order.rpc asks for the Listener
// "order.rpc"; the server then serves, all named after the service:
//
//   - a Listener with an API listener: an HttpConnectionManager that takes
//     its routes over ADS and ends with the router filter;
//   - a RouteConfiguration sending everything (domain "*", prefix "") to
//   - a Cluster of type EDS, with the load-balancing policy of WithPolicy
//     (by default muster_p2c for Go clients that have it, round_robin for
//     the others);
//   - a ClusterLoadAssignment built from the etcd snapshot: one locality per
//     zone, weighted by the sum of its endpoints' weights; one HEALTHY
//     LbEndpoint per instance, weighted by its registered weight (0, which
//     xDS forbids, means endpoint.DefaultWeight as everywhere in Muster),
//     with its id, weight, zone, version and tags as filter_metadata
//     "muster".
//
// # One etcd watch per service, whatever the number of clients
//
// The server subscribes to a service (discovery.Subscribe: one etcd watch)
// when the first client asks for it, and all its clients share that
// subscription; it lets go DefaultLinger after the last one has gone.
// So etcd sees one watcher per service in demand, however many clients
// there are. (One watch over the whole namespace would cost one watcher in
// all, but would send the server every change of every service, wanted or
// not; per service, both the server's work and the data it holds follow
// what its clients use.)
//
// # Errors never empty a service
//
// While etcd is unreachable, the last assignment of each service stays
// served, and clients that connect meanwhile get it. A service whose last
// instance has gone keeps its Listener and Cluster with an empty
// assignment, so its clients fail fast (UNAVAILABLE) and keep their
// channel configuration. A name etcd has never heard of is served the same
// way.
//
// # Metrics
//
// With WithRegisterer: muster_xds_streams (clients connected),
// muster_xds_resources{type} (listener, route, cluster, endpoint),
// muster_xds_pushes_total{type} (responses sent),
// muster_xds_nacks_total{type} (responses clients rejected),
// muster_xds_push_latency_seconds (new etcd snapshot to assignment set in
// the cache) and muster_xds_etcd_watchers (etcd watches held), besides
// discovery's own.
//
// # Usage
//
//	srv, err := xds.New(cli, xds.WithLogger(logger), xds.WithRegisterer(reg))
//	if err != nil {
//		return err
//	}
//	defer srv.Close()
//	lis, err := net.Listen("tcp", "127.0.0.1:18000")
//	if err != nil {
//		return err
//	}
//	return srv.Serve(lis)
//
// A Go client needs a bootstrap (Bootstrap.JSON, or `muster xds bootstrap`)
// in the file named by $GRPC_XDS_BOOTSTRAP, and then:
//
//	import _ "google.golang.org/grpc/xds"
//
//	cc, err := grpc.NewClient("xds:///order.rpc", grpc.WithTransportCredentials(insecure.NewCredentials()))
//
// Incremental (delta) xDS and REST fetches are refused; wildcard Listener
// requests get whatever services other clients asked for.
package xds
