package kratos_test

import (
	"context"
	"log"
	"time"

	"github.com/go-kratos/kratos/v2"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	clientv3 "go.etcd.io/etcd/client/v3"

	mk "github.com/mustersd/muster/contrib/kratos"
)

// A Kratos application that registers through Muster, and a Kratos client
// that resolves through it: the only change from Kratos's own etcd registry
// is the registry's constructor.
func Example() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	r, err := mk.New(cli, mk.WithKratosKeys()) // WithKratosKeys: Kratos's etcd-registry clients find it too
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	// Server.
	srv := kgrpc.NewServer(kgrpc.Address("0.0.0.0:9000"))
	// pb.RegisterOrderServer(srv, &orderServer{})
	app := kratos.New(kratos.Name("order"), kratos.Server(srv), kratos.Registrar(r))
	go func() {
		if err := app.Run(); err != nil {
			log.Fatal(err)
		}
	}()
	defer app.Stop()

	// Client.
	conn, err := kgrpc.DialInsecure(context.Background(),
		kgrpc.WithEndpoint("discovery:///order"), kgrpc.WithDiscovery(r))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	// client := pb.NewOrderClient(conn)
}
