package chaosharness

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/faultproxy"
)

// A Scenario is one fault run through a system.
type Scenario struct {
	Name string // the subtest's name
	Run  func(t *testing.T, p Params) Result
}

// Scenarios are the six scenarios, in order.
var Scenarios = []Scenario{
	{"LeaderKills", LeaderKills},
	{"Partition", Partition},
	{"ClusterDown", ClusterDown},
	{"SlowEtcd", SlowEtcd},
	{"CompactionLaggingWatchers", Compaction},
	{"KilledBackend", KilledBackend},
}

// setup starts the backends and clients of a scenario and waits until
// every client is served by every backend.
func setup(t *testing.T, p Params) *env {
	e := newEnv(t, p)
	for range p.Backends {
		e.startBackend()
	}
	e.startClients(p.Clients)
	e.waitServed()
	time.Sleep(500 * time.Millisecond) // steady load
	return e
}

// Scenario 1: the leader is killed (its client connections cut and
// refused, raft stopped without handing leadership over, as a crash
// would) and restarted, five times in a row.
func LeaderKills(t *testing.T, p Params) Result {
	const kills = 5
	const down = 3 * time.Second
	e := setup(t, p)
	e.beginFault()
	for range kills {
		m := e.cluster.Leader()
		pxs := e.memberProxies(e.memberIndex(m))
		e.setModes(faultproxy.Refuse(), pxs...)
		for _, px := range pxs {
			px.CutAll()
		}
		m.Server().Server.HardStop()
		m.Stop()
		time.Sleep(down)
		m.Restart()
		e.setModes(faultproxy.Pass(), pxs...)
		e.cluster.Leader()
		time.Sleep(time.Second)
	}
	e.endFault()
	r := e.finish("1. leader killed x5", fmt.Sprintf("leader crashed, down %v, restarted; %d times", down, kills))
	e.report(r)
	return r
}

// Scenario 2: a member is partitioned from its clients (its proxies
// blackholed: connections stay open, nothing passes) for the fault
// duration. Beforehand every backend's etcd streams (lease keepalives,
// watches) and client c0's watch are steered onto that member, and the
// other clients' watches onto the other members, by refusing and cutting
// the other proxies of their groups for a moment. During the partition a
// backend shuts down (at once) and a new one starts (halfway).
//
// So the partition hits every lease and one client's watch at once, while
// the other clients see etcd as the healthy majority does.
func Partition(t *testing.T, p Params) Result {
	const partitioned = 0
	e := setup(t, p)
	steer := map[string]int{}
	for _, b := range e.live() {
		steer[b.group] = partitioned
	}
	for i, c := range e.clientList() {
		steer[c.group] = i % len(e.cluster.Members()) // c0 on the partitioned member
	}
	var others []*faultproxy.Proxy
	for g, m := range steer {
		for i, px := range e.group(g) {
			if i != m {
				others = append(others, px)
			}
		}
	}
	e.setModes(faultproxy.Refuse(), others...)
	for _, px := range others {
		px.CutAll()
	}
	time.Sleep(2 * time.Second) // streams re-open on the member left
	e.setModes(faultproxy.Pass(), others...)
	perGroup := map[string]int{}
	for _, b := range e.live() {
		perGroup[b.group]++
	}
	for g, n := range perGroup {
		waitConns(t, n, e.group(g)...)
	}
	for _, c := range e.clientList() {
		waitConns(t, 1, e.group(c.group)...)
	}
	time.Sleep(500 * time.Millisecond)

	e.beginFault()
	e.setModes(faultproxy.Blackhole(), e.memberProxies(partitioned)...)
	time.Sleep(500 * time.Millisecond)
	e.shutdown(e.live()[0])
	time.Sleep(time.Until(e.faultStart.Add(p.Fault / 2)))
	e.startBackend()
	time.Sleep(time.Until(e.faultStart.Add(p.Fault)))
	e.setModes(faultproxy.Pass(), e.memberProxies(partitioned)...)
	e.endFault()
	r := e.finish("2. member partitioned",
		fmt.Sprintf("member blackholed %v under every lease and 1 of %d watches; one backend stopped, one started", p.Fault, p.Clients))
	e.report(r)
	return r
}

// waitConns waits until each proxy has at least n open connections.
func waitConns(t *testing.T, n int, proxies ...*faultproxy.Proxy) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, px := range proxies {
		for px.Stats().Active < n {
			if time.Now().After(deadline) {
				t.Fatalf("proxy %s: %d connections after 15s, want %d", px.Addr(), px.Stats().Active, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Scenario 3: the whole cluster stopped for the fault duration, then
// restarted on its data.
func ClusterDown(t *testing.T, p Params) Result {
	e := setup(t, p)
	e.beginFault()
	e.cluster.Stop()
	time.Sleep(p.Fault)
	e.cluster.Restart()
	e.endFault()
	r := e.finish("3. cluster down", fmt.Sprintf("all 3 members stopped %v, restarted", p.Fault))
	e.report(r)
	return r
}

// Scenario 4: every request to etcd takes 200ms more for the fault
// duration.
func SlowEtcd(t *testing.T, p Params) Result {
	const delay = 200 * time.Millisecond
	e := setup(t, p)
	e.beginFault()
	e.setModes(faultproxy.Delay(delay, faultproxy.Up))
	time.Sleep(p.Fault)
	e.setModes(faultproxy.Pass())
	e.endFault()
	r := e.finish("4. etcd slow", fmt.Sprintf("+%v on every request for %v", delay, p.Fault))
	e.report(r)
	return r
}

// Scenario 5: the clients' watches fall behind while etcd is compacted
// and defragmented. etcd's responses are throttled to 512 bytes per 50ms
// while thousands of events are written under the service's prefix (the
// live keys put again, unchanged), until etcd counts every client's
// watcher as slow (unsynced; or at least one after 10s); then etcd is
// compacted at its current revision and
// every member defragmented, and the set of backends changes (one starts,
// one shuts down). When the throttle is lifted the lagging watchers find
// their revision compacted and must list again.
func Compaction(t *testing.T, p Params) Result {
	e := setup(t, p)
	e.beginFault()
	e.setModes(faultproxy.DelayPerChunk(50*time.Millisecond, faultproxy.Down, 512))

	live := e.live()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	values := map[string]string{} // the keys of the backends that stay
	stay := map[string]bool{}
	for _, b := range live[1:] {
		stay[b.addr] = true
	}
	sys := p.servers()
	resp, err := e.direct.Get(ctx, sys.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if stay[sys.Addr(kv.Key, kv.Value)] {
			values[string(kv.Key)] = string(kv.Value)
		}
	}
	if len(values) < len(stay) {
		t.Fatalf("etcd holds %d keys of the %d backends that stay", len(values), len(stay))
	}
	var events atomic.Int64
	flood := make(chan struct{})
	floodDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-flood:
				floodDone <- nil
				return
			default:
			}
			var ops []clientv3.Op
			for k, v := range values {
				ops = append(ops, clientv3.OpPut(k, v, clientv3.WithIgnoreLease()))
			}
			if _, err := e.direct.Txn(ctx).Then(ops...).Commit(); err != nil {
				floodDone <- err
				return
			}
			events.Add(int64(len(ops)))
		}
	}()
	stopFlood := func() {
		close(flood)
		if err := <-floodDone; err != nil {
			t.Fatal(err)
		}
	}
	// Wait until every client's watcher lags, or at least one after 10s.
	start := time.Now()
	for slowWatchers() < float64(p.Clients) && (slowWatchers() < 1 || time.Since(start) < 10*time.Second) {
		if time.Since(start) > 30*time.Second {
			stopFlood()
			t.Fatalf("no slow watcher after %d events in 30s", events.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	slow := slowWatchers()

	resp, err = e.direct.Get(ctx, "compact-marker")
	if err != nil {
		t.Fatal(err)
	}
	rev := resp.Header.Revision
	if _, err := e.direct.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	for _, m := range e.cluster.Members() {
		if _, err := e.direct.Defragment(ctx, m.Endpoints()[0]); err != nil {
			t.Fatalf("defragment %s: %v", m.Name(), err)
		}
	}
	// The set changes while the watchers lag.
	e.startBackend()
	e.shutdown(live[0])
	stopFlood()
	time.Sleep(2 * time.Second)
	e.setModes(faultproxy.Pass())
	e.endFault()
	r := e.finish("5. compaction, lagging watchers",
		fmt.Sprintf("etcd's responses throttled to 10 KB/s, %d events; compacted and defragmented with %v watchers slow; a backend added, one removed", events.Load(), slow))
	relists := 0
	for _, c := range e.clientList() {
		if !c.logs.last("discovery: watch broke; listing again").IsZero() {
			relists++
		}
	}
	if !p.RecordOnly {
		t.Logf("%d of %d clients listed again after their watch broke", relists, len(e.clientList()))
	}
	if relists == 0 && !p.RecordOnly {
		t.Errorf("no client's watch hit the compaction: the scenario did not test what it should")
	}
	e.report(r)
	return r
}

// slowWatchers returns etcd's etcd_debugging_mvcc_slow_watcher_total gauge
// (watchers that fell behind and are catching up from the store), summed
// over the members in this process.
func slowWatchers() float64 {
	mfs, _ := prometheus.DefaultGatherer.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "etcd_debugging_mvcc_slow_watcher_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// KilledBackend is scenario 6: a backend process is killed with SIGKILL (it
// cannot deregister) while the clients send it requests. Its key must leave
// etcd when its lease expires, and every client's resolver must drop it
// within TTL + bound; no RPC may fail apart from those in flight on the
// killed process at the instant it died.
func KilledBackend(t *testing.T, p Params) Result {
	e := newEnv(t, p)
	for range p.Backends {
		e.startBackend()
	}
	victim := e.startProcessBackend()
	e.startClients(p.Clients)
	e.waitServed()
	time.Sleep(500 * time.Millisecond) // steady load on every backend
	e.beginFault()
	e.kill(victim)
	e.endFault()
	name := "6. backend SIGKILLed"
	if !p.RecordOnly && p.Maker.Name != MusterClients.Name {
		name += " (" + p.Maker.Name + " clients)"
	}
	r := e.finish(name, fmt.Sprintf("SIGKILL of 1 of %d backends under load, TTL %v", p.Backends+1, p.TTL))
	e.report(r)
	return r
}
