package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// etcdWatch reports whether the tests run against etcd's grpcproxy watch
// proxy instead of Muster's watch (MUSTER_PROXY_ETCD_WATCH=1), to see what
// upstream does in the same cases.
func etcdWatch() bool { return os.Getenv("MUSTER_PROXY_ETCD_WATCH") == "1" }

// testProxy is a proxy serving on a loopback port.
type testProxy struct {
	*Proxy
	addr string
	reg  *prometheus.Registry
	done chan error
}

// upstream returns a client of m for a proxy: Muster's fast reconnects and
// the proxy's auth forwarding.
func upstream(t *testing.T, m *etcdtest.Member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   m.Endpoints(),
		DialTimeout: 5 * time.Second,
		DialOptions: append(etcdclient.DialOptions(), DialOptions()...),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// startProxy serves a proxy of cli on addr ("" for a free port) and closes
// it at the end of the test.
func startProxy(t *testing.T, cli *clientv3.Client, addr string) *testProxy {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	// A port just released by a closed proxy may take a moment to be free.
	testx.Eventually(t, 5*time.Second, "listen on "+addr, func() bool {
		lis, err = net.Listen("tcp", addr)
		return err == nil
	})
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	opts := []Option{WithRegisterer(reg), WithLogger(log)}
	if etcdWatch() {
		opts = append(opts, withEtcdWatchProxy())
	}
	p, err := New(cli, opts...)
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{Proxy: p, addr: lis.Addr().String(), reg: reg, done: make(chan error, 1)}
	go func() { tp.done <- p.Serve(lis) }()
	t.Cleanup(tp.stop)
	return tp
}

// stop closes the proxy and checks that Serve returned ErrClosed.
func (tp *testProxy) stop() {
	_ = tp.Close()
	if err := <-tp.done; !errors.Is(err, ErrClosed) {
		panic(fmt.Sprintf("Serve returned %v, want ErrClosed", err))
	}
	tp.done <- ErrClosed // stop is idempotent
}

// proxyClient returns an etcd client of the proxy at addr.
func proxyClient(t *testing.T, addr string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{addr},
		DialTimeout: 5 * time.Second,
		DialOptions: etcdclient.DialOptions(),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// proxyClients returns n clients of the proxy at addr.
func proxyClients(t *testing.T, addr string, n int) []*clientv3.Client {
	clis := make([]*clientv3.Client, n)
	for i := range clis {
		clis[i] = proxyClient(t, addr)
	}
	return clis
}

// watch opens a watch and waits for etcd (or the proxy) to confirm it.
func watch(t *testing.T, ctx context.Context, cli *clientv3.Client, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	t.Helper()
	wch := cli.Watch(ctx, key, append(opts, clientv3.WithCreatedNotify())...)
	select {
	case resp, ok := <-wch:
		if !ok || !resp.Created || resp.Err() != nil {
			t.Fatalf("watch %q: not created: %+v (open %v)", key, resp, ok)
		}
	case <-ctx.Done():
		t.Fatalf("watch %q: not created: %v", key, ctx.Err())
	}
	return wch
}

// recorder collects what a watch channel delivers.
type recorder struct {
	mu     sync.Mutex
	keys   []string // keys of the events, in order
	revs   []int64
	errs   []error
	closed bool
}

func record(wch clientv3.WatchChan) *recorder {
	r := &recorder{}
	go func() {
		for resp := range wch {
			r.mu.Lock()
			if err := resp.Err(); err != nil {
				r.errs = append(r.errs, err)
			}
			for _, ev := range resp.Events {
				r.keys = append(r.keys, string(ev.Kv.Key))
				r.revs = append(r.revs, ev.Kv.ModRevision)
			}
			r.mu.Unlock()
		}
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
	}()
	return r
}

func (r *recorder) snapshot() (keys []string, errs []error, closed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.keys...), append([]error(nil), r.errs...), r.closed
}

func (r *recorder) has(key string) bool {
	keys, _, _ := r.snapshot()
	for _, k := range keys {
		if k == key {
			return true
		}
	}
	return false
}

// waitAll waits until ok holds for every recorder, and reports those for
// which it does not when the time is up.
func waitAll(t *testing.T, d time.Duration, what string, recs []*recorder, ok func(*recorder) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var bad []string
		for i, r := range recs {
			if !ok(r) {
				keys, errs, closed := r.snapshot()
				bad = append(bad, fmt.Sprintf("#%d: events %v, errors %v, closed %v", i, keys, errs, closed))
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			n := len(bad)
			if n > 5 {
				bad = append(bad[:5], "...")
			}
			t.Fatalf("after %v: %s: %d of %d watchers did not: %v", d, what, n, len(recs), bad)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *recorder) compacted() bool {
	_, errs, _ := r.snapshot()
	for _, err := range errs {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return true
		}
	}
	return false
}

// TestHundredWatchersOneEtcdWatcher: 100 etcd clients watching one prefix
// through the proxy cost etcd one watcher, and a put reaches all of them.
func TestHundredWatchersOneEtcdWatcher(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)
	before := etcdtest.StableWatcherCount(t)

	const n = 100
	recs := make([]*recorder, n)
	for i, cli := range proxyClients(t, tp.addr, n) {
		recs[i] = record(watch(t, ctx, cli, "svc/a/", clientv3.WithPrefix()))
	}
	testx.Eventually(t, 10*time.Second, "etcd has one more watcher", func() bool {
		return etcdtest.WatcherCount(t)-before == 1
	})
	if !etcdWatch() {
		if got := testutil.ToFloat64(tp.metrics.watchers); got != n {
			t.Errorf("muster_proxy_watchers = %v, want %d", got, n)
		}
		if got := testutil.ToFloat64(tp.metrics.upstreamWatches); got != 1 {
			t.Errorf("muster_proxy_upstream_watches = %v, want 1", got)
		}
	}
	if _, err := direct.Put(ctx, "svc/a/1", "x"); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "the put reaches all 100 watchers", func() bool {
		for _, r := range recs {
			if !r.has("svc/a/1") {
				return false
			}
		}
		return true
	})
	if got := etcdtest.StableWatcherCount(t) - before; got != 1 {
		t.Errorf("etcd watchers: %v more than before the clients, want 1", got)
	}
}

// TestReadAfterDirectWrite: a write made directly to etcd is seen at once by
// Gets through the proxy, serializable ones included (the range cache of
// etcd's proxy serves stale values: etcd-io/etcd#14665).
func TestReadAfterDirectWrite(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)
	old := proxyClient(t, tp.addr)

	for i := range 5 {
		want := fmt.Sprint("v", i)
		if _, err := direct.Put(ctx, "svc/b/1", want); err != nil {
			t.Fatal(err)
		}
		fresh := proxyClient(t, tp.addr)
		for _, c := range []struct {
			name string
			cli  *clientv3.Client
			opts []clientv3.OpOption
		}{
			{"new client", fresh, nil},
			{"new client, serializable", fresh, []clientv3.OpOption{clientv3.WithSerializable()}},
			{"old client, serializable", old, []clientv3.OpOption{clientv3.WithSerializable()}},
			{"old client, prefix, serializable", old, []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSerializable()}},
		} {
			resp, err := c.cli.Get(ctx, "svc/b/", append(c.opts, clientv3.WithPrefix())...)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != want {
				t.Fatalf("%s: Get after direct put of %q: %v", c.name, want, resp.Kvs)
			}
		}
		tresp, err := old.Txn(ctx).Then(clientv3.OpGet("svc/b/1", clientv3.WithSerializable())).Commit()
		if err != nil {
			t.Fatal(err)
		}
		if kvs := tresp.Responses[0].GetResponseRange().Kvs; len(kvs) != 1 || string(kvs[0].Value) != want {
			t.Fatalf("serializable Get in a Txn after direct put of %q: %v", want, kvs)
		}
	}
	if got := testutil.ToFloat64(tp.metrics.ranges); got < 20 {
		t.Errorf("muster_proxy_ranges_forwarded_total = %v, want >= 20", got)
	}
}

// TestCompactionDuringProxyRestart: watchers of a proxy that restarts on
// the same port resume from their last revision; the events they missed
// arrive, or ErrCompacted when etcd compacted them away; never silence.
// After ErrCompacted, a new watch from the current revision (what a
// resolver does after relisting) gets every later event (etcd-io/etcd#21813).
func TestCompactionDuringProxyRestart(t *testing.T) {
	for _, compactAll := range []bool{false, true} {
		t.Run(fmt.Sprint("history compacted=", compactAll), func(t *testing.T) {
			m := etcdtest.Single(t)
			direct := m.Client(t)
			up := upstream(t, m)
			tp := startProxy(t, up, "")
			ctx := testx.Context(t, 30*time.Second)

			const n = 20
			clis := proxyClients(t, tp.addr, n)
			recs := make([]*recorder, n)
			for i, cli := range clis {
				recs[i] = record(watch(t, ctx, cli, "svc/c/", clientv3.WithPrefix()))
			}
			r1, err := direct.Put(ctx, "svc/c/1", "x")
			if err != nil {
				t.Fatal(err)
			}
			testx.Eventually(t, 10*time.Second, "svc/c/1 reaches every watcher", func() bool {
				for _, r := range recs {
					if !r.has("svc/c/1") {
						return false
					}
				}
				return true
			})

			tp.stop()
			for _, k := range []string{"svc/c/2", "svc/c/3"} {
				if _, err := direct.Put(ctx, k, "x"); err != nil {
					t.Fatal(err)
				}
			}
			// Unrelated keys move the revision on.
			last, err := direct.Put(ctx, "other", "x")
			if err != nil {
				t.Fatal(err)
			}
			compactAt := r1.Header.Revision // the watchers resume at r1+1: nothing lost
			if compactAll {
				compactAt = last.Header.Revision // svc/c/2 and svc/c/3 are gone
			}
			if _, err := direct.Compact(ctx, compactAt, clientv3.WithCompactPhysical()); err != nil {
				t.Fatal(err)
			}

			startProxy(t, up, tp.addr)
			if _, err := direct.Put(ctx, "svc/c/4", "x"); err != nil {
				t.Fatal(err)
			}
			waitAll(t, 15*time.Second, "every watcher gets svc/c/4 or ErrCompacted", recs, func(r *recorder) bool {
				return r.has("svc/c/4") || r.compacted()
			})
			for i, r := range recs {
				keys, errs, _ := r.snapshot()
				switch {
				case compactAll && !r.compacted():
					t.Errorf("watcher %d: history compacted, no ErrCompacted; events %v, errors %v", i, keys, errs)
				case !compactAll && fmt.Sprint(keys) != "[svc/c/1 svc/c/2 svc/c/3 svc/c/4]":
					t.Errorf("watcher %d: events %v, errors %v; want svc/c/1..4", i, keys, errs)
				case compactAll && r.has("svc/c/4") && !r.has("svc/c/2"):
					t.Errorf("watcher %d: got svc/c/4 but missed svc/c/2 (events %v)", i, keys)
				}
			}
			if !compactAll {
				return
			}

			// Relist and watch again, as a resolver does after ErrCompacted.
			recs2 := make([]*recorder, n)
			for i, cli := range clis {
				resp, err := cli.Get(ctx, "svc/c/", clientv3.WithPrefix())
				if err != nil {
					t.Fatal(err)
				}
				if len(resp.Kvs) != 4 {
					t.Fatalf("relist: %d keys, want 4", len(resp.Kvs))
				}
				recs2[i] = record(watch(t, ctx, cli, "svc/c/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)))
			}
			if _, err := direct.Put(ctx, "svc/c/5", "x"); err != nil {
				t.Fatal(err)
			}
			testx.Eventually(t, 10*time.Second, "svc/c/5 reaches every new watcher", func() bool {
				for _, r := range recs2 {
					if !r.has("svc/c/5") {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestEtcdRestartWithHundredWatchers: etcd restarts while 100 clients
// watch two prefixes each through the proxy, and each client opens a third
// watch while etcd is down. Afterwards a put reaches all of them, and no
// watcher of one prefix receives events of the other (etcd-io/etcd PR
// #21881).
func TestEtcdRestartWithHundredWatchers(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 40*time.Second)
	before := etcdtest.StableWatcherCount(t)

	const n = 100
	clis := proxyClients(t, tp.addr, n)
	recA := make([]*recorder, n)
	recB := make([]*recorder, n)
	for i, cli := range clis {
		recA[i] = record(watch(t, ctx, cli, "svc/a/", clientv3.WithPrefix()))
		recB[i] = record(watch(t, ctx, cli, "svc/b/", clientv3.WithPrefix()))
	}
	testx.Eventually(t, 10*time.Second, "etcd has two more watchers", func() bool {
		return etcdtest.WatcherCount(t)-before == 2
	})

	m.Stop()
	// Watchers asked for while etcd is down, on the same streams: they are
	// created once it is back, as they would be by etcd itself. (Watch
	// returns once the watch is created.)
	lateA := make([]*recorder, n)
	var wg sync.WaitGroup
	for i, cli := range clis {
		wg.Go(func() { lateA[i] = record(cli.Watch(ctx, "svc/a/", clientv3.WithPrefix())) })
	}
	m.Restart()
	wg.Wait()
	if !etcdWatch() {
		if got := testutil.ToFloat64(tp.metrics.watchers); got != 3*n {
			t.Errorf("muster_proxy_watchers = %v, want %d", got, 3*n)
		}
	}
	for _, k := range []string{"svc/a/1", "svc/b/1"} {
		if _, err := direct.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
	testx.Eventually(t, 15*time.Second, "the puts reach all watchers", func() bool {
		for i := range n {
			if !recA[i].has("svc/a/1") || !recB[i].has("svc/b/1") || !lateA[i].has("svc/a/1") {
				return false
			}
		}
		return true
	})
	for i := range n {
		for _, c := range []struct {
			name, prefix string
			r            *recorder
		}{{"A", "svc/a/", recA[i]}, {"B", "svc/b/", recB[i]}, {"late A", "svc/a/", lateA[i]}} {
			keys, errs, closed := c.r.snapshot()
			for _, k := range keys {
				if len(k) < len(c.prefix) || k[:len(c.prefix)] != c.prefix {
					t.Errorf("client %d: watcher %s of %s got %s (all: %v)", i, c.name, c.prefix, k, keys)
				}
			}
			if len(keys) != 1 || len(errs) > 0 || closed {
				t.Errorf("client %d: watcher %s: events %v, errors %v, closed %v; want exactly one event", i, c.name, keys, errs, closed)
			}
		}
	}
	if got := etcdtest.StableWatcherCount(t) - before; got != 2 {
		t.Errorf("etcd watchers after the restart: %v more than before the clients, want 2", got)
	}
}

// TestWatchAfterCompactedWatch: a watch that fails with ErrCompacted does
// not leave a dead shared watch behind that later watchers of the range
// join and then hear nothing from (etcd-io/etcd#21813).
func TestWatchAfterCompactedWatch(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)

	var rev int64
	for i := range 3 {
		resp, err := direct.Put(ctx, fmt.Sprint("svc/d/", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := direct.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	// Concurrently, so that some join while others are being compacted.
	clis := proxyClients(t, tp.addr, 20)
	old := make([]*recorder, len(clis))
	for i, cli := range clis {
		old[i] = record(cli.Watch(ctx, "svc/d/", clientv3.WithPrefix(), clientv3.WithRev(1)))
	}
	waitAll(t, 10*time.Second, "watches from revision 1 after the compaction get ErrCompacted", old, (*recorder).compacted)
	recs := make([]*recorder, len(clis))
	for i, cli := range clis {
		recs[i] = record(cli.Watch(ctx, "svc/d/", clientv3.WithPrefix(), clientv3.WithRev(rev+1)))
	}
	if _, err := direct.Put(ctx, "svc/d/new", "x"); err != nil {
		t.Fatal(err)
	}
	waitAll(t, 10*time.Second, "watchers opened after the compaction get the next put", recs, func(r *recorder) bool {
		return r.has("svc/d/new")
	})
}
