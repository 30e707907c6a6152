package gozero_test

import (
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	klog "github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/registry"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/interop/internal/itest"
	"github.com/mustersd/muster/resolver"
)

// TestMixedFleetWithKratos: one service, order, mid-migration between three
// systems, with one instance registered as Kratos's etcd registry registers
// it (a Kratos gRPC transport server; key /microservices/order/<id>, value
// its registry.ServiceInstance), one by go-zero's Publisher
// (order/<lease>) and one by a Muster server (services/order/<addr>), all
// at once. A Muster client configured with Etcd.Formats [native, go-zero,
// kratos], and one dialling muster:///order?format=native,go-zero,kratos,
// resolve them as one set and RPCs reach all three; the removal of each,
// by its own system's means, is seen.
func TestMixedFleetWithKratos(t *testing.T) {
	klog.SetLogger(klog.NewStdLogger(io.Discard)) // Kratos's server logs through a global logger
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)

	// Kratos: its gRPC server, registered as contrib/registry/etcd does
	// (registry.go registerKey and registerWithKV, service.go marshal).
	ks := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	echo.New("kratos").Register(ks)
	u, err := ks.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ks.Start(context.Background()) }()
	t.Cleanup(func() {
		_ = ks.Stop(context.Background())
		<-done
	})
	si := &registry.ServiceInstance{ID: "kratos-1", Name: "order", Version: "v1.0.0", Endpoints: []string{u.String()}}
	kratosKey := "/microservices/order/kratos-1"
	value, _ := json.Marshal(si)
	lease, err := cli.Grant(ctx, 15)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, kratosKey, string(value), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	// go-zero: its Publisher.
	gz := itest.Backend(t, "go-zero")
	stopGZ := publish(t, m, cli, "order", gz.Addr)

	// Muster: a server.
	srv, err := muster.NewServer(muster.Config{
		Name:     "order",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints()},
		Shutdown: muster.ShutdownConfig{DrainDelay: 100 * time.Millisecond},
	}, muster.WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	echo.New("muster").Register(srv)
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(itest.Context(t, 5*time.Second)) })

	// The client, configured (docs/migrating.md quotes it).
	mc, err := muster.NewClient(muster.Config{
		Name:     "order",
		Balancer: "round_robin",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Formats: []string{"native", "go-zero", "kratos"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	itest.WaitReached(t, mc, "kratos", "go-zero", "muster")

	// And by target.
	cc := itest.Dial(t, "muster:///order?format=native,go-zero,kratos", grpc.WithResolvers(resolver.NewBuilder(cli)))
	itest.WaitReached(t, cc, "kratos", "go-zero", "muster")

	// Kratos's Deregister deletes its key.
	if _, err := cli.Delete(ctx, kratosKey); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "go-zero", "muster")
	itest.WaitReached(t, mc, "go-zero", "muster")
	stopGZ()
	itest.WaitReached(t, cc, "muster")
	// Kratos again, so that the Muster server's leaving leaves something
	// to call.
	if _, err := cli.Put(ctx, kratosKey, string(value), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "kratos", "muster")
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "kratos")
	itest.WaitReached(t, mc, "kratos")
}
