package etcdclient

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/faultproxy"
	"github.com/mustersd/muster/internal/testx"
)

// proxiedCluster starts a 3-member cluster with a fault proxy in front of
// each member's client URL, and a client made by New through the proxies.
func proxiedCluster(t *testing.T, reg prometheus.Registerer) (*etcdtest.Group, []*faultproxy.Proxy, *clientv3.Client) {
	t.Helper()
	c := etcdtest.Cluster(t, 3)
	var pxs []*faultproxy.Proxy
	var eps []string
	for _, m := range c.Members() {
		px, err := faultproxy.New(parseEndpoint(m.Endpoints()[0]).addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { px.Close() })
		pxs = append(pxs, px)
		eps = append(eps, px.Addr())
	}
	cli, err := New(Config{Endpoints: eps, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return c, pxs, cli
}

// probeLoops counts the running probe goroutines.
func probeLoops() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "etcdclient.(*monitor).probeLoop")
}

func TestMonitorExcludesBlackholedMember(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, pxs, cli := proxiedCluster(t, reg)
	testx.Eventually(t, 5*time.Second, "3 probe goroutines", func() bool { return probeLoops() == 3 })
	all := slices.Clone(cli.Endpoints())

	// Pin a watch on member 0: the other proxies refuse while it opens.
	for _, px := range pxs[1:] {
		px.SetMode(faultproxy.Refuse())
		px.CutAll()
	}
	ctx := testx.Context(t, time.Minute)
	wch := cli.Watch(ctx, "k", clientv3.WithCreatedNotify())
	select {
	case resp := <-wch:
		if !resp.Created {
			t.Fatalf("first watch response %+v, want created", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch not created within 10s")
	}
	for _, px := range pxs[1:] {
		px.SetMode(faultproxy.Pass())
	}
	testx.Eventually(t, 10*time.Second, "all endpoints back after the refusal", func() bool {
		return slices.Equal(cli.Endpoints(), all)
	})

	pxs[0].SetMode(faultproxy.Blackhole())
	start := time.Now()
	direct := c.Client(t)
	if _, err := direct.Put(ctx, "k", "after"); err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Duration, 1)
	go func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if string(ev.Kv.Value) == "after" {
					got <- time.Since(start)
					return
				}
			}
		}
	}()
	d := testx.Eventually(t, 5*time.Second, "blackholed endpoint excluded", func() bool {
		return slices.Equal(cli.Endpoints(), all[1:])
	})
	t.Logf("blackholed endpoint excluded after %v", d.Round(10*time.Millisecond))
	if n := testx.Metric(t, reg, "muster_etcd_endpoint_exclusions_total", "endpoint="+all[0]); n != 1 {
		t.Errorf("muster_etcd_endpoint_exclusions_total{endpoint=%q} = %v, want 1", all[0], n)
	}
	if n := testx.Metric(t, reg, "muster_etcd_endpoint_excluded", "endpoint="+all[0]); n != 1 {
		t.Errorf("muster_etcd_endpoint_excluded{endpoint=%q} = %v, want 1", all[0], n)
	}
	select {
	case d := <-got:
		t.Logf("watch pinned on the blackholed member got the put after %v", d.Round(10*time.Millisecond))
	case <-time.After(5*time.Second - time.Since(start)):
		t.Fatalf("watch pinned on the blackholed member did not get the put within 5s")
	}
	// New requests go to the healthy members.
	for i := range 6 {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(rctx, "k")
		cancel()
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
	}

	pxs[0].SetMode(faultproxy.Pass())
	d = testx.Eventually(t, 10*time.Second, "endpoint back after the blackhole", func() bool {
		return slices.Equal(cli.Endpoints(), all)
	})
	t.Logf("endpoint back after %v", d.Round(10*time.Millisecond))
	if n := testx.Metric(t, reg, "muster_etcd_endpoint_excluded", "endpoint="+all[0]); n != 0 {
		t.Errorf("muster_etcd_endpoint_excluded{endpoint=%q} = %v after its return, want 0", all[0], n)
	}
}

func TestMonitorKeepsAllWhenNoneAnswers(t *testing.T) {
	c, _, cli := proxiedCluster(t, nil)
	all := slices.Clone(cli.Endpoints())
	// Stop stops the members one after the other, so the first ones may be
	// excluded while the last one still answers; once none answers, the
	// client gets and keeps them all.
	c.Stop()
	time.Sleep(2 * time.Second) // for every endpoint to fail its checks
	testx.Eventually(t, 5*time.Second, "all endpoints kept", func() bool {
		return slices.Equal(cli.Endpoints(), all)
	})
	for range 30 { // 6 rounds of checks
		time.Sleep(150 * time.Millisecond)
		if eps := cli.Endpoints(); !slices.Equal(eps, all) {
			t.Fatalf("endpoints %v with every member down, want %v", eps, all)
		}
	}
	c.Restart()
	ctx := testx.Context(t, 30*time.Second)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if eps := cli.Endpoints(); !slices.Equal(eps, all) {
		t.Fatalf("endpoints %v after the restart, want %v", eps, all)
	}
}

func TestMonitorSingleEndpoint(t *testing.T) {
	m := etcdtest.Single(t)
	cli, err := New(Config{Endpoints: m.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if lookup(cli).mon != nil {
		t.Fatal("monitor started for a single endpoint")
	}
	if n := probeLoops(); n != 0 {
		t.Fatalf("%d probe goroutines, want 0", n)
	}
}
