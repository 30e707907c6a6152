package xds

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/serviceconfig"

	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/internal/testx"
)

// probeName is a policy that is muster_p2c, and notes when each of its
// instances first receives an address: the moment an xDS update reaches a
// ClientConn's balancer, without traffic to find it out.
const probeName = "muster_xds_test_probe"

func init() { balancer.Register(probeBuilder{}) }

var probes struct {
	sync.Mutex
	watch string               // the address to look for
	seen  map[*probe]time.Time // when each balancer first had it
	gone  map[*probe]time.Time // when each balancer, having had it, first had it no more
	all   map[*probe]struct{}  // live balancers
}

type probeBuilder struct{}

func (probeBuilder) Name() string { return probeName }

func (probeBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	p := &probe{Balancer: balancer.Get(p2c.Name).Build(cc, opts)}
	probes.Lock()
	if probes.all == nil {
		probes.all, probes.seen, probes.gone = map[*probe]struct{}{}, map[*probe]time.Time{}, map[*probe]time.Time{}
	}
	probes.all[p] = struct{}{}
	probes.Unlock()
	return p
}

func (probeBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return p2c.ParseConfig(js)
}

type probe struct{ balancer.Balancer }

func (p *probe) UpdateClientConnState(s balancer.ClientConnState) error {
	now := time.Now()
	probes.Lock()
	has := false
	for _, ep := range s.ResolverState.Endpoints {
		for _, a := range ep.Addresses {
			has = has || probes.watch != "" && a.Addr == probes.watch
		}
	}
	_, seen := probes.seen[p]
	_, gone := probes.gone[p]
	switch {
	case has && !seen:
		probes.seen[p] = now
	case !has && seen && !gone:
		probes.gone[p] = now
	}
	probes.Unlock()
	return p.Balancer.UpdateClientConnState(s)
}

func (p *probe) Close() {
	probes.Lock()
	delete(probes.all, p)
	delete(probes.seen, p)
	delete(probes.gone, p)
	probes.Unlock()
	p.Balancer.Close()
}

// TestPropagationLatency measures how long a registration takes from the
// etcd put to the balancer of each of 200 xDS ClientConns (each with an ADS
// stream of its own), with no RPC traffic competing for the CPU.
func TestPropagationLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("200 ClientConns")
	}
	old := customPolicyName
	customPolicyName = probeName
	t.Cleanup(func() { customPolicyName = old })
	e := newEnv(t)
	a := e.backend("a")
	e.register(svc, a, 0, "")
	ccs := e.dial(svc, 200)
	converge(t, ccs, names(a))

	for round := range 3 {
		b := e.backend("b")
		probes.Lock()
		probes.watch = b.Addr
		clear(probes.seen)
		clear(probes.gone)
		n := len(probes.all)
		probes.Unlock()
		if n != len(ccs) {
			t.Fatalf("%d probe balancers, want %d", n, len(ccs))
		}
		put := time.Now()
		e.register(svc, b, 0, "")
		t.Logf("round %d: etcd put -> balancer update on each of 200 ClientConns: %s", round, percentiles(waitProbes(t, &probes.seen, put, len(ccs))))
		del := time.Now()
		e.deregister(svc, b)
		t.Logf("round %d: etcd delete -> balancer update on each of 200 ClientConns: %s", round, percentiles(waitProbes(t, &probes.gone, del, len(ccs))))
		b.Stop()
	}
	count, sum := histogram(t, e, "muster_xds_push_latency_seconds")
	t.Logf("server side, etcd snapshot -> assignment in the cache (muster_xds_push_latency_seconds): %d samples, mean %v",
		count, (time.Duration(sum*float64(time.Second)) / time.Duration(max(count, 1))).Round(time.Microsecond))
}

func histogram(t *testing.T, e *env, name string) (count uint64, sum float64) {
	t.Helper()
	e.mu.Lock()
	reg := e.reg
	e.mu.Unlock()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				count += m.GetHistogram().GetSampleCount()
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return count, sum
}

// waitProbes waits until m (of probes) has n entries and returns how long
// after since each came.
func waitProbes(t *testing.T, m *map[*probe]time.Time, since time.Time, n int) []time.Duration {
	t.Helper()
	testx.Eventually(t, convergeTimeout, "every balancer has the update", func() bool {
		probes.Lock()
		defer probes.Unlock()
		return len(*m) == n
	})
	probes.Lock()
	defer probes.Unlock()
	var took []time.Duration
	for _, at := range *m {
		took = append(took, at.Sub(since))
	}
	return took
}
