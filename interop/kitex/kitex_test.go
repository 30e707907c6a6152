package kitex_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/interop/internal/itest"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// instanceInfo is registry-etcd's value, as declared in
// kitex-contrib/registry-etcd (common.go; since moved to
// cloudwego-contrib/cwgo-pkg registry/etcd/internal/common.go as
// InstanceInfo).
type instanceInfo struct {
	Network string            `json:"network"`
	Address string            `json:"address"`
	Weight  int               `json:"weight"`
	Tags    map[string]string `json:"tags"`
}

// kitexPrefix is registry-etcd's default key prefix.
const kitexPrefix = "kitex/registry-etcd"

// defaultTTL is registry-etcd's lease TTL in seconds (without
// KITEX_ETCD_REGISTRY_LEASE_TTL).
const defaultTTL = 60

// kitexRegister does what registry-etcd's Register does for a server
// listening on addr: grant a lease, put serviceKey = instanceInfo JSON
// under it (the keepalive it starts is not needed within a test).
func kitexRegister(t *testing.T, cli *clientv3.Client, service string, addr net.Addr, weight int, tags map[string]string) {
	t.Helper()
	ctx := itest.Context(t, 5*time.Second)
	lease, err := cli.Grant(ctx, defaultTTL)
	if err != nil {
		t.Fatal(err)
	}
	val, err := json.Marshal(&instanceInfo{Network: addr.Network(), Address: addr.String(), Weight: weight, Tags: tags})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, kitexPrefix+"/"+service+"/"+addr.String(), string(val), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
}

// kitexDeregister does what registry-etcd's Deregister does: delete the key.
func kitexDeregister(t *testing.T, cli *clientv3.Client, service string, addr net.Addr) {
	t.Helper()
	if _, err := cli.Delete(itest.Context(t, 5*time.Second), kitexPrefix+"/"+service+"/"+addr.String()); err != nil {
		t.Fatal(err)
	}
}

// instance is what Kitex's resolver makes of a value:
// discovery.NewInstance(info.Network, info.Address, weight, info.Tags).
type instance struct {
	Network, Address string
	Weight           int
	Tags             map[string]string
}

// kitexResolve does what registry-etcd's resolver does in Resolve.
func kitexResolve(ctx context.Context, cli *clientv3.Client, service string) ([]instance, error) {
	resp, err := cli.Get(ctx, kitexPrefix+"/"+service, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	var eps []instance
	for _, kv := range resp.Kvs {
		var info instanceInfo
		if err := json.Unmarshal(kv.Value, &info); err != nil {
			continue // Kitex logs and ignores the key
		}
		weight := info.Weight
		if weight <= 0 {
			weight = 10
		}
		eps = append(eps, instance{info.Network, info.Address, weight, info.Tags})
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("no instance remains for %v", service)
	}
	return eps, nil
}

func tcpAddr(t *testing.T, s *echo.Server) net.Addr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestKitexServersToMuster: instances registered as registry-etcd
// registers them (weights 10, 0 and negative, tags null, empty and set)
// are resolved by Muster's resolver with ?format=kitex and RPCs reach
// them; their weights read as Kitex reads them (<= 0 is 10) and the tag
// "zone" is Muster's zone; a deregistered one leaves.
func TestKitexServersToMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	b := itest.Backends(t, "b", 4)
	kitexRegister(t, cli, "echo", tcpAddr(t, b[0]), 10, nil)
	kitexRegister(t, cli, "echo", tcpAddr(t, b[1]), 0, nil)
	kitexRegister(t, cli, "echo", tcpAddr(t, b[2]), -3, map[string]string{})
	kitexRegister(t, cli, "echo", tcpAddr(t, b[3]), 7, map[string]string{"zone": "eu-1a", "env": "prod"})

	raw := itest.Keys(t, cli, kitexPrefix+"/echo/")
	if want := `{"network":"tcp","address":"` + b[0].Addr + `","weight":10,"tags":null}`; raw[kitexPrefix+"/echo/"+b[0].Addr] != want {
		t.Fatalf("registry-etcd's value: %s, want %s", raw[kitexPrefix+"/echo/"+b[0].Addr], want)
	}

	// A client moved to Muster, reading Kitex's registrations.
	cc := itest.Dial(t, "muster:///echo?format=kitex", grpc.WithResolvers(resolver.NewBuilder(cli)))
	itest.WaitReached(t, cc, "b0", "b1", "b2", "b3")

	sub, err := discovery.Subscribe(cli, "echo", discovery.WithFormat("kitex"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-sub.Updates()
	got := map[string]endpoint.Endpoint{}
	for _, e := range st.Snapshot.Endpoints {
		got[e.Addr] = e
	}
	for i, want := range []int{10, 10, 10, 7} {
		if e := got[b[i].Addr]; e.EffectiveWeight() != want {
			t.Errorf("b%d reads with weight %d, want %d (%+v)", i, e.EffectiveWeight(), want, e)
		}
	}
	if e := got[b[3].Addr]; e.Zone != "eu-1a" || !maps.Equal(e.Tags, map[string]string{"env": "prod"}) {
		t.Errorf("b3 reads as %+v, want zone eu-1a and tag env=prod", e)
	}

	kitexDeregister(t, cli, "echo", tcpAddr(t, b[1]))
	itest.WaitReached(t, cc, "b0", "b2", "b3")
}

// TestMusterToKitexResolver: a Muster server with Etcd.Also "kitex:order"
// and a Registrar with WithAlso kitex publish values that Kitex's resolver
// decodes into instances with network tcp, the server's address, its weight
// (the default 10 when unset) and its zone and version as tags; RPCs to
// those addresses reach the servers; a server that shuts down leaves.
func TestMusterToKitexResolver(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	b := itest.Backends(t, "b", 1)

	// A server moved to Muster, still visible to Kitex clients of "order".
	srv, err := muster.NewServer(muster.Config{
		Name:     "order.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Also: []string{"kitex:order"}},
		Metadata: muster.Metadata{Weight: 5, Zone: "eu-1a", Version: "1.4.2", Tags: map[string]string{"env": "prod"}},
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

	// And one endpoint through the registry, weight unset.
	reg, err := registry.New(cli, registry.WithTTL(2*time.Second), registry.WithAlso(registry.Also{Format: "kitex", Service: "order"}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	if err := reg.Register(itest.Context(t, 5*time.Second), endpoint.Endpoint{Service: "order.rpc", Addr: b[0].Addr}); err != nil {
		t.Fatal(err)
	}

	// The JSON has registry-etcd's members and no others.
	srvAddr := srv.Endpoint().Addr
	for k, v := range itest.Keys(t, cli, kitexPrefix+"/order/") {
		var members map[string]json.RawMessage
		if err := json.Unmarshal([]byte(v), &members); err != nil {
			t.Fatalf("%s = %s: %v", k, v, err)
		}
		if keys := slices.Sorted(maps.Keys(members)); !slices.Equal(keys, []string{"address", "network", "tags", "weight"}) {
			t.Errorf("%s = %s: members %v, want registry-etcd's address, network, tags, weight", k, v, keys)
		}
	}

	insts, err := kitexResolve(itest.Context(t, 5*time.Second), cli, "order")
	if err != nil {
		t.Fatal(err)
	}
	byAddr := map[string]instance{}
	for _, in := range insts {
		byAddr[in.Address] = in
	}
	want := map[string]instance{
		srvAddr:   {"tcp", srvAddr, 5, map[string]string{"env": "prod", "zone": "eu-1a", "version": "1.4.2"}},
		b[0].Addr: {"tcp", b[0].Addr, 10, nil},
	}
	if len(byAddr) != len(want) {
		t.Fatalf("Kitex resolves %+v, want %+v", insts, want)
	}
	for addr, w := range want {
		g := byAddr[addr]
		if g.Network != w.Network || g.Weight != w.Weight || !maps.Equal(g.Tags, w.Tags) {
			t.Errorf("Kitex resolves %+v, want %+v", g, w)
		}
		// Kitex dials network and address: they reach the server.
		if _, err := net.ResolveTCPAddr(g.Network, g.Address); err != nil {
			t.Errorf("Kitex cannot use %s %s: %v", g.Network, g.Address, err)
		}
		cc := itest.Dial(t, "passthrough:///"+g.Address)
		itest.WaitReached(t, cc, map[string]string{srvAddr: "m0", b[0].Addr: "b0"}[addr])
	}

	if err := srv.Shutdown(itest.Context(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_ = reg.Close()
	if insts, err := kitexResolve(itest.Context(t, 5*time.Second), cli, "order"); err == nil {
		t.Fatalf("after shutdown Kitex still resolves %+v", insts)
	}
}
