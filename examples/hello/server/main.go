// Command server is the hello example's server: it registers "hello.rpc" in
// etcd once it listens, answers UnaryCall with a greeting, and on SIGTERM or
// SIGINT leaves etcd before it stops serving.
//
//	go run ./examples/hello/server -etcd 127.0.0.1:2379 -listen 127.0.0.1:0
//
// It serves gRPC's own test service, so that it needs no generated code.
package main

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"strings"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/mustersd/muster"
)

type hello struct {
	testpb.UnimplementedTestServiceServer
	srv *muster.Server
}

func (h *hello) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	addr := h.srv.Endpoint().Addr
	return &testpb.SimpleResponse{Hostname: addr, Payload: &testpb.Payload{
		Body: []byte("hello, " + string(req.GetPayload().GetBody()) + ", from " + addr),
	}}, nil
}

func main() {
	config := flag.String("f", "", "YAML config file (muster.Config); the flags below are used without it")
	etcd := flag.String("etcd", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg := muster.Config{Name: "hello.rpc", ListenOn: *listen, Etcd: muster.EtcdConfig{Hosts: strings.Split(*etcd, ",")}}
	if *config != "" {
		var err error
		if cfg, err = muster.LoadConfig(*config); err != nil {
			log.Error("config", "error", err)
			os.Exit(2)
		}
	}
	srv, err := muster.NewServer(cfg, muster.WithLogger(log))
	if err != nil {
		log.Error("server", "error", err)
		os.Exit(2)
	}
	testpb.RegisterTestServiceServer(srv, &hello{srv: srv})
	if err := srv.Serve(context.Background()); err != nil { // until SIGTERM or SIGINT
		log.Error("serve", "error", err)
		os.Exit(1)
	}
}
