// Package muster holds the top-level helpers of Muster, service registration
// and discovery for gRPC on etcd: a Config loaded from YAML, a Server that
// registers a gRPC server in etcd once it listens and leaves before it stops,
// and NewClient, which dials a service through the Muster resolver.
//
// A server:
//
//	cfg, err := muster.LoadConfig("etc/order.yaml")
//	if err != nil {
//		log.Fatal(err)
//	}
//	srv, err := muster.NewServer(cfg)
//	if err != nil {
//		log.Fatal(err)
//	}
//	orderpb.RegisterOrderServer(srv, &orderServer{})
//	if err := srv.Serve(context.Background()); err != nil { // until SIGTERM or SIGINT
//		log.Fatal(err)
//	}
//
// A client:
//
//	cc, err := muster.NewClient(muster.Config{
//		Name: "order.rpc",
//		Etcd: muster.EtcdConfig{Hosts: []string{"127.0.0.1:2379"}},
//	})
//	if err != nil {
//		log.Fatal(err)
//	}
//	defer cc.Close()
//	client := orderpb.NewOrderClient(cc)
//
// Shutdown follows one order, so that a rolling restart under load fails no
// request: the server reports NOT_SERVING on its health service (clients with
// health checking, as NewClient's are, stop sending to it at once), revokes
// its lease (its key vanishes from etcd and every resolver drops it), waits
// Shutdown.DrainDelay for that to reach every client, lets the RPCs in flight
// finish (GracefulStop, bounded by Shutdown.Timeout), and only then stops.
package muster
