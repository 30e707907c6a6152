package resolver

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startBackends(t *testing.T, n int) []*echo.Server {
	t.Helper()
	out := make([]*echo.Server, n)
	for i := range out {
		s, err := echo.Start(fmt.Sprintf("b%d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		out[i] = s
	}
	return out
}

func register(t *testing.T, cli *clientv3.Client, service string, b *echo.Server) {
	t.Helper()
	k, v, err := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: service, ID: b.Name(), Addr: b.Addr}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctxT(t, 10*time.Second), k, string(v)); err != nil {
		t.Fatal(err)
	}
}

func deregister(t *testing.T, cli *clientv3.Client, service string, b *echo.Server) {
	t.Helper()
	if _, err := cli.Delete(ctxT(t, 10*time.Second), "services/"+service+"/"+b.Name()); err != nil {
		t.Fatal(err)
	}
}

const rr = `{"loadBalancingConfig":[{"round_robin":{}}]}`

func dial(t *testing.T, cli *clientv3.Client, target, serviceConfig string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target,
		grpc.WithResolvers(NewBuilder(cli)),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// reached makes n calls and returns the sorted set of backends that answered.
func reached(cc *grpc.ClientConn, n int) ([]string, error) {
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		name, err := echo.Call(ctx, cc, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return nil, err
		}
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// waitReached polls until the calls reach exactly want.
func waitReached(t *testing.T, cc *grpc.ClientConn, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(15 * time.Second)
	var got []string
	var err error
	for time.Now().Before(deadline) {
		// Twenty calls reach every backend of a set of up to four under
		// round_robin; twice in a row rules out a set in transition.
		if got, err = reached(cc, 20); err == nil && slices.Equal(got, want) {
			if got, err = reached(cc, 20); err == nil && slices.Equal(got, want) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("calls reach %v (err %v), want exactly %v", got, err, want)
}

// Test 1: add and remove; round_robin reaches exactly the registered set.
func TestAddRemoveRoundRobin(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 3)
	register(t, cli, "echo", b[0])
	register(t, cli, "echo", b[1])
	cc1 := dial(t, cli, "muster:///echo", rr)
	cc2 := dial(t, cli, "muster:///echo", rr)
	for _, cc := range []*grpc.ClientConn{cc1, cc2} {
		waitReached(t, cc, "b0", "b1")
	}
	register(t, cli, "echo", b[2])
	for _, cc := range []*grpc.ClientConn{cc1, cc2} {
		waitReached(t, cc, "b0", "b1", "b2")
	}
	deregister(t, cli, "echo", b[0])
	for _, cc := range []*grpc.ClientConn{cc1, cc2} {
		waitReached(t, cc, "b1", "b2")
	}
}

func TestPickFirst(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 1)
	register(t, cli, "pf", b[0])
	cc := dial(t, cli, "muster:///pf", `{"loadBalancingConfig":[{"pick_first":{}}]}`)
	waitReached(t, cc, "b0")
}

// Test 2: client pinned to member A; while A is down the set changes and etcd
// compacts; A returns. etcd's own resolver stops for good here.
func TestPinnedMemberCompaction(t *testing.T) {
	c := etcdtest.Cluster(t, 3)
	a, other := c.Members()[0], c.Members()[1]
	cliA, cliB := a.Client(t), other.Client(t)
	b := startBackends(t, 3)
	register(t, cliB, "pin", b[0])
	register(t, cliB, "pin", b[1])
	cc := dial(t, cliA, "muster:///pin", rr)
	waitReached(t, cc, "b0", "b1")
	a.Stop()
	c.WaitLeader(t)
	register(t, cliB, "pin", b[2])
	deregister(t, cliB, "pin", b[0])
	resp, err := cliB.Put(ctxT(t, 10*time.Second), "unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cliB.Compact(ctxT(t, 10*time.Second), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	a.Restart()
	waitReached(t, cc, "b1", "b2")
}

// Test 3: etcd down for 10s under steady load: no RPC fails; after etcd
// returns, changes propagate again.
func TestEtcdDownUnderLoad(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	b := startBackends(t, 3)
	register(t, cli, "load", b[0])
	register(t, cli, "load", b[1])
	cc := dial(t, cli, "muster:///load", rr)
	waitReached(t, cc, "b0", "b1")

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err := echo.Call(ctx, cc) // no WaitForReady: a failure counts
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	m.Stop()
	time.Sleep(10 * time.Second) // the outage under test
	m.Restart()
	back := time.Now()
	register(t, cli, "load", b[2])
	waitReached(t, cc, "b0", "b1", "b2")
	t.Logf("new backend reached %v after etcd returned", time.Since(back))
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d RPCs failed during the outage; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	t.Logf("%d RPCs, none failed", ok.Load())
}

// Test 5: garbage next to good values: the good ones are resolved.
func TestGarbageValues(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 2)
	for k, v := range map[string]string{
		"services/junk/x": "not json at all",
		"services/junk/y": `{"Addr":"nohostport"}`,
		"services/junk/z": `{"Addr":"127.0.0.1:1","Metadata":{"weight":"heavy"}}`,
	} {
		if _, err := cli.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	register(t, cli, "junk", b[0])
	register(t, cli, "junk", b[1])
	cc := dial(t, cli, "muster:///junk", rr)
	waitReached(t, cc, "b0", "b1")
}

// All values malformed: the resolver keeps the last good endpoints instead
// of pushing an empty list.
func TestAllMalformedKeepsLastEndpoints(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 1)
	register(t, cli, "frail", b[0])
	cc := dial(t, cli, "muster:///frail", rr)
	waitReached(t, cc, "b0")
	if _, err := cli.Put(ctxT(t, 5*time.Second), "services/frail/b0", "corrupted"); err != nil {
		t.Fatal(err)
	}
	// Give the watch time to deliver the corruption, then check the
	// endpoint is still in use.
	time.Sleep(500 * time.Millisecond)
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := echo.Call(ctx, cc)
		cancel()
		if err != nil {
			t.Fatalf("call %d failed after the value was corrupted: %v", i, err)
		}
	}
}

// Test 6: 1,000 ClientConns to one service in one process: one etcd watch.
func TestThousandClientConnsOneWatch(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 1)
	register(t, cli, "many", b[0])
	before := etcdtest.StableWatcherCount(t)
	builder := NewBuilder(cli)
	conns := make([]*grpc.ClientConn, 1000)
	for i := range conns {
		cc, err := grpc.NewClient("muster:///many", grpc.WithResolvers(builder),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = cc
		cc.Connect() // builds the resolver
	}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	for _, i := range []int{0, 499, 999} {
		waitReached(t, conns[i], "b0")
	}
	if got := etcdtest.StableWatcherCount(t) - before; got != 1 {
		t.Fatalf("etcd watchers for 1000 ClientConns = %v, want 1", got)
	}
}

// Client-side health checking: a backend that says NOT_SERVING gets no picks.
func TestHealthCheck(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 2)
	hs := []*health.Server{b[0].Health, b[1].Health}
	for i := range b {
		register(t, cli, "hc", b[i])
	}
	cc := dial(t, cli, "muster:///hc", `{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`)
	waitReached(t, cc, "b0", "b1")
	hs[0].SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	waitReached(t, cc, "b1")
	hs[0].SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	waitReached(t, cc, "b0", "b1")
}

// Build does not block while etcd is down; the channel works once it is back.
func TestBuildWithEtcdDown(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	b := startBackends(t, 1)
	register(t, cli, "late", b[0])
	m.Stop()
	cc := dial(t, cli, "muster:///late", rr)
	start := time.Now()
	cc.Connect()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := echo.Call(ctx, cc)
	cancel()
	if err == nil {
		t.Fatal("call succeeded with etcd down and nothing resolved yet")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Build/Connect blocked for %v", took)
	}
	m.Restart()
	waitReached(t, cc, "b0")
}

func TestParseTarget(t *testing.T) {
	for _, tt := range []struct {
		target, service, ns string
		nsSet               bool
		formats             string
		err                 string
	}{
		{target: "muster:///order.rpc", service: "order.rpc"},
		{target: "muster:///order.rpc?namespace=prod", service: "order.rpc", ns: "prod", nsSet: true},
		{target: "muster:///order.rpc?namespace=", service: "order.rpc", ns: "", nsSet: true},
		{target: "muster:///order.rpc?format=etcd", service: "order.rpc", formats: "native"},
		{target: "muster:///order.rpc?format=native,gozero,native", service: "order.rpc", formats: "native,go-zero"},
		{target: "muster://host/order", err: "three slashes"},
		{target: "muster:///", err: "service: empty"},
		{target: "muster:///a/b", err: "contains '/'"},
		{target: "muster:///a?zone=x", err: `unknown parameter "zone"`},
		{target: "muster:///a?format=consul", err: `unknown format "consul"`},
		{target: "muster:///a?format=native,", err: "empty name"},
	} {
		u, err := url.Parse(tt.target)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseTarget(grpcresolver.Target{URL: *u})
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseTarget(%q) = %v, want error containing %q", tt.target, err, tt.err)
			}
			continue
		}
		if err != nil || got.Service != tt.service || got.Namespace != tt.ns || got.NamespaceSet != tt.nsSet || strings.Join(got.Formats, ",") != tt.formats {
			t.Errorf("ParseTarget(%q) = %+v, %v", tt.target, got, err)
		}
	}
}

func TestStateAttributes(t *testing.T) {
	e := endpoint.Endpoint{Service: "s", ID: "i", Addr: "127.0.0.1:1", Zone: "z", Weight: 7, Tags: map[string]string{"k": "v"}}
	st := State(discoverySnapshot(e))
	if len(st.Endpoints) != 1 || len(st.Addresses) != 1 {
		t.Fatalf("state %+v", st)
	}
	got, ok := FromAttributes(st.Endpoints[0].Attributes)
	if !ok || !endpoint.Equal(got, e) || Weight(st.Endpoints[0].Attributes) != 7 || Zone(st.Endpoints[0].Attributes) != "z" || st.Addresses[0].Addr != e.Addr {
		t.Fatalf("attributes give %+v %v", got, ok)
	}
	if Weight(nil) != endpoint.DefaultWeight {
		t.Fatal("Weight(nil) is not the default")
	}
}
