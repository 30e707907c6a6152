package gozero_test

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/interop/internal/itest"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

// TestMixedFleet: one service, order.rpc, mid-migration, with one instance
// registered by go-zero's Publisher (key order.rpc/<lease>), one by etcd's
// endpoints.Manager (services/order.rpc/etcd-1) and one by a Muster
// Registrar (services/order.rpc/<addr>), all at once. A Muster client with
// ?format=native,go-zero resolves them as one set and RPCs reach all three;
// the removal of each, by its own system's means, is seen.
func TestMixedFleet(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)
	gz, en, mu := itest.Backend(t, "go-zero"), itest.Backend(t, "etcd-naming"), itest.Backend(t, "muster")

	stopGZ := publish(t, m, cli, "order.rpc", gz.Addr)

	em, err := endpoints.NewManager(cli, "services/order.rpc")
	if err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := em.AddEndpoint(ctx, "services/order.rpc/etcd-1", endpoints.Endpoint{Addr: en.Addr}, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	reg, err := registry.New(cli, registry.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	if err := reg.Register(ctx, endpoint.Endpoint{Service: "order.rpc", Addr: mu.Addr}); err != nil {
		t.Fatal(err)
	}

	cc := itest.Dial(t, "muster:///order.rpc?format=native,go-zero", grpc.WithResolvers(resolver.NewBuilder(cli)))
	itest.WaitReached(t, cc, "go-zero", "etcd-naming", "muster")

	// The same through muster.NewClient, configured by Etcd.Formats.
	mc, err := muster.NewClient(muster.Config{
		Name:     "order.rpc",
		Balancer: "round_robin",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Formats: []string{"native", "go-zero"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	itest.WaitReached(t, mc, "go-zero", "etcd-naming", "muster")

	stopGZ()
	itest.WaitReached(t, cc, "etcd-naming", "muster")
	if err := em.DeleteEndpoint(ctx, "services/order.rpc/etcd-1"); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "muster")
	// go-zero again (another instance), so that the last removal leaves
	// something to call.
	gz2 := itest.Backend(t, "go-zero-2")
	publish(t, m, cli, "order.rpc", gz2.Addr)
	itest.WaitReached(t, cc, "go-zero-2", "muster")
	_ = reg.Close() // revokes Muster's lease
	itest.WaitReached(t, cc, "go-zero-2")
}
