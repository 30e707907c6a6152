// Package weighted is the "muster_weighted" load-balancing policy: smooth
// weighted round robin over the READY endpoints, driven by the weight each
// instance registered (endpoint.DefaultWeight when it registered none).
//
// The order is computed when the set of READY endpoints or their weights
// change, as an earliest-deadline-first schedule, so that an endpoint of
// weight 7 next to two of weights 1 and 2 gets 7 picks of every 10, spread
// out rather than in a burst; Pick is one atomic increment and takes no lock.
// A weight changed in etcd takes effect with the next resolver update,
// without reconnecting.
//
// Select it with a service config:
//
//	{"loadBalancingConfig":[{"muster_weighted":{"zone":"eu-1a"}}]}
package weighted

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster/balancer/internal/lbutil"
)

// Name is the policy's name in service configs.
const Name = "muster_weighted"

// maxSchedule bounds the length of a schedule; larger weight sums are
// scaled down to it (each endpoint keeps at least one slot).
const maxSchedule = 1 << 14

func init() { balancer.Register(builder{}) }

// Config is the policy's configuration.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	// The zone preference: zone (default $MUSTER_ZONE) and minLocalReady.
	lbutil.Zone
}

type builder struct{}

func (builder) Name() string { return Name }

// ParseConfig reads the policy's JSON configuration.
func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return ParseConfig(js)
}

// ParseConfig reads the policy's JSON configuration, fills the defaults and
// validates it; errors name the field.
func ParseConfig(js json.RawMessage) (*Config, error) {
	c := &Config{}
	if len(js) > 0 {
		if err := json.Unmarshal(js, c); err != nil {
			return nil, fmt.Errorf("%s: config: %w", Name, err)
		}
	}
	if err := c.Zone.Fill(lbutil.Getenv); err != nil {
		return nil, fmt.Errorf("%s: config: %w", Name, err)
	}
	return c, nil
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &weightedBalancer{ClientConn: cc, counters: map[string]*member{}}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	b.untrack = lbutil.Track(Name, opts.Target.String(), b)
	return b
}

type weightedBalancer struct {
	balancer.ClientConn // the parent; UpdateState is overridden
	child               balancer.Balancer

	untrack func()

	mu       sync.Mutex
	cfg      *Config
	counters map[string]*member // by address, while the endpoint is READY
}

// member counts one endpoint's picks and errors; done is its Done
// function, made once so that a pick allocates nothing.
type member struct {
	counters lbutil.Counters
	done     func(balancer.DoneInfo)
}

func newMember() *member {
	m := &member{}
	m.done = func(info balancer.DoneInfo) {
		if info.Err != nil && status.Code(info.Err) != codes.Canceled {
			m.counters.Errors.Add(1)
		}
	}
	return m
}

// EachEndpoint reports the counters of every endpoint, for metrics.
func (b *weightedBalancer) EachEndpoint(f func(addr string, c *lbutil.Counters)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for a, m := range b.counters {
		f(a, &m.counters)
	}
}

func (b *weightedBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*Config)
	if !ok {
		var err error
		if cfg, err = ParseConfig(nil); err != nil {
			return err
		}
	}
	b.mu.Lock()
	b.cfg = cfg
	b.mu.Unlock()
	return b.child.UpdateClientConnState(balancer.ClientConnState{
		ResolverState: pickfirst.EnableHealthListener(s.ResolverState),
	})
}

func (b *weightedBalancer) ResolverError(err error) { b.child.ResolverError(err) }

func (b *weightedBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {
	// Children own their SubConns and get their state through listeners.
}

func (b *weightedBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *weightedBalancer) Close() {
	b.untrack()
	b.child.Close()
}

func (b *weightedBalancer) UpdateState(s balancer.State) {
	b.mu.Lock()
	cfg := b.cfg
	b.mu.Unlock()
	if cfg == nil {
		cfg, _ = ParseConfig(nil)
	}
	members, _ := lbutil.Ready(endpointsharding.ChildStatesFromPicker(s.Picker), cfg.Zone)
	if len(members) == 0 {
		b.ClientConn.UpdateState(s)
		return
	}
	weights := make([]int, len(members))
	pickers := make([]balancer.Picker, len(members))
	ms := make([]*member, len(members))
	b.mu.Lock()
	keep := make(map[string]*member, len(members))
	for i, m := range members {
		weights[i], pickers[i] = m.Weight, m.Picker
		if ms[i] = b.counters[m.Addr]; ms[i] == nil {
			ms[i] = newMember()
		}
		keep[m.Addr] = ms[i]
	}
	b.counters = keep
	b.mu.Unlock()
	p := &picker{pickers: pickers, members: ms, schedule: Schedule(weights)}
	p.next.Store(rand.Uint64()) // clients do not start in step
	b.ClientConn.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: p})
}

type picker struct {
	pickers  []balancer.Picker
	members  []*member
	schedule []uint32
	next     atomic.Uint64
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	i := p.schedule[p.next.Add(1)%uint64(len(p.schedule))]
	res, err := p.pickers[i].Pick(info)
	if err != nil {
		return res, err
	}
	m := p.members[i]
	m.counters.Picks.Add(1)
	if child := res.Done; child != nil {
		res.Done = func(info balancer.DoneInfo) { // allocates; pick_first sets no Done
			m.done(info)
			child(info)
		}
	} else {
		res.Done = m.done
	}
	return res, nil
}

// Schedule returns a smooth weighted round-robin order of the indexes of
// weights: index i appears weights[i] times per cycle (after dividing by
// their greatest common divisor, and scaling down to at most 16384 slots),
// spread evenly. Weights under 1 count as 1.
func Schedule(weights []int) []uint32 {
	w := make([]int, len(weights))
	g, total := 0, 0
	for i, x := range weights {
		w[i] = max(x, 1)
		g = gcd(g, w[i])
	}
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	if total > maxSchedule && total > len(w) {
		budget := max(maxSchedule, len(w))
		scaled := 0
		for i := range w {
			w[i] = max(1, w[i]*budget/total)
			scaled += w[i]
		}
		total = scaled
	}
	// Earliest deadline first: endpoint i's k-th slot is due at k/w[i];
	// ties go to the lower index.
	h := make(edf, len(w))
	for i := range w {
		h[i] = slot{k: 1, w: int64(w[i]), idx: uint32(i)}
	}
	heap.Init(&h)
	out := make([]uint32, 0, total)
	for range total {
		s := &h[0]
		out = append(out, s.idx)
		s.k++
		heap.Fix(&h, 0)
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// slot is an endpoint's next turn, due at k/w (compared exactly, as
// integers).
type slot struct {
	k, w int64
	idx  uint32
}

type edf []slot

func (h edf) Len() int { return len(h) }
func (h edf) Less(i, j int) bool {
	if l, r := h[i].k*h[j].w, h[j].k*h[i].w; l != r {
		return l < r
	}
	return h[i].idx < h[j].idx
}
func (h edf) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *edf) Push(x any)   { *h = append(*h, x.(slot)) }
func (h *edf) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
