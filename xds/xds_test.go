package xds

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

const svc = "order.rpc"

// TestFleetInOneProcess: 200 ClientConns, each with an xDS client and ADS
// stream of its own, reach exactly the registered backends, all see a
// registration and a removal, and cost etcd the one watcher that one
// client costs.
func TestFleetInOneProcess(t *testing.T) {
	e := newEnv(t)
	a, b, c, stranger := e.backend("a"), e.backend("b"), e.backend("c"), e.backend("stranger")
	e.register(svc, a, 0, "z1")
	e.register(svc, b, 0, "z2")
	base := etcdtest.StableWatcherCount(t)

	one := e.dial(svc, 1)
	converge(t, one, names(a, b), stranger.Name())
	testx.Eventually(t, waitTimeout, "one etcd watcher for the first client", func() bool {
		return etcdtest.WatcherCount(t) == base+1
	})

	begin := time.Now()
	ccs := append(one, e.dial(svc, 199)...)
	converge(t, ccs, names(a, b), stranger.Name())
	t.Logf("200 ClientConns ready in %v", time.Since(begin).Round(time.Millisecond))
	if got := etcdtest.StableWatcherCount(t); got != base+1 {
		t.Errorf("etcd watchers with 200 clients: %v, want %v (as with one)", got, base+1)
	}
	if got := e.metric("muster_xds_etcd_watchers"); got != 1 {
		t.Errorf("muster_xds_etcd_watchers = %v, want 1", got)
	}
	if got := e.metric("muster_xds_streams"); got != 200 {
		t.Errorf("muster_xds_streams = %v, want 200", got)
	}
	if a.Hits() == 0 || b.Hits() == 0 || stranger.Hits() != 0 {
		t.Errorf("hits a=%d b=%d stranger=%d, want a and b only", a.Hits(), b.Hits(), stranger.Hits())
	}

	// A registration reaches every ClientConn.
	e.register(svc, c, 0, "z1")
	took := converge(t, ccs, names(a, b, c), stranger.Name())
	t.Logf("registration: etcd put -> RPC answered by the new backend on each of 200 ClientConns: %s", percentiles(took))

	// A removal too: once every ClientConn has answered streak times
	// without a, a gets nothing more.
	del := time.Now()
	e.deregister(svc, a)
	converge(t, ccs, names(b, c), stranger.Name())
	t.Logf("removal: all 200 ClientConns stopped using the removed backend within %v", time.Since(del).Round(time.Millisecond))
	hits := a.Hits()
	converge(t, ccs, names(b, c), a.Name(), stranger.Name())
	if a.Hits() != hits {
		t.Errorf("removed backend still answered %d RPCs", a.Hits()-hits)
	}
	if got := etcdtest.StableWatcherCount(t); got != base+1 {
		t.Errorf("etcd watchers after the changes: %v, want %v", got, base+1)
	}
}

// TestFleetOfProcesses: 20 client processes (the test binary re-executed,
// configured as any gRPC program is: GRPC_XDS_BOOTSTRAP_CONFIG and grpc-go's
// global xds:/// resolver) reach exactly the registered backends and see a
// registration and a removal; etcd counts one watcher.
func TestFleetOfProcesses(t *testing.T) {
	n := 20
	if testing.Short() {
		n = 4
	}
	e := newEnv(t)
	a, b, c := e.backend("a"), e.backend("b"), e.backend("c")
	e.register(svc, a, 0, "")
	e.register(svc, b, 0, "")
	base := etcdtest.StableWatcherCount(t)

	kids := make([]*child, n)
	for i := range kids {
		kids[i] = startChild(t, e.addr)
	}
	waitChildren(t, kids, names(a, b))
	put := time.Now()
	e.register(svc, c, 0, "")
	waitChildren(t, kids, names(a, b, c))
	t.Logf("%d processes: registration seen by all within %v", n, time.Since(put).Round(time.Millisecond))
	del := time.Now()
	e.deregister(svc, a)
	waitChildren(t, kids, names(b, c))
	t.Logf("%d processes: removal seen by all within %v (%d RPCs in a row without it)", n, time.Since(del).Round(time.Millisecond), streak)
	if got := etcdtest.StableWatcherCount(t); got != base+1 {
		t.Errorf("etcd watchers with %d client processes: %v, want %v", n, got, base+1)
	}
	if got := e.metric("muster_xds_streams"); got != float64(n) {
		t.Errorf("muster_xds_streams = %v, want %d", got, n)
	}
	for i, k := range kids {
		if errs := k.errors(); len(errs) > 0 {
			t.Errorf("process %d: %d failed RPCs, first: %s", i, len(errs), errs[0])
		}
	}
}

// child is a client process.
type child struct {
	cmd   *exec.Cmd
	stdin io.Closer
	mu    sync.Mutex
	live  map[string]bool
	errs  []string
	done  chan struct{}
}

func startChild(t *testing.T, addr string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap(t, addr, "")), "MUSTER_XDS_SERVICE="+svc)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	k := &child{cmd: cmd, stdin: stdin, live: map[string]bool{}, done: make(chan struct{})}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(k.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			word, arg, _ := strings.Cut(sc.Text(), " ")
			k.mu.Lock()
			switch word {
			case "hit":
				k.live[arg] = true
			case "gone":
				delete(k.live, arg)
			case "error":
				k.errs = append(k.errs, arg)
			}
			k.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-k.done:
		case <-time.After(waitTimeout):
			_ = cmd.Process.Kill()
			<-k.done
		}
		_ = cmd.Wait()
	})
	return k
}

func (k *child) backends() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for n := range k.live {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func (k *child) errors() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.errs)
}

func waitChildren(t *testing.T, kids []*child, want []string) {
	t.Helper()
	slices.Sort(want)
	testx.Eventually(t, convergeTimeout, fmt.Sprintf("every process answered by exactly %v", want), func() bool {
		for _, k := range kids {
			if !slices.Equal(k.backends(), want) {
				return false
			}
		}
		return true
	})
}

// TestEtcdDownUnderLoad: etcd is stopped for 10 s while xDS clients send
// RPCs; none fails, and once etcd is back a registration reaches every
// client within 2 s.
func TestEtcdDownUnderLoad(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.backend("a"), e.backend("b"), e.backend("c")
	e.register(svc, a, 0, "")
	e.register(svc, b, 0, "")
	ccs := e.dial(svc, 10)
	converge(t, ccs, names(a, b))

	stop := load(ccs)
	e.etcd.Stop()
	outage := time.Now()
	// A client that connects during the outage gets the last assignment.
	late := e.dial(svc, 1)
	converge(t, late, names(a, b))
	time.Sleep(10*time.Second - time.Since(outage)) // the outage itself: its length is the test
	e.etcd.Restart()
	t.Logf("etcd down for %v", time.Since(outage).Round(time.Millisecond))

	e.register(svc, c, 0, "")
	took := converge(t, append(ccs, late...), names(a, b, c))
	ok, failed := stop()
	t.Logf("after etcd came back, registration reached all 11 clients: %s", percentiles(took))
	for _, d := range took {
		if d > 2*time.Second {
			t.Errorf("registration after etcd came back took %v, want < 2s", d)
			break
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d RPCs failed while etcd was down; first: %v", len(failed), ok+int64(len(failed)), failed[0])
	}
	t.Logf("%d RPCs, 0 failed", ok)
}

// TestServerRestartUnderLoad: the xDS server goes away while clients send
// RPCs and comes back on the same port; no RPC fails, and the clients see
// the changes made in etcd while it was down.
func TestServerRestartUnderLoad(t *testing.T) {
	e := newEnv(t)
	a, b, c := e.backend("a"), e.backend("b"), e.backend("c")
	e.register(svc, a, 0, "")
	e.register(svc, b, 0, "")
	ccs := e.dial(svc, 10)
	converge(t, ccs, names(a, b))

	stop := load(ccs)
	e.stop()
	e.register(svc, c, 0, "") // while the server is down
	e.deregister(svc, a)
	testx.Eventually(t, waitTimeout, "load goes on without the xDS server", func() bool { return b.Hits() > 0 })
	e.start()
	took := converge(t, ccs, names(b, c))
	ok, failed := stop()
	t.Logf("restarted xDS server: clients saw the changes made while it was down within %s", percentiles(took))
	if len(failed) > 0 {
		t.Fatalf("%d of %d RPCs failed across the xDS server restart; first: %v", len(failed), ok+int64(len(failed)), failed[0])
	}
	t.Logf("%d RPCs, 0 failed", ok)
}

// TestWeightsAndZones: with ring_hash, the one gRPC policy that honours
// endpoint weights, weights 1 and 9 in one zone split the traffic about
// 10/90; each zone is a locality of its own.
func TestWeightsAndZones(t *testing.T) {
	e := newEnv(t, WithPolicy(PolicyRingHash))
	light, heavy, other := e.backend("light"), e.backend("heavy"), e.backend("other")
	e.register(svc, light, 1, "eu-1a")
	e.register(svc, heavy, 9, "eu-1a")

	cc := e.dial(svc, 1)[0]
	converge(t, []*grpc.ClientConn{cc}, names(light, heavy))
	ctx := testx.Context(t, waitTimeout)
	l0, h0 := light.Hits(), heavy.Hits()
	const rpcs = 2000
	for range rpcs {
		if _, err := call(ctx, cc); err != nil {
			t.Fatal(err)
		}
	}
	l, h := light.Hits()-l0, heavy.Hits()-h0
	share := float64(h) / float64(l+h)
	t.Logf("weights 1 and 9: %d and %d of %d RPCs (heavy share %.3f)", l, h, rpcs, share)
	if share < 0.75 || share > 0.97 {
		t.Errorf("heavy backend got %.3f of the traffic, want about 0.9", share)
	}

	// Localities, as a client receives them.
	e.register(svc, other, 5, "eu-1b")
	cla := fetchAssignment(t, e.addr, svc, 3)
	var zones []string
	for _, l := range cla.GetEndpoints() {
		zones = append(zones, fmt.Sprintf("%s:%d:%d", l.GetLocality().GetZone(), l.GetLoadBalancingWeight().GetValue(), len(l.GetLbEndpoints())))
	}
	if want := []string{"eu-1a:10:2", "eu-1b:5:1"}; !slices.Equal(zones, want) {
		t.Errorf("localities (zone:weight:endpoints) = %v, want %v", zones, want)
	}
}

// TestP2CReachesGoClients: a Go client that has muster_p2c registered
// balances with it; the picks show in muster_p2c's own counters.
func TestP2CReachesGoClients(t *testing.T) {
	e := newEnv(t)
	a, b := e.backend("a"), e.backend("b")
	e.register(svc, a, 0, "")
	e.register(svc, b, 0, "")
	cc := e.dial(svc, 1)[0]
	converge(t, []*grpc.ClientConn{cc}, names(a, b))
	reg := prometheusRegistry(t)
	picks := testx.Metric(t, reg, "muster_balancer_picks_total", "policy=muster_p2c", "target=xds:///"+svc)
	if picks < streak {
		t.Fatalf("muster_p2c picks for xds:///%s = %v, want >= %d: the client does not balance with muster_p2c", svc, picks, streak)
	}
	t.Logf("muster_p2c made %v picks for xds:///%s", picks, svc)
}

// TestFallbackWithoutP2C: a client that does not know the custom policy
// named first falls back to round_robin and works.
func TestFallbackWithoutP2C(t *testing.T) {
	old := customPolicyName
	customPolicyName = "muster_not_registered"
	t.Cleanup(func() { customPolicyName = old })
	e := newEnv(t)
	a, b := e.backend("a"), e.backend("b")
	e.register(svc, a, 0, "")
	e.register(svc, b, 0, "")
	converge(t, e.dial(svc, 1), names(a, b))
}

// TestEmptyServiceFailsFast: a service whose instances are all gone keeps
// its configuration: RPCs fail at once with UNAVAILABLE, and work again on
// the same ClientConn when an instance comes back.
func TestEmptyServiceFailsFast(t *testing.T) {
	e := newEnv(t)
	a := e.backend("a")
	e.register(svc, a, 0, "")
	cc := e.dial(svc, 1)[0]
	converge(t, []*grpc.ClientConn{cc}, names(a))
	e.deregister(svc, a)
	testx.Eventually(t, waitTimeout, "RPCs fail fast with UNAVAILABLE", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := echo.Call(ctx, cc)
		return status.Code(err) == codes.Unavailable
	})
	e.register(svc, a, 0, "")
	converge(t, []*grpc.ClientConn{cc}, names(a))
	if got := e.metric("muster_xds_resources", "type=listener"); got != 1 {
		t.Errorf("listeners = %v, want 1", got)
	}
}

// TestReleaseAfterLastClient: the etcd watch of a service ends when its
// last client has gone (no linger), and comes back with a new client.
func TestReleaseAfterLastClient(t *testing.T) {
	e := newEnv(t, WithLinger(0))
	a := e.backend("a")
	e.register(svc, a, 0, "")
	base := etcdtest.StableWatcherCount(t)
	cc := dialXDS(t, bootstrap(t, e.addr, ""), svc)
	converge(t, []*grpc.ClientConn{cc}, names(a))
	testx.Eventually(t, waitTimeout, "one watcher", func() bool { return etcdtest.WatcherCount(t) == base+1 })
	cc.Close()
	testx.Eventually(t, waitTimeout, "the watch released", func() bool {
		return etcdtest.WatcherCount(t) == base && len(e.server().Services()) == 0
	})
	converge(t, e.dial(svc, 1), names(a))
}

// TestServeAfterClose returns ErrClosed.
func TestServeAfterClose(t *testing.T) {
	e := newEnv(t)
	e.stop()
	srv, err := New(e.cli)
	if err != nil {
		t.Fatal(err)
	}
	_ = srv.Close()
	if err := srv.Serve(nil); err != ErrClosed {
		t.Errorf("Serve after Close = %v, want ErrClosed", err)
	}
}
