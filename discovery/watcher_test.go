package discovery

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/mustersd/muster/endpoint"
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

func put(t *testing.T, cli *clientv3.Client, service, addr string, weight int) int64 {
	t.Helper()
	k, v, err := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: service, Addr: addr, Weight: weight}, 0)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Put(ctxT(t, 10*time.Second), k, string(v))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func del(t *testing.T, cli *clientv3.Client, service, addr string) int64 {
	t.Helper()
	resp, err := cli.Delete(ctxT(t, 10*time.Second), "services/"+service+"/"+addr)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func addrs(s Snapshot) string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.Addr)
	}
	return strings.Join(out, ",")
}

// waitState reads states from sub until cond holds or d passes.
func waitState(t *testing.T, sub *Subscription, d time.Duration, what string, cond func(State) bool) State {
	t.Helper()
	timeout := time.After(d)
	last := sub.Current()
	if cond(last) {
		return last
	}
	for {
		select {
		case st, ok := <-sub.Updates():
			if !ok {
				t.Fatalf("updates closed waiting for %s", what)
			}
			last = st
			if cond(st) {
				return st
			}
		case <-timeout:
			t.Fatalf("after %v: %s; last state: rev %d [%s] err %v", d, what, last.Snapshot.Revision, addrs(last.Snapshot), last.Err)
		}
	}
}

func subscribeT(t *testing.T, cli *clientv3.Client, service string, opts ...Option) *Subscription {
	t.Helper()
	sub, err := Subscribe(cli, service, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	return sub
}

func TestListThenWatch(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	put(t, cli, "order", "127.0.0.1:1", 0)
	put(t, cli, "order", "127.0.0.1:2", 0)
	put(t, cli, "order-v2", "127.0.0.1:9", 0) // must not be seen: prefixes end in '/'
	sub := subscribeT(t, cli, "order")
	first := waitState(t, sub, 5*time.Second, "first snapshot", func(s State) bool { return s.Snapshot.Revision != 0 })
	if got := addrs(first.Snapshot); got != "127.0.0.1:1,127.0.0.1:2" {
		t.Fatalf("first snapshot = %s", got)
	}
	rev := put(t, cli, "order", "127.0.0.1:3", 0)
	st := waitState(t, sub, 5*time.Second, "added endpoint", func(s State) bool { return s.Snapshot.Revision == rev })
	if got := addrs(st.Snapshot); got != "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3" {
		t.Fatalf("after add = %s", got)
	}
	ch := Diff(first.Snapshot, st.Snapshot)
	if len(ch) != 1 || ch[0].Kind != "added" || ch[0].Endpoint.Addr != "127.0.0.1:3" {
		t.Fatalf("Diff = %+v", ch)
	}
	del(t, cli, "order", "127.0.0.1:1")
	rev = put(t, cli, "order", "127.0.0.1:2", 7)
	st2 := waitState(t, sub, 5*time.Second, "remove and update", func(s State) bool { return s.Snapshot.Revision == rev })
	if got := addrs(st2.Snapshot); got != "127.0.0.1:2,127.0.0.1:3" {
		t.Fatalf("after remove = %s", got)
	}
	ch = Diff(st.Snapshot, st2.Snapshot)
	if len(ch) != 2 || ch[0].Kind != "removed" || ch[1].Kind != "updated" || ch[1].Endpoint.Weight != 7 {
		t.Fatalf("Diff = %+v", ch)
	}
}

// A burst of events in one transaction is one snapshot, and a write that
// changes nothing is not published.
func TestBurstIsOneSnapshotAndNoDuplicates(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	sub := subscribeT(t, cli, "burst")
	waitState(t, sub, 5*time.Second, "first snapshot", func(s State) bool { return s.Snapshot.Revision != 0 })
	var ops []clientv3.Op
	for i := 1; i <= 20; i++ {
		k, v, _ := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: "burst", Addr: fmt.Sprintf("127.0.0.1:%d", i)}, 0)
		ops = append(ops, clientv3.OpPut(k, string(v)))
	}
	resp, err := cli.Txn(ctxT(t, 5*time.Second)).Then(ops...).Commit()
	if err != nil {
		t.Fatal(err)
	}
	st := <-sub.Updates()
	if st.Snapshot.Revision != resp.Header.Revision || len(st.Snapshot.Endpoints) != 20 {
		t.Fatalf("burst gave rev %d with %d endpoints, want rev %d with 20", st.Snapshot.Revision, len(st.Snapshot.Endpoints), resp.Header.Revision)
	}
	// Rewrite the same value, then make a real change: the next state
	// seen must be the real change.
	put(t, cli, "burst", "127.0.0.1:1", 0)
	rev := put(t, cli, "burst", "127.0.0.1:99", 0)
	st = <-sub.Updates()
	if st.Snapshot.Revision != rev {
		t.Fatalf("published rev %d, want %d (identical snapshot published?)", st.Snapshot.Revision, rev)
	}
}

func TestMalformedValuesSkipped(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	reg := prometheus.NewRegistry()
	put(t, cli, "mixed", "127.0.0.1:1", 0)
	for k, v := range map[string]string{
		"services/mixed/garbage":  "\x00\xff not json",
		"services/mixed/noaddr":   `{"Metadata":{}}`,
		"services/mixed/badport":  `{"Addr":"127.0.0.1:0"}`,
		"services/mixed/badwght":  `{"Addr":"127.0.0.1:5","Metadata":{"weight":-3}}`,
		"services/mixed/":         `{"Addr":"127.0.0.1:6"}`,
		"services/mixed/hugejson": `{"Addr":"` + strings.Repeat("9", 100000) + `"}`,
	} {
		if _, err := cli.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	sub := subscribeT(t, cli, "mixed", WithRegisterer(reg))
	st := waitState(t, sub, 5*time.Second, "snapshot", func(s State) bool { return s.Snapshot.Revision != 0 })
	if got := addrs(st.Snapshot); got != "127.0.0.1:1" || st.Snapshot.Skipped != 6 {
		t.Fatalf("snapshot = [%s] skipped %d; want [127.0.0.1:1] skipped 6", got, st.Snapshot.Skipped)
	}
	prefix := "services/mixed/"
	if got := testutil.ToFloat64(metricMalformed.WithLabelValues(prefix)); got != 6 {
		t.Fatalf("malformed counter = %v, want 6", got)
	}
	// A good endpoint turning bad leaves; the others stay.
	put(t, cli, "mixed", "127.0.0.1:2", 0)
	resp, err := cli.Put(ctxT(t, 5*time.Second), "services/mixed/127.0.0.1:2", "oops")
	if err != nil {
		t.Fatal(err)
	}
	st = waitState(t, sub, 5*time.Second, "bad update", func(s State) bool { return s.Snapshot.Revision >= resp.Header.Revision })
	if got := addrs(st.Snapshot); got != "127.0.0.1:1" || st.Snapshot.Skipped != 7 {
		t.Fatalf("snapshot = [%s] skipped %d", got, st.Snapshot.Skipped)
	}
	if n, err := testutil.GatherAndCount(reg, "muster_discovery_malformed_values_total"); err != nil || n == 0 {
		t.Fatalf("metric not exported through the registerer: %d, %v", n, err)
	}
}

// Subscriptions to one prefix through one client share one etcd watch.
func TestSubscriptionsShareOneWatch(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	before := etcdtest.StableWatcherCount(t)
	subs := make([]*Subscription, 100)
	for i := range subs {
		subs[i] = subscribeT(t, cli, "shared")
	}
	rev := put(t, cli, "shared", "127.0.0.1:1", 0)
	for _, s := range subs {
		waitState(t, s, 5*time.Second, "update", func(st State) bool { return st.Snapshot.Revision == rev })
	}
	if got := etcdtest.StableWatcherCount(t) - before; got != 1 {
		t.Fatalf("etcd watchers = %v for 100 subscriptions, want 1", got)
	}
	if subs[0].Watcher() != subs[99].Watcher() {
		t.Fatal("subscriptions do not share a watcher")
	}
	for _, s := range subs {
		s.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for etcdtest.WatcherCount(t) != before {
		if time.Now().After(deadline) {
			t.Fatalf("etcd watcher not released after the last subscription closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// While etcd is down the last snapshot stays, with an error beside it; after
// etcd returns the error clears and changes flow again.
func TestEtcdDownKeepsSnapshot(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	put(t, cli, "steady", "127.0.0.1:1", 0)
	sub := subscribeT(t, cli, "steady")
	waitState(t, sub, 5*time.Second, "snapshot", func(s State) bool { return len(s.Snapshot.Endpoints) == 1 })
	m.Stop()
	st := waitState(t, sub, 10*time.Second, "error reported", func(s State) bool { return s.Err != nil })
	if !errors.Is(st.Err, ErrUnreachable) || len(st.Snapshot.Endpoints) != 1 {
		t.Fatalf("while down: err %v, %d endpoints; want ErrUnreachable with 1 endpoint", st.Err, len(st.Snapshot.Endpoints))
	}
	m.Restart()
	back := time.Now()
	waitState(t, sub, 10*time.Second, "error cleared", func(s State) bool { return s.Err == nil })
	t.Logf("healthy again %v after etcd returned", time.Since(back))
	rev := put(t, cli, "steady", "127.0.0.1:2", 0)
	waitState(t, sub, 5*time.Second, "change after return", func(s State) bool { return s.Snapshot.Revision >= rev && len(s.Snapshot.Endpoints) == 2 })
	t.Logf("change delivered %v after etcd returned", time.Since(back))
}

// The scenario that stops etcd's own resolver for good: the client's only
// member is down while the set changes and etcd compacts.
func TestCompactionWhilePinnedMemberDown(t *testing.T) {
	c := etcdtest.Cluster(t, 3)
	members := c.Members()
	a, b := members[0], members[1]
	cliA := a.Client(t)
	cliB := b.Client(t)
	put(t, cliB, "pinned", "127.0.0.1:1", 0)
	put(t, cliB, "pinned", "127.0.0.1:2", 0)
	sub := subscribeT(t, cliA, "pinned")
	waitState(t, sub, 10*time.Second, "snapshot", func(s State) bool { return len(s.Snapshot.Endpoints) == 2 })
	a.Stop()
	c.WaitLeader(t)
	put(t, cliB, "pinned", "127.0.0.1:3", 0)
	del(t, cliB, "pinned", "127.0.0.1:1")
	for i := 0; i < 10; i++ { // unrelated churn, so the compaction has something to drop
		put(t, cliB, "other", fmt.Sprintf("127.0.0.1:%d", 100+i), 0)
	}
	rev := put(t, cliB, "other", "127.0.0.1:99", 0)
	if _, err := cliB.Compact(ctxT(t, 10*time.Second), rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	a.Restart()
	st := waitState(t, sub, 15*time.Second, "converged to the new set", func(s State) bool {
		return addrs(s.Snapshot) == "127.0.0.1:2,127.0.0.1:3" && s.Err == nil
	})
	if got := testutil.ToFloat64(metricRestarts.WithLabelValues("services/pinned/")); got < 1 {
		t.Fatalf("watch restarts = %v, want >= 1 (the compaction must have broken the watch)", got)
	}
	_ = st
}

// Leader loss while changes keep coming: the watcher ends equal to etcd and
// its revisions only move forward.
func TestLeaderLossMissesNoEvent(t *testing.T) {
	c := etcdtest.Cluster(t, 3)
	cli := c.Client(t)
	writer := c.Client(t)
	sub := subscribeT(t, cli, "churn")
	waitState(t, sub, 10*time.Second, "snapshot", func(s State) bool { return s.Snapshot.Revision != 0 })

	var (
		mu   sync.Mutex
		revs []int64
		last State
	)
	stopRead := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			select {
			case st := <-sub.Updates():
				mu.Lock()
				revs = append(revs, st.Snapshot.Revision)
				last = st
				mu.Unlock()
			case <-stopRead:
				return
			}
		}
	}()
	want := map[string]bool{}
	write := func(i int) {
		addr := fmt.Sprintf("127.0.0.1:%d", 1000+i%40)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if i%3 == 2 {
			if _, err := writer.Delete(ctx, "services/churn/"+addr); err == nil {
				delete(want, addr)
			} else {
				t.Errorf("delete: %v", err)
			}
			return
		}
		k, v, _ := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: "churn", Addr: addr}, 0)
		if _, err := writer.Put(ctx, k, string(v)); err == nil {
			want[addr] = true
		} else {
			t.Errorf("put: %v", err)
		}
	}
	for i := 0; i < 60; i++ {
		write(i)
	}
	leader := c.WaitLeader(t)
	leader.Stop()
	for i := 60; i < 120; i++ {
		write(i)
	}
	leader.Restart()
	for i := 120; i < 150; i++ {
		write(i)
	}
	resp, err := writer.Get(ctxT(t, 10*time.Second), "services/churn/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if int(resp.Count) != len(want) {
		t.Fatalf("etcd holds %d keys, the writer expected %d", resp.Count, len(want))
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		st := last
		mu.Unlock()
		if st.Snapshot.Revision >= resp.Header.Revision {
			if len(st.Snapshot.Endpoints) != len(want) {
				t.Fatalf("watcher has %d endpoints at rev %d, etcd %d", len(st.Snapshot.Endpoints), st.Snapshot.Revision, len(want))
			}
			for _, e := range st.Snapshot.Endpoints {
				if !want[e.Addr] {
					t.Fatalf("watcher has %s, which etcd does not", e.Addr)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher stuck at rev %d, etcd at %d", st.Snapshot.Revision, resp.Header.Revision)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stopRead)
	<-readDone
	for i := 1; i < len(revs); i++ {
		if revs[i] < revs[i-1] {
			t.Fatalf("revision went back: %d after %d", revs[i], revs[i-1])
		}
	}
}

func TestSubscribeErrors(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	for _, tt := range []struct {
		service string
		opts    []Option
		want    string
	}{
		{"", nil, "service: empty"},
		{"a/b", nil, "contains '/'"},
		{"ok", []Option{WithFormat("zookeeper")}, `unknown format "zookeeper"`},
		{"ok", []Option{WithNamespace("bad ns")}, "namespace"},
	} {
		if _, err := Subscribe(cli, tt.service, tt.opts...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Subscribe(%q) = %v, want error containing %q", tt.service, err, tt.want)
		}
	}
}

func TestSubscribeAll(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	put(t, cli, "a", "127.0.0.1:1", 0)
	put(t, cli, "b", "127.0.0.1:2", 0)
	if _, err := cli.Put(ctxT(t, 5*time.Second), "services/nokey", "x"); err != nil {
		t.Fatal(err)
	}
	sub, err := SubscribeAll(cli)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := waitState(t, sub, 5*time.Second, "snapshot", func(s State) bool { return s.Snapshot.Revision != 0 })
	if len(st.Snapshot.Endpoints) != 2 || st.Snapshot.Endpoints[0].Service != "a" || st.Snapshot.Endpoints[1].Service != "b" || st.Snapshot.Skipped != 1 {
		t.Fatalf("snapshot %+v", st.Snapshot)
	}
}
