package lbutil

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Counters are the picks and failed RPCs of one endpoint in one balancer,
// counted without locks on the pick path.
type Counters struct {
	Picks  atomic.Uint64
	Errors atomic.Uint64
}

// Source is a live balancer whose per-endpoint counters the collector
// reports.
type Source interface {
	// EachEndpoint calls f with every endpoint the balancer knows and its
	// counters.
	EachEndpoint(f func(addr string, c *Counters))
}

type source struct {
	policy, target string
	s              Source
}

var sources = struct {
	mu sync.Mutex
	m  map[Source]source
}{m: map[Source]source{}}

// Track adds a balancer to what the collector reports; the returned
// function removes it (call it from Close).
func Track(policy, target string, s Source) (untrack func()) {
	sources.mu.Lock()
	sources.m[s] = source{policy: policy, target: target, s: s}
	sources.mu.Unlock()
	return func() {
		sources.mu.Lock()
		delete(sources.m, s)
		sources.mu.Unlock()
	}
}

var (
	picksDesc = prometheus.NewDesc("muster_balancer_picks_total",
		"RPCs a Muster balancing policy sent to an endpoint, per ClientConn target.",
		[]string{"policy", "target", "endpoint"}, nil)
	errorsDesc = prometheus.NewDesc("muster_balancer_errors_total",
		"RPCs sent to an endpoint by a Muster balancing policy that failed (cancellations by the caller excluded), per ClientConn target.",
		[]string{"policy", "target", "endpoint"}, nil)
)

// Collector reports the counters of every live balancer of the Muster
// policies in the process. Register it once per registry (promx tolerates
// a second registration of the same collector).
var Collector prometheus.Collector = collector{}

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- picksDesc
	ch <- errorsDesc
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ policy, target, addr string }
	type sum struct{ picks, errors uint64 }
	sums := map[key]sum{}
	sources.mu.Lock()
	list := make([]source, 0, len(sources.m))
	for _, s := range sources.m {
		list = append(list, s)
	}
	sources.mu.Unlock()
	for _, s := range list {
		s.s.EachEndpoint(func(addr string, c *Counters) {
			k := key{s.policy, s.target, addr}
			v := sums[k]
			v.picks += c.Picks.Load()
			v.errors += c.Errors.Load()
			sums[k] = v
		})
	}
	for k, v := range sums {
		ch <- prometheus.MustNewConstMetric(picksDesc, prometheus.CounterValue, float64(v.picks), k.policy, k.target, k.addr)
		ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, float64(v.errors), k.policy, k.target, k.addr)
	}
}
