package kratos_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

type nextResult struct {
	list []*registry.ServiceInstance
	err  error
}

// nextAsync calls w.Next in a goroutine and hands its result over.
func nextAsync(w registry.Watcher) <-chan nextResult {
	ch := make(chan nextResult, 1)
	go func() {
		list, err := w.Next()
		ch <- nextResult{list, err}
	}()
	return ch
}

// expectIDs waits for a pending Next and checks it returned the instances
// with ids.
func expectIDs(t *testing.T, ch <-chan nextResult, ids ...string) {
	t.Helper()
	select {
	case r := <-ch:
		var got []string
		for _, si := range r.list {
			got = append(got, si.ID)
		}
		slices.Sort(got)
		slices.Sort(ids)
		if r.err != nil || !slices.Equal(got, ids) {
			t.Fatalf("Next = %v, %v; want %v", got, r.err, ids)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("Next did not return; want %v", ids)
	}
}

// expectPending checks that a pending Next does not return within d: a
// bounded wait for something that must not happen.
func expectPending(t *testing.T, ch <-chan nextResult, d time.Duration, why string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s: Next returned %d instances, %v", why, len(r.list), r.err)
	case <-time.After(d):
	}
}

func instance(id string, port string) *registry.ServiceInstance {
	return &registry.ServiceInstance{ID: id, Name: "order", Endpoints: []string{"grpc://127.0.0.1:" + port}}
}

// TestWatcherContract checks the Watcher against what Kratos's resolvers
// expect of registry.Watcher, and against Muster's behaviour: the first
// Next waits while the service has no instance and returns the instances
// at once when it has some; later calls return on a change; values that
// are malformed, the last instance leaving, and an etcd outage never make
// Next return an empty list; after the outage the watcher follows changes
// again (no re-list per change: a change arrives through the shared
// watch); Stop makes a pending and every later Next return
// context.Canceled, and so does the end of Watch's context.
func TestWatcherContract(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := ctxT(t, 60*time.Second)
	server := newRegistry(t, cli)
	client := newRegistry(t, cli)

	w, err := client.Watch(ctx, "order")
	if err != nil {
		t.Fatal(err)
	}
	next := nextAsync(w)
	expectPending(t, next, 300*time.Millisecond, "no instance yet")
	if err := server.Register(ctx, instance("a", "9001")); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, next, "a")

	// A malformed value beside a good one changes nothing.
	next = nextAsync(w)
	if _, err := cli.Put(ctx, "services/order/bad", `{"Addr":`); err != nil {
		t.Fatal(err)
	}
	expectPending(t, next, 300*time.Millisecond, "a malformed value")
	// The last good instance leaves: no empty list.
	if err := server.Deregister(ctx, instance("a", "9001")); err != nil {
		t.Fatal(err)
	}
	expectPending(t, next, 300*time.Millisecond, "no good instance left")
	if err := server.Register(ctx, instance("b", "9002")); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, next, "b")

	// A first Next with instances there returns at once.
	w2, err := client.Watch(ctx, "order")
	if err != nil {
		t.Fatal(err)
	}
	expectIDs(t, nextAsync(w2), "b")
	if err := w2.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Next(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after Stop: %v, want context.Canceled", err)
	}

	// etcd down: Next waits, GetService answers with the last snapshot.
	sub, err := discovery.Subscribe(cli, "order")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	next = nextAsync(w)
	m.Stop()
	testx.Eventually(t, 15*time.Second, "the watcher to notice etcd is down", func() bool { return sub.Current().Err != nil })
	expectPending(t, next, 300*time.Millisecond, "etcd down")
	if got, err := client.GetService(ctx, "order"); err != nil || len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("GetService while etcd is down = %v, %v; want b", got, err)
	}
	m.Restart()
	if err := server.Register(ctx, instance("c", "9003")); err != nil {
		t.Fatal(err)
	}
	expectIDs(t, next, "b", "c")

	// Stop unblocks a pending Next.
	next = nextAsync(w)
	expectPending(t, next, 100*time.Millisecond, "nothing changed")
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-next:
		if !errors.Is(r.err, context.Canceled) || r.list != nil {
			t.Fatalf("Next after Stop = %v, %v; want context.Canceled", r.list, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not unblock Next")
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}

	// The end of Watch's context ends the watcher too.
	wctx, cancel := context.WithCancel(ctx)
	w3, err := client.Watch(wctx, "order")
	if err != nil {
		t.Fatal(err)
	}
	expectIDs(t, nextAsync(w3), "b", "c")
	next = nextAsync(w3)
	cancel()
	select {
	case r := <-next:
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("Next after cancel: %v", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the end of the context did not unblock Next")
	}
}

// TestWatchersShareOneEtcdWatch: ten Kratos watchers and GetService of one
// service cost etcd one watch, as Muster's resolvers do.
func TestWatchersShareOneEtcdWatch(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := ctxT(t, 30*time.Second)
	server := newRegistry(t, cli)
	if err := server.Register(ctx, instance("a", "9001")); err != nil {
		t.Fatal(err)
	}
	before := etcdtest.StableWatcherCount(t)
	client := newRegistry(t, cli)
	for range 10 {
		w, err := client.Watch(ctx, "order")
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		expectIDs(t, nextAsync(w), "a")
		if got, err := client.GetService(ctx, "order"); err != nil || len(got) != 1 {
			t.Fatalf("GetService = %v, %v", got, err)
		}
	}
	if got := etcdtest.StableWatcherCount(t) - before; got != 1 {
		t.Fatalf("%v etcd watchers for 10 Kratos watchers, want 1", got)
	}
}
