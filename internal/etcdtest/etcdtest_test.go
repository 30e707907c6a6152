package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, IgnoreLeaks()...)
}

const waitTimeout = 15 * time.Second

// eventually retries f until it returns nil or waitTimeout passes.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, waitTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func getValue(ctx context.Context, c *clientv3.Client, key string, opts ...clientv3.OpOption) (string, error) {
	resp, err := c.Get(ctx, key, opts...)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) != 1 {
		return "", fmt.Errorf("get %q: %d kvs", key, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value), nil
}

func TestSinglePutGet(t *testing.T) {
	start := time.Now()
	m := Single(t)
	t.Logf("Single started in %v", time.Since(start))

	if !m.Running() || m.Server() == nil || m.Name() == "" {
		t.Fatalf("Running=%v Server=%v Name=%q", m.Running(), m.Server(), m.Name())
	}
	eps := m.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("Endpoints = %v", eps)
	}
	if host, _, err := net.SplitHostPort(eps[0]); err != nil || host != "127.0.0.1" {
		t.Fatalf("endpoint %q: host %q err %v", eps[0], host, err)
	}

	c := m.Client(t)
	if _, err := c.Put(ctxTimeout(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	v, err := getValue(ctxTimeout(t, 5*time.Second), c, "k")
	if err != nil || v != "v" {
		t.Fatalf("get = %q, %v", v, err)
	}
}

func TestSingleStopRestart(t *testing.T) {
	m := Single(t)
	c := m.Client(t)
	if _, err := c.Put(ctxTimeout(t, 5*time.Second), "k", "before-stop"); err != nil {
		t.Fatal(err)
	}
	eps := m.Endpoints()

	m.Stop()
	m.Stop() // second Stop is a no-op
	if m.Running() || m.Server() != nil {
		t.Fatal("member still reported running after Stop")
	}
	if conn, err := net.DialTimeout("tcp", eps[0], time.Second); err == nil {
		conn.Close()
		t.Fatalf("client port %s still accepts connections after Stop", eps[0])
	}
	_, err := c.Get(ctxTimeout(t, 300*time.Millisecond), "k")
	if err == nil {
		t.Fatal("Get succeeded on a stopped member")
	}

	start := time.Now()
	m.Restart()
	t.Logf("Restart took %v", time.Since(start))
	if !m.Running() {
		t.Fatal("not running after Restart")
	}
	if got := m.Endpoints(); got[0] != eps[0] {
		t.Fatalf("endpoint changed across restart: %v -> %v", eps, got)
	}
	// The old client reconnects by itself.
	eventually(t, "get after restart", func() error {
		v, err := getValue(ctxTimeout(t, time.Second), c, "k")
		if err != nil {
			return err
		}
		if v != "before-stop" {
			return fmt.Errorf("value %q", v)
		}
		return nil
	})
	// Restarting a running member works too.
	m.Restart()
	if v, err := getValue(ctxTimeout(t, 5*time.Second), m.Client(t), "k"); err != nil || v != "before-stop" {
		t.Fatalf("get after second restart = %q, %v", v, err)
	}
}

func TestClusterFailover(t *testing.T) {
	start := time.Now()
	c := Cluster(t, 3)
	t.Logf("Cluster(3) started in %v", time.Since(start))
	if n := len(c.Members()); n != 3 {
		t.Fatalf("%d members", n)
	}
	if n := len(c.Endpoints()); n != 3 {
		t.Fatalf("%d endpoints", n)
	}
	cli := c.Client(t)
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), "a", "1"); err != nil {
		t.Fatal(err)
	}

	old := c.Leader()
	start = time.Now()
	old.Stop()
	nl := c.Leader()
	t.Logf("leader %s stopped; %s leads after %v", old.Name(), nl.Name(), time.Since(start))
	if nl == old || !nl.Running() {
		t.Fatalf("new leader %s (running %v), old %s", nl.Name(), nl.Running(), old.Name())
	}

	var survivor *Member
	for _, m := range c.Members() {
		if m != old && m != nl {
			survivor = m
		}
	}
	sc := survivor.Client(t)
	eventually(t, "put via surviving follower", func() error {
		_, err := sc.Put(ctxTimeout(t, time.Second), "b", "2")
		return err
	})

	old.Restart()
	if c.WaitLeader(t) == nil {
		t.Fatal("no leader")
	}
	oc := old.Client(t)
	eventually(t, "restarted member catches up", func() error {
		v, err := getValue(ctxTimeout(t, time.Second), oc, "b", clientv3.WithSerializable())
		if err != nil {
			return err
		}
		if v != "2" {
			return fmt.Errorf("value %q", v)
		}
		return nil
	})
}

func TestClusterRestartAll(t *testing.T) {
	c := Cluster(t, 3)
	cli := c.Client(t)
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.Stop()
	for _, m := range c.Members() {
		if m.Running() {
			t.Fatalf("%s still running", m.Name())
		}
	}
	c.Restart()
	c.WaitLeader(t)
	for _, m := range c.Members() {
		eventually(t, "get from "+m.Name(), func() error {
			v, err := getValue(ctxTimeout(t, time.Second), m.Client(t), "k", clientv3.WithSerializable())
			if err == nil && v != "v" {
				err = fmt.Errorf("value %q", v)
			}
			return err
		})
	}
}

func TestWatcherCount(t *testing.T) {
	m := Single(t)
	cli := m.Client(t)
	base := WatcherCount(t)
	baseStreams := WatchStreamCount(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := cli.Watch(ctx, "w", clientv3.WithCreatedNotify())
	if resp, ok := <-wch; !ok || !resp.Created {
		t.Fatalf("watch not created: %v %+v", ok, resp)
	}
	eventually(t, "watcher gauge +1", func() error {
		if got := WatcherCount(t); got != base+1 {
			return fmt.Errorf("watchers %v, want %v", got, base+1)
		}
		return nil
	})
	if got := WatchStreamCount(t); got < baseStreams+1 {
		t.Fatalf("watch streams %v, want >= %v", got, baseStreams+1)
	}

	cancel()
	for range wch { // drain until the client closes the channel
	}
	eventually(t, "watcher gauge back", func() error {
		if got := WatcherCount(t); got != base {
			return fmt.Errorf("watchers %v, want %v", got, base)
		}
		return nil
	})
}

func TestWithConfigAutoTLS(t *testing.T) {
	m := Single(t, WithConfig(func(cfg *embed.Config) {
		cfg.ClientAutoTLS = true
		for i := range cfg.ListenClientUrls {
			cfg.ListenClientUrls[i].Scheme = "https"
		}
		for i := range cfg.AdvertiseClientUrls {
			cfg.AdvertiseClientUrls[i].Scheme = "https"
		}
	}))
	c := m.Client(t)
	if _, err := c.Put(ctxTimeout(t, 5*time.Second), "k", "tls"); err != nil {
		t.Fatal(err)
	}
	m.Restart()
	if v, err := getValue(ctxTimeout(t, 5*time.Second), m.Client(t), "k"); err != nil || v != "tls" {
		t.Fatalf("get = %q, %v", v, err)
	}
}

func TestCandidatePortsAvoidEphemeralRange(t *testing.T) {
	lo, hi := candidateRange()
	elo, ehi := ephemeralRange()
	if lo < 1024 || hi > 65535 || lo >= hi {
		t.Fatalf("candidate range %d..%d", lo, hi)
	}
	if hi-lo >= minPortSpan && !(hi < elo || lo > ehi) {
		t.Fatalf("candidate range %d..%d overlaps ephemeral range %d..%d", lo, hi, elo, ehi)
	}
	ports, err := allocPorts(10)
	if err != nil {
		t.Fatal(err)
	}
	defer releasePorts(ports)
	seen := map[int]bool{}
	for _, p := range ports {
		if p < lo || p > hi || seen[p] {
			t.Fatalf("bad port %d in %v", p, ports)
		}
		seen[p] = true
	}
}

func TestIsAddrInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = net.Listen("tcp", l.Addr().String())
	if !isAddrInUse(err) {
		t.Fatalf("isAddrInUse(%v) = false", err)
	}
	if isAddrInUse(errors.New("other")) || isAddrInUse(nil) {
		t.Fatal("isAddrInUse true for unrelated error")
	}
}

// TestStartRetriesOnBusyPort makes the first port allocation hand out a port
// another listener holds, as if some process grabbed it between the probe
// and etcd's bind; the start must be retried on fresh ports.
func TestStartRetriesOnBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port

	calls := 0
	allocPortsFunc = func(n int) ([]int, error) {
		calls++
		ports, err := allocPorts(n)
		if err == nil && calls == 1 {
			releasePorts(ports[len(ports)-1:])
			ports[len(ports)-1] = busyPort // the last member's peer port
		}
		return ports, err
	}
	defer func() { allocPortsFunc = allocPorts }()

	c := Cluster(t, 3)
	if calls != 2 {
		t.Fatalf("port allocation called %d times, want 2 (one retry)", calls)
	}
	for _, m := range c.Members() {
		if m.peerPort == busyPort || m.clientPort == busyPort {
			t.Fatalf("%s uses the busy port %d", m.Name(), busyPort)
		}
	}
	c.WaitLeader(t)
}

// TestRestartWaitsForBusyPort: while another process holds a stopped
// member's client port, Restart keeps retrying the bind (bounded) and
// succeeds once the port is free again.
func TestRestartWaitsForBusyPort(t *testing.T) {
	m := Single(t)
	m.Stop()
	l, err := net.Listen("tcp", m.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	freed := make(chan struct{})
	time.AfterFunc(300*time.Millisecond, func() {
		l.Close()
		close(freed)
	})
	m.Restart()
	select {
	case <-freed:
	default:
		t.Fatal("Restart returned while its port was still held by another listener")
	}
	if _, err := m.Client(t).Put(ctxTimeout(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
}

// TestNoGoroutinesAfterCleanup checks, right after a test's cleanups ran,
// that nothing of etcd or its clients is left running, for the usage
// pattern other packages follow: goleak.VerifyNone registered with
// t.Cleanup before the members are started (cleanups run last-in
// first-out, so it runs after the members' cleanups).
func TestNoGoroutinesAfterCleanup(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
	}{{"single", 1}, {"cluster", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { goleak.VerifyNone(t, IgnoreLeaks()...) })
			c := Cluster(t, tc.n)
			cli := c.Client(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wch := cli.Watch(ctx, "k", clientv3.WithCreatedNotify())
			<-wch
			lease, err := cli.Grant(ctxTimeout(t, 5*time.Second), 5)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cli.KeepAlive(ctx, lease.ID); err != nil {
				t.Fatal(err)
			}
			old := c.Leader()
			old.Stop()
			if tc.n > 1 {
				c.Leader()
			}
			old.Restart()
			eventually(t, "put after restart", func() error {
				_, err := cli.Put(ctxTimeout(t, time.Second), "k", "v")
				return err
			})
		})
	}
}

// stopQuickly stops m and fails if that stalls on open client streams
// (embed's graceful shutdown would wait 5s+ for them).
func stopQuickly(t *testing.T, m *Member) {
	t.Helper()
	start := time.Now()
	m.Stop()
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("Stop of %s took %v", m.Name(), d)
	}
}

func expectEvent(t *testing.T, wch clientv3.WatchChan, key, value string) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				t.Fatalf("watch channel closed while waiting for %s=%s", key, value)
			}
			if err := resp.Err(); err != nil {
				t.Fatalf("watch error while waiting for %s=%s: %v", key, value, err)
			}
			for _, ev := range resp.Events {
				if string(ev.Kv.Key) == key && string(ev.Kv.Value) == value {
					return
				}
			}
		case <-timeout:
			t.Fatalf("no event %s=%s within %v", key, value, waitTimeout)
		}
	}
}

// TestWatchSurvivesStop: Stop cuts watch streams promptly (no graceful
// shutdown stall), and clients treat that like a lost connection: the watch
// resumes after Restart, or on another member of a cluster.
func TestWatchSurvivesStop(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		m := Single(t)
		cli := m.Client(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wch := cli.Watch(ctx, "w", clientv3.WithCreatedNotify(), clientv3.WithPrefix())
		<-wch
		lease, err := cli.Grant(ctxTimeout(t, 5*time.Second), 5)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.KeepAlive(ctx, lease.ID); err != nil {
			t.Fatal(err)
		}
		stopQuickly(t, m)
		m.Restart()
		if _, err := m.Client(t).Put(ctxTimeout(t, 5*time.Second), "w1", "after-restart"); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, wch, "w1", "after-restart")
	})
	t.Run("cluster", func(t *testing.T) {
		c := Cluster(t, 3)
		ms := c.Members()
		cli := c.Client(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		wch := cli.Watch(ctx, "w", clientv3.WithCreatedNotify(), clientv3.WithPrefix())
		<-wch
		// Whichever member serves the watch, one of these stops cuts it.
		for i, m := range ms {
			stopQuickly(t, m)
			other := ms[(i+1)%len(ms)]
			val := "after-stop-" + m.Name()
			oc := other.Client(t)
			eventually(t, "put via "+other.Name(), func() error {
				_, err := oc.Put(ctxTimeout(t, time.Second), "w1", val)
				return err
			})
			expectEvent(t, wch, "w1", val)
			m.Restart()
		}
	})
}

// TestEtcdInternalsReachable guards the reflection in peerconns.go: if an
// etcd upgrade renames the fields, the workarounds would silently stop
// working, so fail loudly here instead.
func TestEtcdInternalsReachable(t *testing.T) {
	m := Single(t)
	s := m.Server().Server
	if n := len(peerRoundTrippers(s)); n != 3 {
		t.Errorf("found %d peer round trippers (peerRt, pipelineRt, streamRt), want 3", n)
	}
	if transporter(s) == nil {
		t.Error("rafthttp transport not found")
	}
}
