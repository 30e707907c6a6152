package xds

import (
	"context"
	"errors"
	"fmt"
	"net"

	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/internal/testx"
)

// Timeouts of waits on conditions; no test sleeps for correctness.
const (
	convergeTimeout = 90 * time.Second // 200 ClientConns see a change (2 busy cores, -race: up to 25s seen)
	waitTimeout     = 20 * time.Second
)

// env is one test's world: an embedded etcd, an xDS server on loopback
// and backends.
type env struct {
	t    *testing.T
	etcd *etcdtest.Member
	cli  *clientv3.Client
	opts []Option

	mu   sync.Mutex
	srv  *Server
	reg  *prometheus.Registry
	addr string // of the xDS server; kept across restarts
	done chan error
}

func newEnv(t *testing.T, opts ...Option) *env {
	t.Helper()
	m := etcdtest.Single(t)
	e := &env{t: t, etcd: m, cli: m.Client(t), opts: opts}
	e.start()
	t.Cleanup(e.stop)
	return e
}

// start starts an xDS server, on the address of the previous one if there
// was one.
func (e *env) start() {
	e.t.Helper()
	addr := e.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	deadline := time.Now().Add(waitTimeout)
	for {
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // retry: the old listener's port is being released
	}
	if err != nil {
		e.t.Fatalf("listen %s: %v", addr, err)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(e.cli, append([]Option{WithRegisterer(reg)}, e.opts...)...)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	e.mu.Lock()
	e.srv, e.reg, e.addr, e.done = srv, reg, lis.Addr().String(), done
	e.mu.Unlock()
}

// stop closes the xDS server and waits for Serve to return.
func (e *env) stop() {
	e.mu.Lock()
	srv, done := e.srv, e.done
	e.srv = nil
	e.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	if err := <-done; err != nil && !errors.Is(err, ErrClosed) {
		e.t.Errorf("Serve: %v", err)
	}
}

func (e *env) server() *Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// metric returns the value of the gauge or counter name with labels (as
// "k=v" pairs) in the current server's registry (0 if absent).
func (e *env) metric(name string, labels ...string) float64 {
	e.mu.Lock()
	reg := e.reg
	e.mu.Unlock()
	return testx.Metric(e.t, reg, name, labels...)
}

// backend starts an echo server called name; it stops when the test ends.
func (e *env) backend(name string) *echo.Server {
	e.t.Helper()
	b, err := echo.Start(name, "")
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(b.Stop)
	return b
}

// register puts b in etcd as an instance of service (no lease: it stays
// through etcd restarts).
func (e *env) register(service string, b *echo.Server, weight int, zone string) {
	e.t.Helper()
	ep := endpoint.Endpoint{Service: service, Addr: b.Addr, Weight: weight, Zone: zone, Version: "1.0." + b.Name(), Tags: map[string]string{"name": b.Name()}}
	key, val, err := keyfmt.Native.Encode(keyfmt.DefaultNamespace, ep, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := e.cli.Put(ctx, key, string(val)); err != nil {
		e.t.Fatalf("register %s: %v", b.Name(), err)
	}
}

func (e *env) deregister(service string, b *echo.Server) {
	e.t.Helper()
	key, _, err := keyfmt.Native.Encode(keyfmt.DefaultNamespace, endpoint.Endpoint{Service: service, Addr: b.Addr}, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := e.cli.Delete(ctx, key); err != nil {
		e.t.Fatalf("deregister %s: %v", b.Name(), err)
	}
}

// bootstrap returns the bootstrap JSON for the xDS server at addr.
func bootstrap(t testing.TB, addr, zone string) []byte {
	t.Helper()
	js, err := Bootstrap{Server: addr, NodeID: "test-client", Zone: zone}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// dial returns n ClientConns to xds:///service, each with an xDS client of
// its own (its own ADS stream), as n processes would have. They are closed
// when the test ends.
func (e *env) dial(service string, n int) []*grpc.ClientConn {
	e.t.Helper()
	ccs := make([]*grpc.ClientConn, n)
	for i := range ccs {
		ccs[i] = dialXDS(e.t, bootstrap(e.t, e.addr, ""), service)
	}
	return ccs
}

func dialXDS(t testing.TB, bootstrapJSON []byte, service string) *grpc.ClientConn {
	t.Helper()
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+service, grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// rpcTimeout bounds one RPC under load: a longer one counts as failed.
const rpcTimeout = 10 * time.Second

// call makes one RPC within rpcTimeout, waiting for the channel to be
// ready.
func call(ctx context.Context, cc *grpc.ClientConn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	return echo.Call(ctx, cc, grpc.WaitForReady(true))
}

// streak is how many answers in a row from the expected backends a
// ClientConn must give, after it has seen each of them, to count as
// converged; a backend still picked after its removal breaks it.
const streak = 20

// converge makes RPCs on every ClientConn until each has been answered by
// every backend of want and then by nothing else streak times in a row.
// An answer from a backend in never fails the test. It returns, per
// ClientConn, how long it took to see the last backend of want it had not
// seen yet.
func converge(t *testing.T, ccs []*grpc.ClientConn, want []string, never ...string) []time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), convergeTimeout)
	defer cancel()
	start := time.Now()
	took := make([]time.Duration, len(ccs))
	errs := make(chan error, len(ccs))
	var wg sync.WaitGroup
	for i, cc := range ccs {
		wg.Go(func() {
			seen := map[string]bool{}
			run := 0
			for {
				// Within the whole deadline: a ClientConn's first RPC waits
				// for its xDS client, which may take long with 200 of them
				// starting at once under -race.
				name, err := echo.Call(ctx, cc, grpc.WaitForReady(true))
				if err != nil {
					errs <- fmt.Errorf("ClientConn %d: %v (seen %v)", i, err, seen)
					return
				}
				if slices.Contains(never, name) {
					errs <- fmt.Errorf("ClientConn %d: answered by %s, which is not registered", i, name)
					return
				}
				if !slices.Contains(want, name) {
					run = 0
					continue
				}
				if !seen[name] {
					seen[name] = true
					took[i] = time.Since(start)
				}
				if run++; len(seen) == len(want) && run >= streak {
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return took
}

// percentiles formats p50, p99 and max of ds.
func percentiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return fmt.Sprintf("p50 %v, p99 %v, max %v (n=%d)", at(0.5).Round(time.Microsecond), at(0.99).Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond), len(s))
}

// load sends RPCs on every ClientConn, one after the other, until stop is
// called, which returns the number of RPCs and the failures.
func load(ccs []*grpc.ClientConn) (stop func() (ok int64, failed []error)) {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		n    atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for i, cc := range ccs {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := call(ctx, cc); err != nil {
					if ctx.Err() != nil {
						return // stopped
					}
					mu.Lock()
					errs = append(errs, fmt.Errorf("ClientConn %d at %s: %w", i, time.Now().Format("15:04:05.000"), err))
					mu.Unlock()
					continue
				}
				n.Add(1)
				time.Sleep(5 * time.Millisecond) // pacing, to leave CPU to the rest of the test
			}
		})
	}
	return func() (int64, []error) {
		cancel()
		wg.Wait()
		return n.Load(), errs
	}
}

func names(bs ...*echo.Server) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Name()
	}
	return out
}

// childEnv names the environment variable that makes the test binary a
// client process of TestFleetOfProcesses.
const childEnv = "MUSTER_XDS_TEST_CHILD"
