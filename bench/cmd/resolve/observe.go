package main

import (
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/balancer"
	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/mustersd/muster/bench/internal/benchenv"
)

// observeName is the load-balancing policy every ClientConn of the benchmark
// uses: it records the addresses the resolver hands over and never connects,
// so no backend is needed.
const observeName = "bench_observe"

// serviceConfig selects the observing policy.
const serviceConfig = `{"loadBalancingConfig":[{"` + observeName + `":{}}]}`

func init() {
	balancer.Register(observeBuilder{})
}

type observeBuilder struct{}

func (observeBuilder) Name() string { return observeName }

func (observeBuilder) Build(cc balancer.ClientConn, _ balancer.BuildOptions) balancer.Balancer {
	o := &observer{RecordingBase: benchenv.RecordingBase{CC: cc}}
	track.add(o)
	return o
}

// observer is the balancer of one ClientConn. It creates no SubConns; it
// keeps the last resolver state and reports it to the tracker. It allocates
// nothing per update and takes no lock shared with other ClientConns, so
// that the child's CPU and garbage are the system's.
type observer struct {
	benchenv.RecordingBase

	mu      sync.Mutex
	state   grpcresolver.State
	seen    bool   // a state was received
	counted uint64 // the generation of the goal it counted for
}

func (o *observer) UpdateClientConnState(s balancer.ClientConnState) error {
	o.mu.Lock()
	o.state, o.seen = s.ResolverState, true
	track.check(o)
	o.mu.Unlock()
	o.Connecting()
	return nil
}

func (o *observer) Close() { track.remove(o) }

// epoch is the origin of the goals' times (monotonic clock).
var epoch = time.Now()

// track is the process's tracker: the child runs one system at a time.
var track = &tracker{obs: map[*observer]struct{}{}}

// tracker waits until a number of observers have seen a resolver state that
// satisfies a condition. arm sets the goal; every observer that satisfies
// it (at once, or with a later update) counts once; when need of them have,
// the time is recorded and the goal's channel closed.
type tracker struct {
	goal atomic.Pointer[goal]

	mu  sync.Mutex // guards obs
	obs map[*observer]struct{}
}

type goal struct {
	gen   uint64
	cond  func(grpcresolver.State) bool
	need  int64
	got   atomic.Int64
	first atomic.Int64 // when the first observer counted, ns since epoch
	at    atomic.Int64 // when the need-th observer counted, ns since epoch
	done  chan struct{}
}

func (t *tracker) add(o *observer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.obs[o] = struct{}{}
}

func (t *tracker) remove(o *observer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.obs, o)
}

// observers returns the number of live observers (ClientConns with a
// balancer).
func (t *tracker) observers() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.obs)
}

// arm sets the goal of need observers satisfying cond, counting those that
// already do, and returns it; its channel is closed when they have. An
// observer that updates meanwhile checks the new goal itself: it stores its
// state before it loads the goal, and arm loads the state after it stored
// the goal, under the observer's lock, so none is missed or counted twice.
func (t *tracker) arm(need int, cond func(grpcresolver.State) bool) *goal {
	g := &goal{cond: cond, need: int64(need), done: make(chan struct{})}
	if old := t.goal.Load(); old != nil {
		g.gen = old.gen + 1
	}
	t.goal.Store(g)
	t.mu.Lock()
	defer t.mu.Unlock()
	for o := range t.obs {
		o.mu.Lock()
		t.check(o)
		o.mu.Unlock()
	}
	return g
}

// check counts o for the current goal if it satisfies it; o.mu is held.
func (t *tracker) check(o *observer) {
	g := t.goal.Load()
	if g == nil || o.counted == g.gen+1 || !o.seen || !g.cond(o.state) {
		return
	}
	o.counted = g.gen + 1
	now := int64(time.Since(epoch))
	switch g.got.Add(1) {
	case 1:
		g.first.Store(now)
		if g.need == 1 {
			g.at.Store(now)
			close(g.done)
		}
	case g.need:
		g.at.Store(now)
		close(g.done)
	}
}

// result returns when the first and the need-th observer satisfied the goal
// (zero if not yet), and how many have so far.
func (g *goal) result() (first, at time.Time, got int) {
	ts := func(ns int64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return epoch.Add(time.Duration(ns))
	}
	return ts(g.first.Load()), ts(g.at.Load()), int(g.got.Load())
}

// contains reports whether the state holds address a, in Endpoints or in
// Addresses: etcd's resolver fills only the former, go-zero's only the
// latter, Muster's both.
func contains(s grpcresolver.State, a string) bool {
	for _, x := range s.Addresses {
		if x.Addr == a {
			return true
		}
	}
	for _, e := range s.Endpoints {
		for _, x := range e.Addresses {
			if x.Addr == a {
				return true
			}
		}
	}
	return false
}

func has(a string) func(grpcresolver.State) bool {
	return func(s grpcresolver.State) bool { return contains(s, a) }
}

func lacks(a string) func(grpcresolver.State) bool {
	return func(s grpcresolver.State) bool { return !contains(s, a) }
}

func hasAll(as []string) func(grpcresolver.State) bool {
	return func(s grpcresolver.State) bool {
		for _, a := range as {
			if !contains(s, a) {
				return false
			}
		}
		return true
	}
}
