package kratos_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
	"github.com/mustersd/muster/interop/internal/itest"
	musterregistry "github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

// kratosEtcd is Kratos's etcd registry (contrib/registry/etcd v2.9.2,
// registry.go, service.go and watcher.go), which cannot be fetched here,
// rewritten statement for statement where these tests use it: Register
// without its heartbeat goroutine (a test ends well within the lease's
// 15s), Deregister, GetService and Watch.
type kratosEtcd struct {
	cli       *clientv3.Client
	namespace string // etcd.Namespace; Kratos's default is "/microservices"
}

var _ registry.Discovery = (*kratosEtcd)(nil)

func (r *kratosEtcd) registerKey(si *registry.ServiceInstance) string {
	return fmt.Sprintf("%s/%s/%s", r.namespace, si.Name, si.ID)
}

func (r *kratosEtcd) serviceKey(name string) string { return fmt.Sprintf("%s/%s", r.namespace, name) }

// Register is registerWithKV: a lease of the default TTL (15s), and the
// marshalled instance under it.
func (r *kratosEtcd) Register(ctx context.Context, si *registry.ServiceInstance) error {
	value, err := json.Marshal(si)
	if err != nil {
		return err
	}
	grant, err := r.cli.Grant(ctx, 15)
	if err != nil {
		return err
	}
	_, err = r.cli.Put(ctx, r.registerKey(si), string(value), clientv3.WithLease(grant.ID))
	return err
}

func (r *kratosEtcd) Deregister(ctx context.Context, si *registry.ServiceInstance) error {
	_, err := r.cli.Delete(ctx, r.registerKey(si))
	return err
}

// GetService lists the prefix without a trailing '/' and drops the
// instances of other names; one value that does not unmarshal fails the
// whole list.
func (r *kratosEtcd) GetService(ctx context.Context, name string) ([]*registry.ServiceInstance, error) {
	resp, err := r.cli.Get(ctx, r.serviceKey(name), clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	items := make([]*registry.ServiceInstance, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var si *registry.ServiceInstance
		if err := json.Unmarshal(kv.Value, &si); err != nil {
			return nil, err
		}
		if si.Name != name {
			continue
		}
		items = append(items, si)
	}
	return items, nil
}

func (r *kratosEtcd) Watch(ctx context.Context, name string) (registry.Watcher, error) {
	w := &kratosWatcher{r: r, name: name, watcher: clientv3.NewWatcher(r.cli), first: true}
	w.ctx, w.cancel = context.WithCancel(ctx)
	w.watchChan = w.watcher.Watch(w.ctx, r.serviceKey(name), clientv3.WithPrefix(), clientv3.WithRev(0), clientv3.WithKeysOnly())
	if err := w.watcher.RequestProgress(context.Background()); err != nil {
		return nil, err
	}
	return w, nil
}

// kratosWatcher is watcher.go's: the first Next lists, every later one
// waits for an event and lists again.
type kratosWatcher struct {
	r         *kratosEtcd
	name      string
	ctx       context.Context
	cancel    context.CancelFunc
	watchChan clientv3.WatchChan
	watcher   clientv3.Watcher
	first     bool
}

func (w *kratosWatcher) Next() ([]*registry.ServiceInstance, error) {
	if w.first {
		w.first = false
		return w.r.GetService(w.ctx, w.name)
	}
	select {
	case <-w.ctx.Done():
		return nil, w.ctx.Err()
	case <-w.watchChan:
		return w.r.GetService(w.ctx, w.name)
	}
}

func (w *kratosWatcher) Stop() error {
	w.cancel()
	return w.watcher.Close()
}

// kratosServer starts Kratos's gRPC transport server on 127.0.0.1 serving
// the echo service, which answers with name, and returns its endpoint
// ("grpc://127.0.0.1:PORT", as Kratos's app registers it). It stops when
// the test ends.
func kratosServer(t *testing.T, name string) string {
	t.Helper()
	srv := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	echo.New(name).Register(srv)
	u, err := srv.Endpoint()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(context.Background()) }()
	t.Cleanup(func() {
		_ = srv.Stop(context.Background())
		<-done
	})
	return u.String()
}

// musterClient dials target through Muster's resolver on cli.
func musterClient(t *testing.T, cli *clientv3.Client, target string) *grpc.ClientConn {
	return itest.Dial(t, target, grpc.WithResolvers(resolver.NewBuilder(cli)))
}

// kratosClient is Kratos's own gRPC client of discovery:///service on d.
func kratosClient(t *testing.T, d registry.Discovery, service string) *grpc.ClientConn {
	t.Helper()
	conn, err := kgrpc.DialInsecure(itest.Context(t, 5*time.Second), kgrpc.WithEndpoint("discovery:///"+service),
		kgrpc.WithDiscovery(d), kgrpc.WithPrintDiscoveryDebugLog(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func sortByID(list []*registry.ServiceInstance) {
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
}

// TestKratosServersToMuster: instances registered as Kratos's etcd
// registry registers them (Kratos's ServiceInstance, one with an HTTP
// endpoint beside its gRPC one and weight, zone and other metadata) are
// resolved by Muster's resolver with ?format=kratos, and RPCs reach them;
// the instance of "orderbar", which Kratos's prefix "/microservices/order"
// also lists, is not one of them, nor counted as malformed; Kratos's
// weight, zone, version and metadata read as Muster's; another namespace
// is read with &namespace=; a deregistered instance leaves.
func TestKratosServersToMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)
	kr := &kratosEtcd{cli: cli, namespace: "/microservices"}
	si0 := &registry.ServiceInstance{ID: "k0", Name: "order", Version: "v1.0.0", Endpoints: []string{kratosServer(t, "k0")}}
	si1 := &registry.ServiceInstance{ID: "k1", Name: "order", Version: "v1.1.0",
		Metadata:  map[string]string{"weight": "5", "zone": "eu-1a", "env": "prod"},
		Endpoints: []string{"http://127.0.0.1:8000", kratosServer(t, "k1")}}
	bar := &registry.ServiceInstance{ID: "b", Name: "orderbar", Endpoints: []string{kratosServer(t, "orderbar")}}
	for _, si := range []*registry.ServiceInstance{si0, si1, bar} {
		if err := kr.Register(ctx, si); err != nil {
			t.Fatal(err)
		}
	}
	// Kratos reads them so itself.
	got, err := kr.GetService(ctx, "order")
	sortByID(got)
	if err != nil || !reflect.DeepEqual(got, []*registry.ServiceInstance{si0, si1}) {
		t.Fatalf("Kratos's GetService = %+v, %v", got, err)
	}

	// A client moved to Muster, reading Kratos's registrations.
	cc := musterClient(t, cli, "muster:///order?format=kratos")
	itest.WaitReached(t, cc, "k0", "k1")

	sub, err := discovery.Subscribe(cli, "order", discovery.WithFormat("kratos"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-sub.Updates()
	if st.Snapshot.Skipped != 0 || len(st.Snapshot.Endpoints) != 2 {
		t.Fatalf("Muster reads %+v", st.Snapshot)
	}
	if e := st.Snapshot.Endpoints[1]; e.ID != "k1" || e.Weight != 5 || e.Zone != "eu-1a" || e.Version != "v1.1.0" || e.Tags["env"] != "prod" {
		t.Errorf("k1 reads as %+v", e)
	}

	// Kratos configured with etcd.Namespace("/prod").
	prod := &kratosEtcd{cli: cli, namespace: "/prod"}
	if err := prod.Register(ctx, &registry.ServiceInstance{ID: "p0", Name: "pay", Endpoints: []string{kratosServer(t, "p0")}}); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, musterClient(t, cli, "muster:///pay?format=kratos&namespace=/prod"), "p0")

	if err := kr.Deregister(ctx, si0); err != nil {
		t.Fatal(err)
	}
	itest.WaitReached(t, cc, "k1")
}

// TestMusterToKratos: a Muster server with Etcd.Also "kratos", and a
// Registrar with registry.ParseAlso("kratos:/prod/pay"), publish values that
// Kratos's etcd registry reads into Kratos's ServiceInstance with the
// server's ID, name, version, metadata (weight, zone and tags) and a
// grpc:// endpoint, and that marshal back to the very bytes Muster wrote;
// Kratos's own gRPC client, resolving through Kratos's etcd registry,
// calls the Muster server; a server that shuts down leaves Kratos's list.
func TestMusterToKratos(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)

	// A server moved to Muster, still found by Kratos clients of "order".
	srv, err := muster.NewServer(muster.Config{
		Name:     "order",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Also: []string{"kratos"}},
		Metadata: muster.Metadata{Weight: 5, Zone: "eu-1a", Version: "v1.4.2", Tags: map[string]string{"env": "prod"}},
		Shutdown: muster.ShutdownConfig{DrainDelay: 100 * time.Millisecond},
	}, muster.WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	echo.New("m0").Register(srv)
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(itest.Context(t, 5*time.Second)) })
	addr := srv.Endpoint().Addr

	kr := &kratosEtcd{cli: cli, namespace: "/microservices"}
	got, err := kr.GetService(ctx, "order")
	want := &registry.ServiceInstance{ID: addr, Name: "order", Version: "v1.4.2",
		Metadata: map[string]string{"weight": "5", "zone": "eu-1a", "env": "prod"}, Endpoints: []string{"grpc://" + addr}}
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("Kratos reads %+v, %v; want %+v", got, err, want)
	}
	raw := itest.Keys(t, cli, "/microservices/order/")["/microservices/order/"+addr]
	if again, _ := json.Marshal(got[0]); string(again) != raw {
		t.Fatalf("Kratos's ServiceInstance marshals back as\n%s\nMuster wrote\n%s", again, raw)
	}

	// Kratos's own client, on Kratos's etcd registry, calls it.
	itest.WaitReached(t, kratosClient(t, kr, "order"), "m0")

	// A Registrar in Kratos's namespace "/prod", service "pay".
	b := itest.Backend(t, "b0")
	also, err := musterregistry.ParseAlso("kratos:/prod/pay")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := musterregistry.New(cli, musterregistry.WithTTL(2*time.Second), musterregistry.WithAlso(also))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	if err := reg.Register(ctx, endpoint.Endpoint{Service: "payment.rpc", ID: "pay-1", Addr: b.Addr}); err != nil {
		t.Fatal(err)
	}
	prod := &kratosEtcd{cli: cli, namespace: "/prod"}
	got, err = prod.GetService(ctx, "pay")
	if want := (&registry.ServiceInstance{ID: "pay-1", Name: "pay", Endpoints: []string{"grpc://" + b.Addr}}); err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("Kratos reads %+v, %v; want %+v", got, err, want)
	}
	itest.WaitReached(t, kratosClient(t, prod, "pay"), "b0")

	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_ = reg.Close()
	for _, r := range []*kratosEtcd{kr, prod} {
		if got, err := r.GetService(ctx, map[string]string{"/microservices": "order", "/prod": "pay"}[r.namespace]); err != nil || len(got) != 0 {
			t.Fatalf("after shutdown Kratos reads %+v, %v", got, err)
		}
	}
}

// TestKratosBadValues: beside a good Kratos instance, values without a
// gRPC endpoint, with no endpoints, and broken JSON are skipped and counted
// (Snapshot.Skipped, muster_discovery_malformed_values_total), and the
// good instance stays reachable; Kratos's own GetService, for comparison,
// fails the whole service on the broken value.
func TestKratosBadValues(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)
	kr := &kratosEtcd{cli: cli, namespace: "/microservices"}
	if err := kr.Register(ctx, &registry.ServiceInstance{ID: "k0", Name: "order", Endpoints: []string{kratosServer(t, "k0")}}); err != nil {
		t.Fatal(err)
	}
	for _, si := range []*registry.ServiceInstance{
		{ID: "http-only", Name: "order", Endpoints: []string{"http://127.0.0.1:8000"}},
		{ID: "no-endpoints", Name: "order"},
	} {
		if err := kr.Register(ctx, si); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/microservices/order/broken", `{"id":"broken","name":"order","endpoints":["grpc://127.0.0.1:1"]`); err != nil {
		t.Fatal(err)
	}
	if _, err := kr.GetService(ctx, "order"); err == nil {
		t.Fatal("Kratos's GetService read past the broken value")
	}

	reg := prometheus.NewRegistry()
	sub, err := discovery.Subscribe(cli, "order", discovery.WithFormat("kratos"), discovery.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-sub.Updates()
	if st.Snapshot.Skipped != 3 || len(st.Snapshot.Endpoints) != 1 || st.Snapshot.Endpoints[0].ID != "k0" {
		t.Fatalf("Muster reads %+v, want k0 and 3 skipped", st.Snapshot)
	}
	if n := testx.Metric(t, reg, "muster_discovery_malformed_values_total", "prefix=/microservices/order/"); n < 3 {
		t.Fatalf("muster_discovery_malformed_values_total = %v, want at least 3", n)
	}
	itest.WaitReached(t, musterClient(t, cli, "muster:///order?format=kratos"), "k0")
}
