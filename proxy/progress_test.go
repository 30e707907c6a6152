package proxy

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/faultproxy"
	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/internal/testx"
)

func skipEtcdWatch(t *testing.T) {
	t.Helper()
	if etcdWatch() {
		t.Skip("progress requests are Muster's watch proxy's")
	}
}

// nextResponse returns the next response of wch within d, or false.
func nextResponse(t *testing.T, wch clientv3.WatchChan, d time.Duration) (clientv3.WatchResponse, bool) {
	t.Helper()
	select {
	case resp, ok := <-wch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		if err := resp.Err(); err != nil {
			t.Fatalf("watch: %v", err)
		}
		return resp, true
	case <-time.After(d):
		return clientv3.WatchResponse{}, false
	}
}

// waitProgress waits up to d for a progress notification on wch, failing on
// events; it returns the notification's revision, or 0.
func waitProgress(t *testing.T, wch clientv3.WatchChan, d time.Duration) int64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		resp, ok := nextResponse(t, wch, time.Until(deadline))
		if !ok {
			return 0
		}
		if resp.IsProgressNotify() {
			return resp.Header.Revision
		}
		t.Fatalf("unexpected response while waiting for progress: %+v", resp)
	}
}

// TestProgressRequestThroughProxy: a client's RequestProgress through the
// proxy is answered on every watcher of its stream (a shared watch, and one
// that started behind and caught up on a private upstream watch), with a
// revision at or after the last event each got; and again after more
// writes.
func TestProgressRequestThroughProxy(t *testing.T) {
	skipEtcdWatch(t)
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	cli := proxyClient(t, tp.addr)
	ctx := testx.Context(t, 30*time.Second)

	first, err := direct.Put(ctx, "svc/prog/b/0", "x")
	if err != nil {
		t.Fatal(err)
	}
	wa := watch(t, ctx, cli, "svc/prog/a/", clientv3.WithPrefix())
	put, err := direct.Put(ctx, "svc/prog/a/1", "x")
	if err != nil {
		t.Fatal(err)
	}
	if resp, ok := nextResponse(t, wa, 10*time.Second); !ok || len(resp.Events) != 1 {
		t.Fatalf("watcher a: %+v, %v; want the put", resp, ok)
	}
	// From an old revision: a private upstream watch replays the put.
	wb := watch(t, ctx, cli, "svc/prog/b/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
	if resp, ok := nextResponse(t, wb, 10*time.Second); !ok || len(resp.Events) != 1 {
		t.Fatalf("watcher b: %+v, %v; want the replayed put", resp, ok)
	}

	for round := range 2 {
		if err := cli.RequestProgress(ctx); err != nil {
			t.Fatal(err)
		}
		for name, wch := range map[string]clientv3.WatchChan{"a": wa, "b": wb} {
			rev := waitProgress(t, wch, 5*time.Second)
			if rev < put.Header.Revision {
				t.Fatalf("round %d: watcher %s: progress revision %d, want >= %d", round, name, rev, put.Header.Revision)
			}
		}
		// Writes elsewhere: the next answer covers them.
		if put, err = direct.Put(ctx, "svc/prog/c", "x"); err != nil {
			t.Fatal(err)
		}
	}
	// And an event still arrives after the progress notifications.
	if _, err := direct.Put(ctx, "svc/prog/a/2", "x"); err != nil {
		t.Fatal(err)
	}
	if resp, ok := nextResponse(t, wa, 10*time.Second); !ok || len(resp.Events) != 1 || string(resp.Events[0].Kv.Key) != "svc/prog/a/2" {
		t.Fatalf("watcher a after progress: %+v, %v", resp, ok)
	}
}

// TestDiscoveryIdleThroughProxy: Muster's resolver asks for progress after
// a second without messages and restarts its watch when no answer comes
// within two; through the proxy an idle subscription keeps its watch, and
// still gets the next endpoint.
func TestDiscoveryIdleThroughProxy(t *testing.T) {
	skipEtcdWatch(t)
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	cli := proxyClient(t, tp.addr)
	ctx := testx.Context(t, 30*time.Second)

	reg := prometheus.NewRegistry()
	sub, err := discovery.Subscribe(cli, "idle", discovery.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	testx.Eventually(t, 10*time.Second, "the subscription is healthy", func() bool {
		st := sub.Current()
		return st.Err == nil && st.Snapshot.Revision > 0
	})
	restarts := func() float64 { return testx.Metric(t, reg, "muster_discovery_watch_restarts_total") }
	before := restarts()
	time.Sleep(6500 * time.Millisecond)
	if n := restarts() - before; n != 0 {
		t.Fatalf("the idle watch through the proxy restarted %v times in 6.5s", n)
	}
	if st := sub.Current(); st.Err != nil {
		t.Fatalf("subscription error after idling: %v", st.Err)
	}
	k, v, err := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: "idle", Addr: "127.0.0.1:1234"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Put(ctx, k, string(v)); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "the endpoint reaches the subscriber", func() bool {
		return len(sub.Current().Snapshot.Endpoints) == 1
	})
	if n := restarts() - before; n != 0 {
		t.Fatalf("the watch through the proxy restarted %v times", n)
	}
}

// TestProgressNotAnsweredWhenEtcdUnreachable: with the path from the proxy
// to etcd blackholed, a client's progress request gets no answer (the
// proxy does not answer from its own state, so the client's stall
// detection works through it); once the path is back, it does.
func TestProgressNotAnsweredWhenEtcdUnreachable(t *testing.T) {
	skipEtcdWatch(t)
	m := etcdtest.Single(t)
	direct := m.Client(t)
	fp, err := faultproxy.New(m.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fp.Close() })
	up, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{fp.Addr()},
		DialTimeout: 5 * time.Second,
		DialOptions: append(etcdclient.DialOptions(), DialOptions()...),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = up.Close() })
	tp := startProxy(t, up, "")
	cli := proxyClient(t, tp.addr)
	ctx := testx.Context(t, 30*time.Second)

	wch := watch(t, ctx, cli, "svc/dark/", clientv3.WithPrefix())
	if _, err := direct.Put(ctx, "svc/dark/1", "x"); err != nil {
		t.Fatal(err)
	}
	if resp, ok := nextResponse(t, wch, 10*time.Second); !ok || len(resp.Events) != 1 {
		t.Fatalf("watch: %+v, %v; want the put", resp, ok)
	}
	// Answered while etcd is reachable.
	if err := cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	if rev := waitProgress(t, wch, 5*time.Second); rev == 0 {
		t.Fatal("no progress notification with etcd reachable")
	}

	fp.SetMode(faultproxy.Blackhole())
	if err := cli.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	if rev := waitProgress(t, wch, 2*time.Second); rev != 0 {
		t.Fatalf("progress notification (revision %d) with etcd unreachable", rev)
	}

	fp.SetMode(faultproxy.Pass())
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := cli.RequestProgress(ctx); err != nil {
			t.Fatal(err)
		}
		if rev := waitProgress(t, wch, time.Second); rev != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no progress notification after etcd came back")
		}
	}
}
