package proxy_test

import (
	"log"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/proxy"
)

// A proxy of the etcd at 127.0.0.1:2379, for etcd clients at
// 127.0.0.1:23790.
func Example() {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"127.0.0.1:2379"},
		DialOptions: proxy.DialOptions(), // pass the clients' auth tokens on
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	reg := prometheus.NewRegistry()
	p, err := proxy.New(cli, proxy.WithLogger(slog.Default()), proxy.WithRegisterer(reg))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:23790")
	if err != nil {
		log.Fatal(err)
	}
	if err := p.Serve(lis); err != proxy.ErrClosed {
		log.Print(err)
	}
}
