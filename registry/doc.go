// Package registry publishes a process's endpoints in etcd and keeps them
// there.
//
// A Registrar holds one lease and writes one key per endpoint under it. It
// keeps the lease alive in the background, and heals what goes wrong: when the
// lease is lost (etcd restarted or unreachable for longer than the TTL, or the
// lease revoked by someone else) it grants a new one and puts every key again,
// with exponential backoff and jitter, forever, until it is closed; when
// someone deletes one of its keys while the lease lives, it puts the key back.
// Close revokes the lease, so every key of the registrar vanishes at once.
//
//	r, err := registry.New(cli, registry.WithTTL(10*time.Second))
//	if err != nil {
//		return err
//	}
//	defer r.Close()
//	err = r.Register(ctx, endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080"})
//
// Register and Deregister return when etcd holds the change, or with an error
// when their context ends first; in that case the change stays wanted and the
// background loop keeps trying to make it.
package registry
