package registry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
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

const helperEnv = "MUSTER_REGISTRY_TEST_HELPER"

func TestMain(m *testing.M) {
	if eps := os.Getenv(helperEnv); eps != "" {
		helperProcess(eps)
		return
	}
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// helperProcess registers one endpoint, says "ready" and waits to be killed.
func helperProcess(endpoints string) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	r, err := New(cli, WithTTL(2*time.Second))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Register(ctx, endpoint.Endpoint{Service: "doomed", Addr: "127.0.0.1:7001"}); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func newRegistrar(t *testing.T, cli *clientv3.Client, opts ...Option) *Registrar {
	t.Helper()
	r, err := New(cli, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func getPrefix(t *testing.T, cli *clientv3.Client, prefix string) []*clientv3.GetResponse {
	t.Helper()
	resp, err := cli.Get(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	return []*clientv3.GetResponse{resp}
}

func count(t *testing.T, cli *clientv3.Client, prefix string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return -1
	}
	return int(resp.Count)
}

var (
	epA = endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:9001", Zone: "z1", Tags: map[string]string{"canary": "true"}}
	epB = endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:9002", Weight: 5}
)

// Test 1: two endpoints, one lease with the configured TTL; Close removes both.
func TestRegisterOneLeaseAndCloseRemovesAll(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	reg := prometheus.NewRegistry()
	r := newRegistrar(t, cli, WithTTL(5*time.Second), WithRegisterer(reg))
	if err := r.Register(ctxT(t, 5*time.Second), epA, epB); err != nil {
		t.Fatal(err)
	}
	resp := getPrefix(t, cli, "services/order.rpc/")[0]
	if len(resp.Kvs) != 2 {
		t.Fatalf("got %d keys, want 2", len(resp.Kvs))
	}
	lease := resp.Kvs[0].Lease
	for _, kv := range resp.Kvs {
		if kv.Lease != lease || lease == 0 {
			t.Fatalf("keys on different leases: %d and %d", kv.Lease, lease)
		}
		e, err := keyfmt.Native.Decode("order.rpc", strings.TrimPrefix(string(kv.Key), "services/order.rpc/"), kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		want := epA.Normalize()
		if e.Addr == epB.Addr {
			want = epB.Normalize()
		}
		if !endpoint.Equal(e, want) {
			t.Fatalf("stored %+v, want %+v", e, want)
		}
	}
	ttl, err := cli.TimeToLive(ctxT(t, 5*time.Second), clientv3.LeaseID(lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 5 {
		t.Fatalf("granted TTL %d, want 5", ttl.GrantedTTL)
	}
	if st := r.Status(); !st.Synced || st.LeaseID != lease || st.Keys != 2 || st.Grants != 1 {
		t.Fatalf("status %+v", st)
	}
	if got := testutil.ToFloat64(r.m.keys); got != 2 {
		t.Fatalf("muster_registry_keys = %v, want 2", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	// Revoke is synchronous: both keys are gone when Close returns.
	if n := count(t, cli, "services/order.rpc/"); n != 0 {
		t.Fatalf("%d keys left after Close", n)
	}
	if err := r.Register(ctxT(t, time.Second), epA); !errors.Is(err, ErrClosed) {
		t.Fatalf("Register after Close = %v, want ErrClosed", err)
	}
}

// Test 2: a process killed without Close leaves etcd within TTL + 1s.
func TestKilledProcessKeysExpire(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(m.Endpoints(), ","))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("helper said %q", line)
	}
	if n := count(t, cli, "services/doomed/"); n != 1 {
		t.Fatalf("helper registered %d keys, want 1", n)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 2*time.Second+time.Second, "key of the killed process still in etcd", func() bool {
		return count(t, cli, "services/doomed/") == 0
	})
	t.Logf("key gone %v after SIGKILL (TTL 2s)", took)
}

// Test 3: etcd down for 2 x TTL, restarted on its data: the registrar heals by itself.
func TestReregistersAfterEtcdOutage(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	r := newRegistrar(t, cli, WithTTL(2*time.Second))
	if err := r.Register(ctxT(t, 5*time.Second), epA); err != nil {
		t.Fatal(err)
	}
	first := r.Status().LeaseID
	m.Stop()
	time.Sleep(4 * time.Second) // the outage under test: 2 x TTL
	eventually(t, 5*time.Second, "registrar never noticed the lease loss", func() bool { return r.Status().LeaseID != first })
	m.Restart()
	restarted := time.Now()
	eventually(t, 10*time.Second, "registrar did not heal", func() bool {
		st := r.Status()
		return st.Synced && st.Heals >= 1
	})
	t.Logf("re-registered %v after etcd came back", time.Since(restarted))
	st := r.Status()
	resp := getPrefix(t, cli, "services/order.rpc/")[0]
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease != st.LeaseID {
		t.Fatalf("after heal: keys %v, want one on lease %x", resp.Kvs, st.LeaseID)
	}
	// The old lease, extended by etcd at restart, expires now; the key must
	// survive it because it moved to the new lease.
	time.Sleep(3 * time.Second)
	if n := count(t, cli, "services/order.rpc/"); n != 1 {
		t.Fatalf("%d keys after the old lease expired, want 1", n)
	}
}

// Test 4: someone else deletes our key; it comes back.
func TestDeletedKeyComesBack(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	r := newRegistrar(t, cli)
	if err := r.Register(ctxT(t, 5*time.Second), epA, epB); err != nil {
		t.Fatal(err)
	}
	key := "services/order.rpc/" + epA.Addr
	if _, err := cli.Delete(ctxT(t, 5*time.Second), key); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 5*time.Second, "deleted key not put back", func() bool {
		return count(t, cli, key) == 1
	})
	t.Logf("key back after %v", took)
	if st := r.Status(); st.Restores != 1 {
		t.Fatalf("Restores = %d, want 1", st.Restores)
	}
	resp := getPrefix(t, cli, key)[0]
	if resp.Kvs[0].Lease != r.Status().LeaseID {
		t.Fatal("restored key not on the registrar's lease")
	}
}

// Someone revokes our lease: every key comes back on a new lease.
func TestRevokedLeaseHeals(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	r := newRegistrar(t, cli)
	if err := r.Register(ctxT(t, 5*time.Second), epA, epB); err != nil {
		t.Fatal(err)
	}
	old := r.Status().LeaseID
	if _, err := cli.Revoke(ctxT(t, 5*time.Second), clientv3.LeaseID(old)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "no heal after revoke", func() bool {
		st := r.Status()
		return st.Heals == 1 && st.Synced && st.LeaseID != old && count(t, cli, "services/order.rpc/") == 2
	})
}

func TestDeregisterAndUpdate(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	r := newRegistrar(t, cli)
	ctx := ctxT(t, 10*time.Second)
	if err := r.Register(ctx, epA, epB); err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister(ctx, endpoint.Endpoint{Service: epA.Service, Addr: epA.Addr}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, cli, "services/order.rpc/"); n != 1 || r.Endpoints() != 1 {
		t.Fatalf("after Deregister: %d keys, %d endpoints; want 1, 1", n, r.Endpoints())
	}
	upd := epB
	upd.Weight = 7
	if err := r.Register(ctx, upd); err != nil {
		t.Fatal(err)
	}
	resp := getPrefix(t, cli, "services/order.rpc/")[0]
	e, err := keyfmt.Native.Decode("order.rpc", epB.Addr, resp.Kvs[0].Value)
	if err != nil || e.Weight != 7 {
		t.Fatalf("after update: %+v, %v; want weight 7", e, err)
	}
	// Changing the ID of an endpoint is a new endpoint.
	if err := r.Register(ctx, endpoint.Endpoint{Service: "order.rpc", ID: "b2", Addr: epB.Addr}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, cli, "services/order.rpc/"); n != 2 {
		t.Fatalf("%d keys, want 2", n)
	}
}

// More endpoints than fit in one etcd transaction.
func TestRegisterManyEndpoints(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	r := newRegistrar(t, cli)
	eps := make([]endpoint.Endpoint, 1000)
	for i := range eps {
		eps[i] = endpoint.Endpoint{Service: fmt.Sprintf("svc%d", i%7), Addr: fmt.Sprintf("127.0.0.1:%d", 10000+i)}
	}
	if err := r.Register(ctxT(t, 20*time.Second), eps...); err != nil {
		t.Fatal(err)
	}
	if n := count(t, cli, "services/"); n != 1000 {
		t.Fatalf("%d keys, want 1000", n)
	}
	if err := r.Deregister(ctxT(t, 20*time.Second), eps[:500]...); err != nil {
		t.Fatal(err)
	}
	if n := count(t, cli, "services/"); n != 500 {
		t.Fatalf("%d keys, want 500", n)
	}
}

// Register with etcd down returns when its context ends, and the endpoint
// is written once etcd is back.
func TestRegisterWhileEtcdDown(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	r := newRegistrar(t, cli)
	m.Stop()
	start := time.Now()
	err := r.Register(ctxT(t, 500*time.Millisecond), epA)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register with etcd down = %v, want a deadline error", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Register took %v with a 500ms context", took)
	}
	m.Restart()
	eventually(t, 10*time.Second, "endpoint not written after etcd came back", func() bool {
		return count(t, cli, "services/order.rpc/") == 1 && r.Status().Synced
	})
}

func TestInvalidInput(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	if _, err := New(cli, WithTTL(time.Second)); err == nil || !strings.Contains(err.Error(), "TTL 1s is below the minimum") {
		t.Fatalf("New(TTL 1s) = %v", err)
	}
	if _, err := New(cli, WithTTL(2500*time.Millisecond)); err == nil || !strings.Contains(err.Error(), "whole number of seconds") {
		t.Fatalf("New(TTL 2.5s) = %v", err)
	}
	if _, err := New(nil); err == nil {
		t.Fatal("New(nil) succeeded")
	}
	r := newRegistrar(t, cli)
	err := r.Register(ctxT(t, time.Second), endpoint.Endpoint{Service: "x", Addr: "127.0.0.1:99999"})
	if !errors.Is(err, endpoint.ErrInvalid) || !strings.Contains(err.Error(), "port") {
		t.Fatalf("Register(bad port) = %v", err)
	}
	if n := count(t, cli, "services/"); n != 0 {
		t.Fatalf("%d keys written for an invalid endpoint", n)
	}
}

// Two registrars sharing one Prometheus registry share the collectors.
func TestSharedRegisterer(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	reg := prometheus.NewRegistry()
	r1 := newRegistrar(t, cli, WithRegisterer(reg))
	r2 := newRegistrar(t, cli, WithRegisterer(reg))
	ctx := ctxT(t, 5*time.Second)
	if err := r1.Register(ctx, epA); err != nil {
		t.Fatal(err)
	}
	if err := r2.Register(ctx, epB); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(r1.m.grants); got != 2 {
		t.Fatalf("muster_registry_lease_grants_total = %v, want 2", got)
	}
}
