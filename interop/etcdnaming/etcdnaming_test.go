package etcdnaming_test

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/interop/internal/itest"
	"github.com/mustersd/muster/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// TestManagerToMuster: endpoints written by etcd's endpoints.Manager, one
// by AddEndpoint under a lease and three by one Update batch with metadata
// of several shapes, are resolved by a Muster client (muster.NewClient,
// no option: etcd naming's layout is Muster's native one) and RPCs reach
// them all; their metadata reads as Muster's; a batch that deletes two, and
// the revoked lease of the first, are followed.
func TestManagerToMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 10*time.Second)
	b := itest.Backends(t, "b", 4)

	// Servers still on etcd naming.
	em, err := endpoints.NewManager(cli, "services/order.rpc")
	if err != nil {
		t.Fatal(err)
	}
	lease, err := cli.Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := em.AddEndpoint(ctx, "services/order.rpc/"+b[0].Addr, endpoints.Endpoint{Addr: b[0].Addr}, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if err := em.Update(ctx, []*endpoints.UpdateWithOpts{
		endpoints.NewAddUpdateOpts("services/order.rpc/b1", endpoints.Endpoint{Addr: b[1].Addr, Metadata: map[string]any{"weight": 5, "zone": "eu-1a"}}),
		endpoints.NewAddUpdateOpts("services/order.rpc/b2", endpoints.Endpoint{Addr: b[2].Addr, Metadata: "v1.2"}), // any JSON: not Muster's, ignored
		endpoints.NewAddUpdateOpts("services/order.rpc/b3", endpoints.Endpoint{Addr: b[3].Addr, Metadata: map[string]any{"version": "1.4.2", "owner": "team-a"}}),
	}); err != nil {
		t.Fatal(err)
	}

	// A client moved to Muster.
	cc, err := muster.NewClient(muster.Config{
		Name:     "order.rpc",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints()},
		Balancer: "round_robin", // so that a few calls reach every backend
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	itest.WaitReached(t, cc, "b0", "b1", "b2", "b3")

	sub, err := discovery.Subscribe(cli, "order.rpc")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := map[string]endpoint.Endpoint{}
	for _, e := range (<-sub.Updates()).Snapshot.Endpoints {
		got[e.ID] = e
	}
	if e := got["b1"]; e.Addr != b[1].Addr || e.Weight != 5 || e.Zone != "eu-1a" {
		t.Errorf("b1 reads as %+v, want weight 5 in zone eu-1a", e)
	}
	if e := got["b2"]; e.Addr != b[2].Addr || e.EffectiveWeight() != endpoint.DefaultWeight {
		t.Errorf("b2 reads as %+v", e)
	}
	if e := got["b3"]; e.Addr != b[3].Addr || e.Version != "1.4.2" {
		t.Errorf("b3 reads as %+v, want version 1.4.2", e)
	}
	if e := got[b[0].Addr]; e.Addr != b[0].Addr {
		t.Errorf("b0 reads as %+v", e)
	}

	if err := em.Update(ctx, []*endpoints.UpdateWithOpts{
		endpoints.NewDeleteUpdateOpts("services/order.rpc/b1"),
		endpoints.NewDeleteUpdateOpts("services/order.rpc/b2"),
	}); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "b0", "b3")
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "b3")
}

// TestMusterToEtcdResolver: a Muster server (muster.NewServer, no option)
// and the endpoints of a Muster Registrar are resolved by etcd's own
// resolver at etcd:///services/order.rpc and RPCs reach them; etcd's
// Manager reads Muster's values, metadata included; a deregistered endpoint
// and a server that shuts down leave etcd's resolver.
func TestMusterToEtcdResolver(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	b := itest.Backends(t, "b", 2)

	// A server moved to Muster.
	srv, err := muster.NewServer(muster.Config{
		Name:     "order.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints()},
		Metadata: muster.Metadata{Weight: 5, Zone: "eu-1a"},
		Shutdown: muster.ShutdownConfig{DrainDelay: 100 * time.Millisecond},
	}, muster.WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	echo.New("m0").Register(srv)
	if err := srv.Start(itest.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(itest.Context(t, 5*time.Second)) })

	// Two more endpoints through the registry, in one transaction.
	reg, err := registry.New(cli, registry.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	e0 := endpoint.Endpoint{Service: "order.rpc", Addr: b[0].Addr, Version: "2.0.0"}
	e1 := endpoint.Endpoint{Service: "order.rpc", Addr: b[1].Addr, Tags: map[string]string{"canary": "true"}}
	if err := reg.Register(itest.Context(t, 5*time.Second), e0, e1); err != nil {
		t.Fatal(err)
	}

	// A client still on etcd naming, its resolver passed with WithResolvers
	// (a local resolver wins over a global one of the same scheme, such as
	// the "etcd" one go-zero's zrpc registers).
	rb, err := etcdresolver.NewBuilder(cli)
	if err != nil {
		t.Fatal(err)
	}
	cc := itest.Dial(t, "etcd:///services/order.rpc", grpc.WithResolvers(rb))
	itest.WaitReached(t, cc, "m0", "b0", "b1")

	em, err := endpoints.NewManager(cli, "services/order.rpc")
	if err != nil {
		t.Fatal(err)
	}
	list, err := em.List(itest.Context(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	srvAddr := srv.Endpoint().Addr
	if len(list) != 3 || list["services/order.rpc/"+srvAddr].Addr != srvAddr {
		t.Fatalf("etcd's Manager lists %v", list)
	}
	meta, ok := list["services/order.rpc/"+srvAddr].Metadata.(map[string]any)
	if !ok || meta["weight"] != float64(5) || meta["zone"] != "eu-1a" {
		t.Errorf("etcd's Manager reads the server's metadata as %#v", list["services/order.rpc/"+srvAddr].Metadata)
	}
	meta, _ = list["services/order.rpc/"+b[1].Addr].Metadata.(map[string]any)
	if tags, _ := meta["tags"].(map[string]any); tags["canary"] != "true" {
		t.Errorf("etcd's Manager reads b1's metadata as %#v", meta)
	}

	if err := reg.Deregister(itest.Context(t, 5*time.Second), e0); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "m0", "b1")
	if err := srv.Shutdown(itest.Context(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "b1")
}
