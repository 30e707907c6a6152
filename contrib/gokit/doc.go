// Package gokit connects go-kit's service discovery (github.com/go-kit/kit/sd)
// to Muster: an sd.Instancer that follows a service registered in etcd, and
// an sd.Registrar that registers an instance with Muster's registrar.
//
// A client builds its go-kit endpoints on a Muster Instancer exactly as on
// go-kit's own etcdv3 one:
//
//	instancer, err := gokit.NewInstancer(cli, "order.rpc")
//	if err != nil {
//		return err
//	}
//	defer instancer.Stop()
//	endpointer := sd.NewEndpointer(instancer, factory, logger)
//	defer endpointer.Close()
//	call := lb.Retry(3, time.Second, lb.NewRoundRobin(endpointer))
//
// The instance strings are the instances' addresses, "host:port", one per
// address. Behind the Instancer is one discovery.Subscription, so it shares
// the process's etcd watch of the service with the gRPC resolver and every
// other Instancer of it, and it keeps the set through etcd outages: while
// etcd is unreachable it sends an Event whose Err says so and whose
// Instances are still the last known ones, never an empty list. go-kit's
// Endpointer keeps its endpoints on such an Event unless it was built with
// sd.InvalidateOnError; once etcd answers again the Instancer sends the
// current instances without error.
//
// A server registers through a Registrar:
//
//	r, err := gokit.NewRegistrar(cli, endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080"},
//		gokit.WithGoKitPrefix("/services/order/")) // also visible to go-kit's etcdv3 Instancers
//	if err != nil {
//		return err
//	}
//	defer r.Stop()
//	r.Register()
//	defer r.Deregister()
//
// It always registers in Muster's own format, which is etcd naming's, so that
// Muster's Instancer and resolver, etcd's resolver and the muster CLI see the
// instance. go-kit's etcdv3 Instancer hands the value of every key under its
// prefix to the Factory as the instance string, so it cannot read that JSON
// value: WithGoKitPrefix also writes the bare "host:port" under go-kit's
// prefix, under the same lease, for the go-kit clients not migrated yet.
// Reading the other way, a Muster Instancer follows instances that go-kit's
// etcdv3 Registrar wrote, with the go-kit format:
//
//	// go-kit servers: etcdv3.Service{Key: "/services/order/10.0.0.7:8080", Value: "10.0.0.7:8080"}
//	instancer, err := gokit.NewInstancer(cli, "order", gokit.WithDiscoveryOptions(
//		discovery.WithFormat("go-kit"), discovery.WithNamespace("/services")))
//
// (URL values such as "http://10.0.0.7:8080" come out as "10.0.0.7:8080".)
package gokit
