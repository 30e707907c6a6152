package proxy

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// TestAuthThroughProxy: with etcd authentication on, a client
// authenticates through the proxy (which has no user of its own) and reads,
// writes, watches and keeps a lease alive with its own token; a client
// without credentials is refused.
func TestAuthThroughProxy(t *testing.T) {
	m := etcdtest.Single(t, etcdtest.WithAuth("alice", "pw"))
	user, pass, _ := m.Auth()
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)

	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{tp.addr}, Username: user, Password: pass,
		DialTimeout: 5 * time.Second, DialOptions: etcdclient.DialOptions(), Logger: zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	rec := record(watch(t, ctx, cli, "svc/auth/", clientv3.WithPrefix()))
	lease, err := cli.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r, ok := <-ka:
		if !ok || r.TTL <= 0 {
			t.Fatalf("keepalive through the proxy: %+v %v", r, ok)
		}
	case <-ctx.Done():
		t.Fatal("no keepalive response")
	}
	if _, err := cli.Put(ctx, "svc/auth/1", "x", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if resp, err := cli.Get(ctx, "svc/auth/1", clientv3.WithSerializable()); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get: %v %v", resp, err)
	}
	testx.Eventually(t, 10*time.Second, "the watcher sees the put", func() bool { return rec.has("svc/auth/1") })

	anon := proxyClient(t, tp.addr)
	if _, err := anon.Get(ctx, "svc/auth/1"); err == nil {
		t.Error("a client without credentials read through the proxy")
	}
	if _, err := anon.Put(ctx, "svc/auth/2", "x"); err == nil {
		t.Error("a client without credentials wrote through the proxy")
	}
	wr := <-anon.Watch(ctx, "svc/auth/", clientv3.WithPrefix())
	if wr.Err() == nil {
		t.Errorf("a client without credentials watched through the proxy: %+v", wr)
	}
}

// TestLeaseExpiresOneTTLAfterLastKeepAlive: a lease kept alive through the
// proxy expires about one TTL after the last keepalive, not up to two
// (etcd-io/etcd#13031: up to 2 x TTL through etcd's lease proxy).
func TestLeaseExpiresOneTTLAfterLastKeepAlive(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)
	cli := proxyClient(t, tp.addr)

	const ttl = 3
	lease, err := cli.Grant(ctx, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "svc/lease/1", "x", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	gone := direct.Watch(ctx, "svc/lease/1")
	kctx, stop := context.WithCancel(ctx)
	ka, err := cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for range 3 { // the first one at once, then every TTL/3
		if _, ok := <-ka; !ok {
			t.Fatal("keepalive channel closed")
		}
		last = time.Now()
	}
	stop()
	for wr := range gone {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				if d := time.Since(last); d > ttl*time.Second+1500*time.Millisecond {
					t.Fatalf("the lease's key left %v after the last keepalive; TTL %ds", d, ttl)
				} else {
					t.Logf("the lease's key left %v after the last keepalive; TTL %ds", d, ttl)
				}
				return
			}
		}
	}
	t.Fatal("watch ended before the key left")
}
