package kratos_test

import (
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/registry"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster"
	mk "github.com/mustersd/muster/contrib/kratos"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
)

// TestRoundTrip: an instance registered through a Registry with
// WithKratosKeys (an HTTP endpoint beside the gRPC one, a version, weight,
// zone and other metadata) comes back from GetService and from a Watcher,
// of another Registry, equal to what was registered, member for member;
// the Kratos-format key is where Kratos's etcd registry would write it, and
// its value, decoded with Kratos's own type, is the instance; Muster's own
// key is read by Muster's discovery with the instance's address, weight,
// zone and version. A Muster server's registration reads as an instance
// with its grpc:// endpoint.
func TestRoundTrip(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := ctxT(t, 30*time.Second)
	si := &registry.ServiceInstance{
		ID: "id-1", Name: "order", Version: "v1.2.0",
		Metadata:  map[string]string{"weight": "5", "zone": "eu-1a", "env": "prod"},
		Endpoints: []string{"http://127.0.0.1:8000", "grpc://127.0.0.1:9000"},
	}
	want := cloneInstance(si)
	server := newRegistry(t, cli, mk.WithKratosKeys())
	if err := server.Register(ctx, si); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(si, want) {
		t.Fatalf("Register changed the instance: %+v", si)
	}

	client := newRegistry(t, cli)
	got, err := client.GetService(ctx, "order")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("GetService = %s, want [%s]", js(got), js(want))
	}
	w, err := client.Watch(ctx, "order")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	got, err = w.Next()
	if err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("Next = %s, %v; want [%s]", js(got), err, js(want))
	}

	// The Kratos key and value, as Kratos's etcd registry reads them
	// (service.go: json.Unmarshal into *registry.ServiceInstance).
	kv := keys(t, cli, "/microservices/")
	if len(kv) != 1 {
		t.Fatalf("Kratos keys: %v", kv)
	}
	var decoded *registry.ServiceInstance
	if err := json.Unmarshal([]byte(kv["/microservices/order/id-1"]), &decoded); err != nil || !reflect.DeepEqual(decoded, want) {
		t.Fatalf("Kratos reads %s as %+v, %v; want %+v", kv["/microservices/order/id-1"], decoded, err, want)
	}
	// A client that reads Kratos's format finds it the same.
	kr := newRegistry(t, cli, mk.WithFormats("kratos"))
	if got, err := kr.GetService(ctx, "order"); err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Fatalf("GetService, Kratos format = %s, %v", js(got), err)
	}

	// Muster's own key, for Muster's clients.
	sub, err := discovery.Subscribe(cli, "order")
	if err != nil {
		t.Fatal(err)
	}
	st := <-sub.Updates()
	sub.Close()
	if eps := st.Snapshot.Endpoints; len(eps) != 1 || eps[0].Addr != "127.0.0.1:9000" || eps[0].ID != "id-1" ||
		eps[0].Weight != 5 || eps[0].Zone != "eu-1a" || eps[0].Version != "v1.2.0" || eps[0].Tags["env"] != "prod" {
		t.Fatalf("Muster reads %+v", eps)
	}

	// A Muster server of the same service is an instance with its grpc://
	// endpoint.
	srv, err := muster.NewServer(muster.Config{
		Name: "order", ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints()},
		Metadata: muster.Metadata{Version: "v2", Zone: "eu-1b"},
		Shutdown: muster.ShutdownConfig{DrainDelay: time.Millisecond},
	}, muster.WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	echo.New("m0").Register(srv)
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(ctx)
	addr := srv.Endpoint().Addr
	got, err = w.Next()
	mustr := &registry.ServiceInstance{ID: addr, Name: "order", Version: "v2", Metadata: map[string]string{"zone": "eu-1b"}, Endpoints: []string{"grpc://" + addr}}
	if err != nil || len(got) != 2 || !reflect.DeepEqual(byID(got)["id-1"], want) || !reflect.DeepEqual(byID(got)[addr], mustr) {
		t.Fatalf("Next = %s, %v; want %s and %s", js(got), err, js(want), js(mustr))
	}

	// Deregistered, it leaves both formats.
	if err := server.Deregister(ctx, si); err != nil {
		t.Fatal(err)
	}
	waitKeys(t, cli, "/microservices/")
	got, err = w.Next()
	if err != nil || len(got) != 1 || got[0].ID != addr {
		t.Fatalf("after Deregister Next = %s, %v", js(got), err)
	}
}

// TestRegisterRejects: instances Muster cannot register fail Register with
// the reason, and register nothing.
func TestRegisterRejects(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	r := newRegistry(t, cli)
	ctx := ctxT(t, 10*time.Second)
	for name, si := range map[string]*registry.ServiceInstance{
		"no gRPC endpoint":    {ID: "1", Name: "order", Endpoints: []string{"http://127.0.0.1:8000"}},
		"a name with a slash": {ID: "1", Name: "a/b", Endpoints: []string{"grpc://127.0.0.1:9000"}},
		"no ID":               {Name: "order", Endpoints: []string{"grpc://127.0.0.1:9000"}},
		"nil":                 nil,
	} {
		if err := r.Register(ctx, si); err == nil {
			t.Errorf("%s: Register accepted %+v", name, si)
		}
	}
	if kv := keys(t, cli, ""); len(kv) != 0 {
		t.Fatalf("keys written: %v", kv)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(ctx, &registry.ServiceInstance{ID: "1", Name: "order", Endpoints: []string{"grpc://127.0.0.1:9000"}}); !errors.Is(err, mk.ErrClosed) {
		t.Fatalf("Register after Close: %v", err)
	}
	if _, err := mk.New(cli, mk.WithFormats("consul")); err == nil {
		t.Fatal("New accepted the format consul")
	}
}

// TestMergedFormats: a client moved to Muster ahead of its servers reads
// Muster's and Kratos's formats at once (WithFormats("native", "kratos")):
// an instance that Kratos's own etcd registry wrote, and one that a Muster
// Registry wrote, are one list; an address in both counts once.
func TestMergedFormats(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := ctxT(t, 20*time.Second)
	old := &registry.ServiceInstance{ID: "old-1", Name: "order", Version: "v1", Endpoints: []string{"grpc://127.0.0.1:9001"}}
	kratosPut(t, cli, "/microservices", old)
	moved := &registry.ServiceInstance{ID: "new-1", Name: "order", Version: "v2", Endpoints: []string{"grpc://127.0.0.1:9002"}}
	server := newRegistry(t, cli, mk.WithKratosKeys()) // in both formats: counts once
	if err := server.Register(ctx, moved); err != nil {
		t.Fatal(err)
	}
	client := newRegistry(t, cli, mk.WithFormats("native", "kratos"))
	got, err := client.GetService(ctx, "order")
	if err != nil || len(got) != 2 || !reflect.DeepEqual(byID(got)["old-1"], old) || !reflect.DeepEqual(byID(got)["new-1"], moved) {
		t.Fatalf("GetService = %s, %v", js(got), err)
	}
}

// kratosPut writes si as Kratos's etcd registry does (registry.go
// registerKey and registerWithKV): key <namespace>/<name>/<id>, value
// json.Marshal(si), under a lease.
func kratosPut(t *testing.T, cli *clientv3.Client, namespace string, si *registry.ServiceInstance) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	lease, err := cli.Grant(ctx, 15)
	if err != nil {
		t.Fatal(err)
	}
	v, err := json.Marshal(si)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, namespace+"/"+si.Name+"/"+si.ID, string(v), clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
}

func byID(list []*registry.ServiceInstance) map[string]*registry.ServiceInstance {
	m := map[string]*registry.ServiceInstance{}
	for _, si := range list {
		m[si.ID] = si
	}
	return m
}

func cloneInstance(si *registry.ServiceInstance) *registry.ServiceInstance {
	c := *si
	c.Metadata = maps.Clone(si.Metadata)
	c.Endpoints = append([]string(nil), si.Endpoints...)
	return &c
}

func js(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
