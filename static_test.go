package muster

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/testx"
)

// TestStaticEndpointsWithoutEtcd: servers with no etcd serve unregistered,
// and a client configured with their addresses reaches every one of them.
func TestStaticEndpointsWithoutEtcd(t *testing.T) {
	var eps []string
	var names []string
	for i := range 3 {
		srv := startServer(t, Config{Name: "static.rpc", ListenOn: "127.0.0.1:0"}, fmt.Sprintf("s%d", i))
		eps = append(eps, fmt.Sprintf("%s;weight=%d;zone=z%d", srv.Addr(), i+1, i))
		names = append(names, srv.echo.Name())
	}
	cc, err := NewClient(Config{Name: "static.rpc", Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	seen := map[string]int{}
	for range 30 {
		name, err := echo.Call(testx.Context(t, 5*time.Second), cc)
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	for _, n := range names {
		if seen[n] == 0 {
			t.Errorf("backend %s got no RPC; spread %v", n, seen)
		}
	}
}

// TestStaticWeights: weights given in Endpoints apply: with
// muster_weighted, backends of weights 1, 2 and 7 get 10, 20 and 70% of the
// RPCs.
func TestStaticWeights(t *testing.T) {
	weights := []int{1, 2, 7}
	var eps []string
	for i, w := range weights {
		srv := startServer(t, Config{Name: "static.rpc", ListenOn: "127.0.0.1:0"}, fmt.Sprintf("w%d", i))
		eps = append(eps, fmt.Sprintf("%s;weight=%d", srv.Addr(), w))
	}
	cc, err := NewClient(Config{Name: "static.rpc", Endpoints: eps, Balancer: "muster_weighted"})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	// Until every backend is READY the policy picks among fewer.
	testx.Eventually(t, 10*time.Second, "not every backend answered", func() bool {
		seen := map[string]bool{}
		for range 20 {
			name, err := echo.Call(testx.Context(t, 5*time.Second), cc)
			if err != nil {
				t.Fatal(err)
			}
			seen[name] = true
		}
		return len(seen) == 3
	})
	got := map[string]int{}
	const n = 2000
	for range n {
		name, err := echo.Call(testx.Context(t, 5*time.Second), cc)
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	for i, w := range weights {
		share := float64(got[fmt.Sprintf("w%d", i)]) / n
		if want := float64(w) / 10; share < want-0.02 || share > want+0.02 {
			t.Errorf("w%d (weight %d) got %.3f of the RPCs, want %.2f±0.02 (%v)", i, w, share, want, got)
		}
	}
}

// TestDNSTarget: a client configured with a dns:/// target reaches the
// backend behind it.
func TestDNSTarget(t *testing.T) {
	srv := startServer(t, Config{Name: "dns.rpc", ListenOn: "127.0.0.1:0"}, "dns-backend")
	_, port, _ := net.SplitHostPort(srv.Addr().String())
	cc, err := NewClient(Config{Name: "dns.rpc", Target: "dns:///localhost:" + port})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	name, err := echo.Call(testx.Context(t, 10*time.Second), cc)
	if err != nil || name != "dns-backend" {
		t.Fatalf("RPC through dns:///localhost:%s = %q, %v", port, name, err)
	}
}

// TestOneSource: two sources of instances fail Validate with an error that
// names both; a go-zero style client file loads.
func TestOneSource(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Name: "a.rpc", Etcd: EtcdConfig{Hosts: []string{"127.0.0.1:2379"}}, Endpoints: []string{"127.0.0.1:1"}}, "Etcd.Hosts, Endpoints: "},
		{Config{Name: "a.rpc", Endpoints: []string{"127.0.0.1:1"}, Target: "dns:///x:1"}, "Endpoints, Target: "},
		{Config{Name: "a.rpc", Etcd: EtcdConfig{Hosts: []string{"127.0.0.1:2379"}}, Target: "dns:///x:1"}, "Etcd.Hosts, Target: "},
	} {
		err := tc.c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error starting %q", tc.c, err, tc.want)
		}
		if _, err := NewClient(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewClient(%+v) = %v, want an error naming %q", tc.c, err, tc.want)
		}
	}
	for _, tc := range []struct {
		yaml string
		want func(Config) bool
	}{
		{"Etcd:\n  Hosts:\n    - 127.0.0.1:2379\n  Key: order.rpc\n", func(c Config) bool { return c.Name == "order.rpc" && len(c.Etcd.Hosts) == 1 }},
		{"Name: order.rpc\nEndpoints:\n  - 127.0.0.1:8080\n  - 127.0.0.1:8081;weight=5;zone=a\n", func(c Config) bool { return len(c.Endpoints) == 2 }},
		{"Name: order.rpc\nTarget: dns:///order-rpc-svc.default.svc.cluster.local:8080\n", func(c Config) bool { return strings.HasPrefix(c.Target, "dns:///") }},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err != nil || !tc.want(c) {
			t.Errorf("ParseConfig(%q) = %+v, %v", tc.yaml, c, err)
		}
	}
}

func TestStaticEndpointSyntax(t *testing.T) {
	e, err := parseStaticEndpoint("a.rpc", "10.0.0.7:8080; weight=5;zone=eu-1a;version=1.2;canary=true")
	if err != nil {
		t.Fatal(err)
	}
	if e.Addr != "10.0.0.7:8080" || e.ID != e.Addr || e.Weight != 5 || e.Zone != "eu-1a" || e.Version != "1.2" || e.Tags["canary"] != "true" {
		t.Fatalf("parsed %+v", e)
	}
	for _, bad := range []string{"10.0.0.7", "10.0.0.7:8080;weight=0", "10.0.0.7:8080;weight=x", "10.0.0.7:8080;zone", "10.0.0.7:8080;=x", ":8080"} {
		c := Config{Name: "a.rpc", Endpoints: []string{"127.0.0.1:1", bad}}
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "Endpoints[1]: ") {
			t.Errorf("Endpoints entry %q: Validate = %v, want an error naming Endpoints[1]", bad, err)
		}
	}
}
