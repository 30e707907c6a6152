package muster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

func testConfig(m *etcdtest.Member) Config {
	return Config{
		Name:     "echo.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd:     EtcdConfig{Hosts: m.Endpoints(), TTL: 2 * time.Second},
	}
}

type testServer struct {
	*Server
	echo *echo.Service
}

// startServer starts a Muster server with an echo service called name, and
// shuts it down (quickly) when the test ends.
func startServer(t *testing.T, cfg Config, name string, opts ...Option) *testServer {
	t.Helper()
	srv, err := NewServer(cfg, append([]Option{WithoutSignals()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	svc := echo.New(name)
	svc.Register(srv)
	if err := srv.Start(testx.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return &testServer{Server: srv, echo: svc}
}

func keys(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := cli.Get(testx.Context(t, 5*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

// load sends RPCs on cc from a few goroutines until stopped, and records
// which backends answered and every failure.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	seen       map[string]int
	errs       []string
}

func runLoad(cc *grpc.ClientConn, workers int, stop <-chan struct{}, wg *sync.WaitGroup) *load {
	l := &load{seen: map[string]int{}}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				name, err := echo.Call(ctx, cc)
				cancel()
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 10 {
						l.errs = append(l.errs, err.Error())
					}
				} else {
					l.ok.Add(1)
					l.seen[name]++
				}
				l.mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) served(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[name] > 0
}

// TestRollingRestartLosesNoRPC restarts each of three servers in turn, three
// full rounds (the second on the same ports), under constant load from two
// clients (one on a shared pooled etcd client, one on its own), and expects
// not one failed RPC, with the default drain delay.
func TestRollingRestartLosesNoRPC(t *testing.T) {
	m := etcdtest.Single(t)
	cfg := testConfig(m)

	backends := make([]*testServer, 3)
	for i := range backends {
		backends[i] = startServer(t, cfg, fmt.Sprintf("b%d-r0", i))
	}
	cc1, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cc1.Close()
	cc2, err := NewClient(cfg, WithEtcdClient(m.Client(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc2.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	loads := []*load{runLoad(cc1, 3, stop, &wg), runLoad(cc2, 3, stop, &wg)}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	waitServed := func(name string) {
		t.Helper()
		for i, l := range loads {
			testx.Eventually(t, 15*time.Second, fmt.Sprintf("client %d never reached backend %s", i+1, name),
				func() bool { return l.served(name) })
		}
	}
	for _, b := range backends {
		waitServed(b.echo.Name())
	}

	for round := 1; round <= 3; round++ {
		for i, old := range backends {
			listen := "127.0.0.1:0"
			if round == 2 {
				listen = old.Addr().String() // restart in place, same port
			}
			if err := old.Shutdown(testx.Context(t, 20*time.Second)); err != nil {
				t.Fatalf("round %d: shutdown of %s: %v", round, old.echo.Name(), err)
			}
			c := cfg
			c.ListenOn = listen
			backends[i] = startServer(t, c, fmt.Sprintf("b%d-r%d", i, round))
			waitServed(backends[i].echo.Name()) // the next restart waits for this one to take traffic
		}
	}
	close(stop)
	wg.Wait()

	var ok, failed int64
	for i, l := range loads {
		ok += l.ok.Load()
		failed += l.failed.Load()
		if n := l.failed.Load(); n > 0 {
			t.Errorf("client %d: %d failed RPCs, first errors: %q", i+1, n, l.errs)
		}
	}
	t.Logf("9 restarts under load: %d RPCs succeeded, %d failed", ok, failed)
	if ok < 1000 {
		t.Errorf("only %d RPCs succeeded; the load did not run", ok)
	}
}

// TestHealthGatedRegistration: NOT_SERVING takes the key out of etcd and
// SERVING puts it back, and the health service says the same.
func TestHealthGatedRegistration(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	cfg := testConfig(m)
	srv := startServer(t, cfg, "gated")
	prefix := "services/echo.rpc/"
	key := prefix + srv.Endpoint().Addr
	if got := keys(t, cli, prefix); len(got) != 1 || got[key] == "" {
		t.Fatalf("after Start: keys %v, want %s", got, key)
	}

	cc, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		resp, err := healthpb.NewHealthClient(cc).Check(testx.Context(t, 5*time.Second), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatus()
	}

	if err := srv.SetServing(testx.Context(t, 5*time.Second), false); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, cli, prefix); len(got) != 0 {
		t.Fatalf("after SetServing(false): keys %v, want none", got)
	}
	if st := health(); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health after SetServing(false) = %v", st)
	}

	if err := srv.SetServing(testx.Context(t, 5*time.Second), true); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, cli, prefix); len(got) != 1 || got[key] == "" {
		t.Fatalf("after SetServing(true): keys %v, want %s", got, key)
	}
	if st := health(); st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after SetServing(true) = %v", st)
	}

	// After shutdown the server refuses to come back.
	if err := srv.Shutdown(testx.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := srv.SetServing(testx.Context(t, time.Second), true); !errors.Is(err, ErrServerStopped) {
		t.Fatalf("SetServing after Shutdown = %v, want ErrServerStopped", err)
	}
	if got := keys(t, cli, prefix); len(got) != 0 {
		t.Fatalf("after Shutdown: keys %v, want none", got)
	}
}

// TestStartNotServing: a server set NOT_SERVING before Start serves but does
// not register until it is set SERVING.
func TestStartNotServing(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	srv, err := NewServer(testConfig(m), WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetServing(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(testx.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	if got := keys(t, cli, "services/"); len(got) != 0 {
		t.Fatalf("keys %v, want none before SERVING", got)
	}
	cc, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(testx.Context(t, 5*time.Second), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health of a server started NOT_SERVING: %v, %v", resp.GetStatus(), err)
	}
	if err := srv.SetServing(testx.Context(t, 5*time.Second), true); err != nil {
		t.Fatal(err)
	}
	if got := keys(t, cli, "services/"); len(got) != 1 {
		t.Fatalf("keys %v, want one after SERVING", got)
	}
}

// TestStartWithoutEtcd: a server whose etcd is down still starts and serves,
// and registers as soon as etcd is back.
func TestStartWithoutEtcd(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	cfg := testConfig(m)
	cfg.Etcd.DialTimeout = 500 * time.Millisecond
	m.Stop()
	srv := startServer(t, cfg, "early")
	conn, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatalf("server does not listen while etcd is down: %v", err)
	}
	conn.Close()
	m.Restart()
	testx.Eventually(t, 10*time.Second, "the server never registered after etcd came back", func() bool {
		return len(keys(t, cli, "services/echo.rpc/")) == 1
	})
}

// TestShutdownOrder: the key is gone while the server still answers, and
// the server stops only after the drain delay.
func TestShutdownOrder(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	cfg := testConfig(m)
	cfg.Shutdown.DrainDelay = 300 * time.Millisecond
	srv := startServer(t, cfg, "leaving")
	prefix := "services/echo.rpc/"
	rev := mustRev(t, cli)
	wch := cli.Watch(testx.Context(t, 10*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))

	cc, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := echo.Call(testx.Context(t, 5*time.Second), cc); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- srv.Shutdown(context.Background()) }()
	var deleted bool
	for !deleted {
		wr, ok := <-wch
		if !ok {
			t.Fatal("watch ended before the key was deleted")
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				deleted = true
			}
		}
	}
	// The key is gone; the server must still answer on its open connection.
	if _, err := echo.Call(testx.Context(t, 5*time.Second), cc); err != nil {
		t.Fatalf("RPC right after the key left etcd: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) before the drain delay", err)
	default:
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := echo.Call(testx.Context(t, 2*time.Second), cc, grpc.WaitForReady(false)); err == nil {
		t.Fatal("RPC succeeded after Shutdown returned")
	}
}

func mustRev(t *testing.T, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(testx.Context(t, 5*time.Second), "\x00")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// TestClientsShareOneWatch: clients made with the same etcd settings share
// one etcd client and one watch, closed with the last of them.
func TestClientsShareOneWatch(t *testing.T) {
	m := etcdtest.Single(t)
	cfg := testConfig(m)
	startServer(t, cfg, "shared")
	before := etcdtest.StableWatcherCount(t)
	var ccs []*grpc.ClientConn
	for range 5 {
		cc, err := NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ccs = append(ccs, cc)
		if _, err := echo.Call(testx.Context(t, 10*time.Second), cc); err != nil {
			t.Fatal(err)
		}
	}
	if got := etcdtest.StableWatcherCount(t) - before; got != 1 {
		t.Errorf("5 clients of one service added %v etcd watchers, want 1", got)
	}
	for _, cc := range ccs {
		cc.Close()
	}
	testx.Eventually(t, 5*time.Second, "the pooled etcd client was not closed with the last ClientConn", func() bool {
		pool.mu.Lock()
		defer pool.mu.Unlock()
		return len(pool.m) == 0
	})
}

func TestNewServerConfigErrors(t *testing.T) {
	_, err := NewServer(Config{})
	for _, field := range []string{"Name:", "ListenOn:"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("NewServer(Config{}) = %v, want an error naming %s", err, field)
		}
	}
	_, err = NewClient(Config{})
	for _, field := range []string{"Name:", "Etcd.Hosts:"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("NewClient(Config{}) = %v, want an error naming %s", err, field)
		}
	}
}

func TestListenError(t *testing.T) {
	m := etcdtest.Single(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	cfg := testConfig(m)
	cfg.ListenOn = lis.Addr().String()
	srv, err := NewServer(cfg, WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Start(testx.Context(t, 5*time.Second))
	if err == nil || !strings.Contains(err.Error(), "ListenOn") {
		t.Fatalf("Start on a busy port = %v, want an error naming ListenOn", err)
	}
	if got := keys(t, m.Client(t), "services/"); len(got) != 0 {
		t.Fatalf("a server that failed to listen registered %v", got)
	}
}

// TestShutdownDuringStart: a Shutdown while Start waits for an etcd that
// does not answer cuts the start short, and neither hangs.
func TestShutdownDuringStart(t *testing.T) {
	m := etcdtest.Single(t)
	cfg := testConfig(m)
	cfg.Etcd.DialTimeout = time.Minute
	m.Stop()
	srv, err := NewServer(cfg, WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- srv.Start(context.Background()) }()
	testx.Eventually(t, 10*time.Second, "the server never listened", func() bool { return srv.Addr() != nil })
	if err := srv.Shutdown(testx.Context(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-started:
		if err == nil {
			t.Fatal("Start succeeded although Shutdown cut it short")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Start still waiting after Shutdown")
	}
	if addr := srv.Addr(); addr != nil {
		t.Fatalf("still listening on %v after Shutdown", addr)
	}
}
