// Command client is the hello example's client: it finds the instances of
// "hello.rpc" in etcd and greets them round-robin, once a second.
//
//	go run ./examples/hello/client -etcd 127.0.0.1:2379
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/mustersd/muster"
)

func main() {
	etcd := flag.String("etcd", "127.0.0.1:2379", "etcd endpoints, comma-separated")
	n := flag.Int("n", 0, "number of calls (0: until interrupted)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cc, err := muster.NewClient(muster.Config{Name: "hello.rpc", Etcd: muster.EtcdConfig{Hosts: strings.Split(*etcd, ",")}},
		muster.WithLogger(log))
	if err != nil {
		log.Error("client", "error", err)
		os.Exit(2)
	}
	defer cc.Close()
	client := testpb.NewTestServiceClient(cc)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; *n == 0 || i < *n; i++ {
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := client.UnaryCall(callCtx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("world")}})
		cancel()
		if err != nil {
			log.Error("call", "error", err)
		} else {
			fmt.Println(string(resp.GetPayload().GetBody()))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
