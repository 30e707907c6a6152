package gomicro_test

import (
	"context"
	"encoding/json"
	"path"
	"reflect"
	"strings"
	"testing"
	"time"

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
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

// Service, Node, Endpoint and Value are go-micro's registry types
// (registry/registry.go), copied member for member, in go-micro's order
// and with its json tags, so that json.Marshal writes the bytes go-micro
// writes.
type Service struct {
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []*Endpoint       `json:"endpoints"`
	Nodes     []*Node           `json:"nodes"`
}

type Node struct {
	Metadata map[string]string `json:"metadata"`
	Id       string            `json:"id"`
	Address  string            `json:"address"`
}

type Endpoint struct {
	Request  *Value            `json:"request"`
	Response *Value            `json:"response"`
	Metadata map[string]string `json:"metadata"`
	Name     string            `json:"name"`
}

type Value struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Values []*Value `json:"values"`
}

// prefix, nodePath, servicePath, encode and decode are etcd.go's.
const prefix = "/micro/registry/"

func nodePath(s, id string) string {
	service := strings.Replace(s, "/", "-", -1)
	node := strings.Replace(id, "/", "-", -1)
	return path.Join(prefix, service, node)
}

func servicePath(s string) string { return path.Join(prefix, strings.Replace(s, "/", "-", -1)) }

func encode(s *Service) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func decode(ds []byte) *Service {
	var s *Service
	_ = json.Unmarshal(ds, &s)
	return s
}

// microRegister is etcd.go's registerNode for each node of s, with a TTL
// (go-micro's server registers with RegisterTTL, 90s by default): one key
// per node, holding s with that node only, under a lease.
func microRegister(t *testing.T, cli *clientv3.Client, s *Service) {
	t.Helper()
	ctx := itest.Context(t, 5*time.Second)
	for _, node := range s.Nodes {
		service := &Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*Node{node}}
		lgr, err := cli.Grant(ctx, 90)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, nodePath(service.Name, node.Id), encode(service), clientv3.WithLease(lgr.ID)); err != nil {
			t.Fatal(err)
		}
	}
}

// microDeregister is etcd.go's Deregister.
func microDeregister(t *testing.T, cli *clientv3.Client, s *Service) {
	t.Helper()
	for _, node := range s.Nodes {
		if _, err := cli.Delete(itest.Context(t, 5*time.Second), nodePath(s.Name, node.Id)); err != nil {
			t.Fatal(err)
		}
	}
}

// microGetService is etcd.go's GetService (an empty list is its
// registry.ErrNotFound).
func microGetService(ctx context.Context, cli *clientv3.Client, name string) ([]*Service, error) {
	rsp, err := cli.Get(ctx, servicePath(name)+"/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil {
		return nil, err
	}
	serviceMap := map[string]*Service{}
	for _, n := range rsp.Kvs {
		if sn := decode(n.Value); sn != nil {
			s, ok := serviceMap[sn.Version]
			if !ok {
				s = &Service{Name: sn.Name, Version: sn.Version, Metadata: sn.Metadata, Endpoints: sn.Endpoints}
				serviceMap[s.Version] = s
			}
			s.Nodes = append(s.Nodes, sn.Nodes...)
		}
	}
	services := make([]*Service, 0, len(serviceMap))
	for _, service := range serviceMap {
		services = append(services, service)
	}
	return services, nil
}

// greeterEndpoints is what go-micro registers for a handler Greeter.Hello.
var greeterEndpoints = []*Endpoint{{
	Name:     "Greeter.Hello",
	Request:  &Value{Name: "Request", Type: "Request", Values: []*Value{{Name: "name", Type: "string"}}},
	Response: &Value{Name: "Response", Type: "Response", Values: []*Value{{Name: "msg", Type: "string"}}},
	Metadata: map[string]string{"stream": "false"},
}}

func musterClient(t *testing.T, cli *clientv3.Client, target string) *grpc.ClientConn {
	return itest.Dial(t, target, grpc.WithResolvers(resolver.NewBuilder(cli)))
}

// TestGoMicroServersToMuster: nodes registered as go-micro's etcd registry
// registers them (the node metadata go-micro's gRPC server sets, endpoint
// descriptions, a node id with a '/', a weight and zone in the node's
// metadata) are resolved by Muster's resolver with ?format=go-micro (and
// its alias gomicro), and RPCs reach them; the nodes of greeter-v2 are not
// among greeter's; weight, zone, version and id read as Muster's; a
// deregistered node leaves.
func TestGoMicroServersToMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	g := itest.Backends(t, "g", 3)
	s0 := &Service{Name: "greeter", Version: "latest", Endpoints: greeterEndpoints, Nodes: []*Node{{
		Id: "greeter-6a1c7f0e", Address: g[0].Addr,
		Metadata: map[string]string{"broker": "http", "protocol": "grpc", "registry": "etcd", "server": "grpc", "transport": "grpc"},
	}}}
	s1 := &Service{Name: "greeter", Version: "latest", Endpoints: greeterEndpoints, Nodes: []*Node{{
		Id: "pod/1", Address: g[1].Addr, Metadata: map[string]string{"weight": "7", "zone": "eu-1a"},
	}}}
	v2 := &Service{Name: "greeter-v2", Version: "2", Nodes: []*Node{{Id: "v2-1", Address: g[2].Addr}}}
	for _, s := range []*Service{s0, s1, v2} {
		microRegister(t, cli, s)
	}
	if raw := itest.Keys(t, cli, "/micro/registry/greeter/"); len(raw) != 2 || raw["/micro/registry/greeter/pod-1"] == "" {
		t.Fatalf("go-micro's keys: %v", raw)
	}
	// go-micro reads them so itself.
	if got, err := microGetService(itest.Context(t, 5*time.Second), cli, "greeter"); err != nil || len(got) != 1 || len(got[0].Nodes) != 2 {
		t.Fatalf("go-micro's GetService = %+v, %v", got, err)
	}

	// A client moved to Muster, reading go-micro's registrations.
	cc := musterClient(t, cli, "muster:///greeter?format=go-micro")
	itest.WaitReached(t, cc, "g0", "g1")
	itest.WaitReached(t, musterClient(t, cli, "muster:///greeter?format=gomicro"), "g0", "g1")

	sub, err := discovery.Subscribe(cli, "greeter", discovery.WithFormat("go-micro"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-sub.Updates()
	byAddr := map[string]endpoint.Endpoint{}
	for _, e := range st.Snapshot.Endpoints {
		byAddr[e.Addr] = e
	}
	if e := byAddr[g[1].Addr]; e.ID != "pod/1" || e.Weight != 7 || e.Zone != "eu-1a" || e.Version != "latest" {
		t.Errorf("g1 reads as %+v", e)
	}
	if e := byAddr[g[0].Addr]; e.ID != "greeter-6a1c7f0e" || e.Tags["protocol"] != "grpc" || e.EffectiveWeight() != endpoint.DefaultWeight {
		t.Errorf("g0 reads as %+v", e)
	}
	if st.Snapshot.Skipped != 0 || len(st.Snapshot.Endpoints) != 2 {
		t.Errorf("snapshot %+v", st.Snapshot)
	}

	microDeregister(t, cli, s0)
	itest.WaitReached(t, cc, "g1")
}

// TestMusterToGoMicro: a Muster server with Etcd.Also "go-micro:greeter",
// and a Registrar with registry.ParseAlso("gomicro:greeter"), publish
// values that go-micro's GetService reads into a Service with the version
// and one node per instance (id, address, and the zone, weight and tags as
// node metadata), which go-micro's encode writes back to the very bytes
// Muster wrote; calls to the nodes' addresses reach the servers; a server
// that shuts down leaves go-micro's list.
func TestMusterToGoMicro(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)

	srv, err := muster.NewServer(muster.Config{
		Name:     "greeter.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Also: []string{"go-micro:greeter"}},
		Metadata: muster.Metadata{Zone: "eu-1a", Version: "1.0.0", Tags: map[string]string{"env": "prod"}},
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

	b := itest.Backend(t, "b0")
	also, err := registry.ParseAlso("gomicro:greeter")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(cli, registry.WithTTL(2*time.Second), registry.WithAlso(also))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	if err := reg.Register(ctx, endpoint.Endpoint{Service: "greeter.rpc", ID: "pod/7", Addr: b.Addr, Weight: 3}); err != nil {
		t.Fatal(err)
	}

	raw := itest.Keys(t, cli, "/micro/registry/greeter/")
	if len(raw) != 2 || raw["/micro/registry/greeter/"+addr] == "" || raw["/micro/registry/greeter/pod-7"] == "" {
		t.Fatalf("go-micro keys: %v", raw)
	}
	for k, v := range raw {
		if again := encode(decode([]byte(v))); again != v {
			t.Errorf("%s: go-micro's Service marshals back as\n%s\nMuster wrote\n%s", k, again, v)
		}
	}
	got, err := microGetService(ctx, cli, "greeter")
	if err != nil || len(got) != 2 {
		t.Fatalf("go-micro reads %+v, %v; want versions 1.0.0 and none", got, err)
	}
	nodes := map[string]*Node{}
	for _, s := range got {
		if s.Name != "greeter" || s.Metadata != nil || s.Endpoints != nil || len(s.Nodes) != 1 {
			t.Fatalf("go-micro reads %+v", s)
		}
		nodes[s.Version] = s.Nodes[0]
	}
	if want := (&Node{Id: addr, Address: addr, Metadata: map[string]string{"zone": "eu-1a", "env": "prod"}}); !reflect.DeepEqual(nodes["1.0.0"], want) {
		t.Errorf("the Muster server's node: %+v, want %+v", nodes["1.0.0"], want)
	}
	if want := (&Node{Id: "pod/7", Address: b.Addr, Metadata: map[string]string{"weight": "3"}}); !reflect.DeepEqual(nodes[""], want) {
		t.Errorf("the Registrar's node: %+v, want %+v", nodes[""], want)
	}
	// go-micro's gRPC client dials a node's address.
	for _, n := range nodes {
		itest.WaitReached(t, itest.Dial(t, "passthrough:///"+n.Address), map[string]string{addr: "m0", b.Addr: "b0"}[n.Address])
	}

	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_ = reg.Close()
	if got, err := microGetService(ctx, cli, "greeter"); err != nil || len(got) != 0 {
		t.Fatalf("after shutdown go-micro reads %+v, %v", got, err)
	}
}

// TestGoMicroBadValues: beside a good node, a value with empty nodes,
// broken JSON and a node without an address are skipped and counted
// (Snapshot.Skipped, muster_discovery_malformed_values_total), and the good
// node stays reachable.
func TestGoMicroBadValues(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := itest.Context(t, 30*time.Second)
	g := itest.Backend(t, "g0")
	microRegister(t, cli, &Service{Name: "greeter", Version: "latest", Nodes: []*Node{{Id: "g0", Address: g.Addr}}})
	for key, value := range map[string]string{
		nodePath("greeter", "empty"):   encode(&Service{Name: "greeter", Version: "latest", Nodes: []*Node{}}),
		nodePath("greeter", "broken"):  `{"name":"greeter","nodes":[{"id":"broken","address":"127.0.0.1:1"}]`,
		nodePath("greeter", "no-addr"): encode(&Service{Name: "greeter", Nodes: []*Node{{Id: "no-addr"}}}),
	} {
		if _, err := cli.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	sub, err := discovery.Subscribe(cli, "greeter", discovery.WithFormat("go-micro"), discovery.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-sub.Updates()
	if st.Snapshot.Skipped != 3 || len(st.Snapshot.Endpoints) != 1 || st.Snapshot.Endpoints[0].Addr != g.Addr {
		t.Fatalf("Muster reads %+v, want g0 and 3 skipped", st.Snapshot)
	}
	if n := testx.Metric(t, reg, "muster_discovery_malformed_values_total", "prefix=/micro/registry/greeter/"); n < 3 {
		t.Fatalf("muster_discovery_malformed_values_total = %v, want at least 3", n)
	}
	itest.WaitReached(t, musterClient(t, cli, "muster:///greeter?format=go-micro"), "g0")
}
