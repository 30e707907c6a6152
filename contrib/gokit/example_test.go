package gokit_test

import (
	"context"
	"io"
	"log"
	"time"

	kitendpoint "github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/lb"
	kitlog "github.com/go-kit/log"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/contrib/gokit"
	"github.com/mustersd/muster/endpoint"
)

// A go-kit client of order.rpc on Muster, and a server that registers
// itself for Muster's clients and for go-kit's etcdv3 ones.
func Example() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()

	// Server side.
	r, err := gokit.NewRegistrar(cli, endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080"},
		gokit.WithGoKitPrefix("/services/order/"))
	if err != nil {
		log.Fatal(err)
	}
	defer r.Stop()
	r.Register()
	defer r.Deregister()

	// Client side.
	instancer, err := gokit.NewInstancer(cli, "order.rpc")
	if err != nil {
		log.Fatal(err)
	}
	defer instancer.Stop()
	factory := func(instance string) (kitendpoint.Endpoint, io.Closer, error) {
		return func(ctx context.Context, req any) (any, error) {
			return "called " + instance, nil // a real factory dials instance
		}, nil, nil
	}
	endpointer := sd.NewEndpointer(instancer, factory, kitlog.NewNopLogger())
	defer endpointer.Close()
	call := lb.Retry(3, time.Second, lb.NewRoundRobin(endpointer))
	resp, err := call(context.Background(), nil)
	log.Println(resp, err)
}
