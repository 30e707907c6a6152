// Package p2c is the "muster_p2c" load-balancing policy: power of two
// choices over the READY endpoints, each scored by its peak-EWMA latency
// times its requests in flight plus one, as Finagle's P2CPeakEwma does.
//
// The latency estimate of an endpoint jumps to any sample above it at once
// (a slow instance is noticed on its first slow answer) and decays towards
// lower samples gradually: over decay/50 (200ms by default) while the endpoint
// is in use, and over decay (10s) towards zero while it is not picked. A
// failure that says the instance is in trouble (Unavailable,
// ResourceExhausted, DeadlineExceeded, Internal) counts as a sample of at
// least failurePenalty. A new endpoint, or one that becomes READY again,
// starts from the median estimate of its peers rather than from zero, so
// that a fresh instance is not flooded before it has answered once.
//
// An endpoint that loses a comparison and has not been picked for
// probeInterval (default 1s) is picked anyway, once, as a probe, and the
// probe's latency replaces its estimate: an instance avoided after one slow
// answer (a garbage collection, a noisy neighbour) wins its traffic back
// within about a second. Probes back off: the wait before the next probe
// doubles, up to maxProbeInterval (default 8s), after a probe whose answer
// would still lose to the rival it was compared with and after any
// failure, and halves after an answer that would win. A persistently slow
// or failing instance thus gets one request every 8 seconds per client
// rather than one a second.
//
// Two costs within 20% of each other count as equal, so that instances
// alike share the load evenly rather than by noise.
//
// Pick takes no lock and allocates nothing; with Done it reads the clock
// twice.
//
// Select it with a service config:
//
//	{"loadBalancingConfig":[{"muster_p2c":{"decay":"10s","failurePenalty":"1s","zone":"eu-1a"}}]}
//
// Every field is optional; see Config.
package p2c

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
const Name = "muster_p2c"

// Defaults of Config.
const (
	DefaultDecay            = 10 * time.Second
	DefaultFailurePenalty   = time.Second
	DefaultProbeInterval    = time.Second
	DefaultMaxProbeInterval = 8 * time.Second
)

func init() {
	calls.New = newCall
	balancer.Register(builder{})
}

// Config is the policy's configuration.
type Config struct {
	serviceconfig.LoadBalancingConfig `json:"-"`

	// Decay is the time constant of the latency estimate of an endpoint
	// that is not picked (it decays towards zero, so the endpoint is tried
	// again); samples of an endpoint in use average over Decay/50. A
	// sample above the estimate replaces it at once. Default 10s.
	Decay lbutil.Duration `json:"decay,omitempty"`
	// FailurePenalty is the latency a failure that says the instance is in
	// trouble counts as, at least. Default 1s.
	FailurePenalty lbutil.Duration `json:"failurePenalty,omitempty"`
	// ProbeInterval is how long an endpoint may go unpicked before it is
	// picked once as a probe, to measure it afresh. Default 1s.
	ProbeInterval lbutil.Duration `json:"probeInterval,omitempty"`
	// MaxProbeInterval is how far the wait between probes of an endpoint
	// grows, doubling from ProbeInterval, while each probe finds it still
	// slower than its rival. Default 8s (or ProbeInterval, if longer).
	MaxProbeInterval lbutil.Duration `json:"maxProbeInterval,omitempty"`

	// The zone preference: zone (default $MUSTER_ZONE) and minLocalReady.
	lbutil.Zone
}

type builder struct{}

func (builder) Name() string { return Name }

// ParseConfig reads the policy's JSON configuration, fills the defaults and
// validates it.
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
	if c.Decay == 0 {
		c.Decay = lbutil.Duration(DefaultDecay)
	}
	if c.FailurePenalty == 0 {
		c.FailurePenalty = lbutil.Duration(DefaultFailurePenalty)
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = lbutil.Duration(DefaultProbeInterval)
	}
	if c.ProbeInterval < lbutil.Duration(time.Millisecond) {
		return nil, fmt.Errorf("%s: config: probeInterval: %v is under 1ms", Name, time.Duration(c.ProbeInterval))
	}
	if c.MaxProbeInterval == 0 {
		c.MaxProbeInterval = max(lbutil.Duration(DefaultMaxProbeInterval), c.ProbeInterval)
	}
	if c.MaxProbeInterval < c.ProbeInterval {
		return nil, fmt.Errorf("%s: config: maxProbeInterval: %v is under probeInterval %v", Name,
			time.Duration(c.MaxProbeInterval), time.Duration(c.ProbeInterval))
	}
	if c.Decay < lbutil.Duration(time.Millisecond) {
		return nil, fmt.Errorf("%s: config: decay: %v is under 1ms", Name, time.Duration(c.Decay))
	}
	if c.FailurePenalty < 0 {
		return nil, fmt.Errorf("%s: config: failurePenalty: %v is negative", Name, time.Duration(c.FailurePenalty))
	}
	if err := c.Zone.Fill(lbutil.Getenv); err != nil {
		return nil, fmt.Errorf("%s: config: %w", Name, err)
	}
	return c, nil
}

func (builder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &p2cBalancer{
		ClientConn: cc,
		stats:      map[string]*stats{},
		ready:      map[string]bool{},
	}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	b.untrack = lbutil.Track(Name, opts.Target.String(), b)
	return b
}

// p2cBalancer keeps an endpointsharding child with a pick_first per
// endpoint, and turns its READY endpoints into p2c pickers.
type p2cBalancer struct {
	balancer.ClientConn // the parent; UpdateState is overridden
	child               balancer.Balancer

	untrack func()

	mu    sync.Mutex
	cfg   *Config
	stats map[string]*stats // by address, while the endpoint exists
	ready map[string]bool   // READY in the last update
	decay *decay            // of cfg.Decay
}

// EachEndpoint reports the counters of every endpoint, for metrics.
func (b *p2cBalancer) EachEndpoint(f func(addr string, c *lbutil.Counters)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for a, s := range b.stats {
		var c lbutil.Counters
		c.Picks.Store(s.picks())
		c.Errors.Store(s.errors.Load())
		f(a, &c)
	}
}

func (b *p2cBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
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

func (b *p2cBalancer) ResolverError(err error) { b.child.ResolverError(err) }

func (b *p2cBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {
	// Children own their SubConns and get their state through listeners.
}

func (b *p2cBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *p2cBalancer) Close() {
	b.untrack()
	b.child.Close()
}

// UpdateState receives endpointsharding's state and publishes a p2c picker
// over the READY endpoints, or passes the state on when none is READY.
func (b *p2cBalancer) UpdateState(s balancer.State) {
	children := endpointsharding.ChildStatesFromPicker(s.Picker)
	b.mu.Lock()
	defer b.mu.Unlock()
	cfg := b.cfg
	if cfg == nil {
		cfg, _ = ParseConfig(nil)
	}

	if b.decay == nil || b.decay.inv != cfg.invDecay() {
		b.decay = newDecay(cfg.invDecay())
	}
	now := clock()
	present := make(map[string]bool, len(children))
	ready := make(map[string]bool, len(children))
	for _, c := range children {
		if len(c.Endpoint.Addresses) == 0 {
			continue
		}
		a := c.Endpoint.Addresses[0].Addr
		present[a] = true
		ready[a] = c.State.ConnectivityState == connectivity.Ready
	}
	for a := range b.stats {
		if !present[a] {
			delete(b.stats, a)
		}
	}
	// Endpoints that are new or became READY again start from the median
	// of their peers' current estimates.
	var fresh []string
	var peers []float64
	for a, r := range ready {
		st := b.stats[a]
		switch {
		case st == nil:
			b.stats[a] = &stats{}
			fresh = append(fresh, a)
		case r && !b.ready[a]:
			fresh = append(fresh, a)
		default:
			if r {
				peers = append(peers, st.estimate(millis(now), b.decay))
			}
		}
	}
	if len(fresh) > 0 {
		start := median(peers)
		for _, a := range fresh {
			b.stats[a].reset(start, now)
		}
	}
	b.ready = ready

	members, _ := lbutil.Ready(children, cfg.Zone)
	if len(members) == 0 {
		b.ClientConn.UpdateState(s)
		return
	}
	p := &picker{
		members: make([]member, len(members)),
		decay:   b.decay,
		penalty: float64(time.Duration(cfg.FailurePenalty).Microseconds()),
		probe:   int64(time.Duration(cfg.ProbeInterval)),
		maxGap:  int64(time.Duration(cfg.MaxProbeInterval)),
	}
	for i, m := range members {
		p.members[i] = member{picker: m.Picker, stats: b.stats[m.Addr]}
	}
	b.ClientConn.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: p})
}

// invDecay is 1/decay in 1/ms.
func (c *Config) invDecay() float64 {
	return 1 / float64(time.Duration(c.Decay).Milliseconds())
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// sampleDecayFactor makes the samples of an endpoint in use average over
// a fiftieth of the decay time (200ms by default), while an endpoint left
// alone decays over the whole of it. A hiccup that slows every RPC in
// flight at once (the client's process stalled by the host, a garbage
// collection) raises the estimate of every busy endpoint to the stall's
// length but not that of an avoided slow one, which had nothing in flight;
// until the busy ones' estimates come back down, the slow one wins
// comparisons (seen in bench/cmd/balance: a 22 ms stall took three 1 ms
// backends' estimates above a 10 ms one's). A tenth of the decay (1s) cut
// the slow backend's share from 1-2% to 0.3-1.4% of the RPCs, a fiftieth
// to 0.2-0.3% (six runs each, alternated).
const sampleDecayFactor = 50

// tieMargin is how much lower one cost must be than the other to win.
const tieMargin = 0.2

// epoch is the origin of clock.
var epoch = time.Now()

// clock returns the monotonic time since epoch, in nanoseconds.
func clock() int64 { return int64(time.Since(epoch)) }

// millis converts a clock reading to the milliseconds the estimates are
// stamped with (wrapping every 49 days; only differences are used).
func millis(clock int64) uint32 { return uint32(clock / 1e6) }

// beats reports whether cost x wins against cost y: it must be lower by
// more than tieMargin, else the two count as equal.
func beats(x, y float64) bool { return x < y*(1-tieMargin) }

// stats is the load estimate of one endpoint, shared by its pickers and
// updated without locks.
type stats struct {
	// est packs the peak-EWMA latency in microseconds (float32, high 32
	// bits) with the time of its last update in milliseconds since epoch
	// (low 32 bits, wrapping every 49 days; only differences are used).
	est atomic.Uint64
	// flight packs the RPCs in flight (low 24 bits) with the picks so far
	// (high 40 bits, wrapping after 2^40), so that a pick is one atomic
	// add instead of two. 2^24 RPCs in flight on one endpoint would carry
	// into the picks; gRPC's stream limits keep far below that.
	flight   atomic.Uint64
	lastPick atomic.Int64  // clock() of the last pick, to a millisecond or so
	errors   atomic.Uint64 // failed RPCs, cancellations by the caller excluded
	// probeGap is the wait before the next probe, in ns, once probes
	// have found the endpoint still slow; 0 means the probe interval.
	probeGap atomic.Int64
	_        [24]byte // to 64 bytes: endpoints do not share a cache line
}

const (
	flightBits = 24
	flightMask = 1<<flightBits - 1
	// flightPick counts a pick and an RPC in flight.
	flightPick = 1<<flightBits | 1
	// flightDone (-1) ends an RPC in flight.
	flightDone = ^uint64(0)
)

// pending returns the RPCs in flight.
func (s *stats) pending() int64 { return int64(s.flight.Load() & flightMask) }

// picks returns the picks so far (modulo 2^40).
func (s *stats) picks() uint64 { return s.flight.Load() >> flightBits }

func pack(costUs float64, ms uint32) uint64 {
	return uint64(math.Float32bits(float32(costUs)))<<32 | uint64(ms)
}

func unpack(w uint64) (costUs float64, ms uint32) {
	return float64(math.Float32frombits(uint32(w >> 32))), uint32(w)
}

func (s *stats) reset(costUs float64, now int64) {
	s.est.Store(pack(costUs, millis(now)))
	s.lastPick.Store(now)
}

// picked records a pick at now. It writes only when the record is a
// millisecond old, so that the cache line is not written on every pick.
func (s *stats) picked(now int64) {
	if now-s.lastPick.Load() > 1e6 {
		s.lastPick.Store(now)
	}
}

// replace sets the estimate to a probe's sample.
func (s *stats) replace(sampleUs float64, now int64) {
	s.est.Store(pack(sampleUs, millis(now)))
}

// estimate returns the latency estimate at nowMs (millis(clock())), decayed
// towards zero for the time since its last update. The common case, an
// estimate updated within the same millisecond, is inlined into Pick.
func (s *stats) estimate(nowMs uint32, d *decay) float64 {
	w := s.est.Load()
	if uint32(w) == nowMs {
		return float64(math.Float32frombits(uint32(w >> 32)))
	}
	cost, ms := unpack(w)
	return cost * d.factor(nowMs-ms)
}

// decay holds the factors e^(-age/decay) by which an estimate shrinks
// after age whole milliseconds without an update. An endpoint that loses
// every comparison is decayed on every Pick it takes part in, and math.Exp
// took about 30 ns here (a polynomial, 15): two loads from 1 KB of
// tables and a multiply take 2.
type decay struct {
	inv    float64     // 1/decay in 1/ms
	lo, hi [64]float64 // e^(-i*inv) and e^(-64*i*inv)
}

func newDecay(inv float64) *decay {
	d := &decay{inv: inv}
	for i := range d.lo {
		d.lo[i] = math.Exp(-float64(i) * inv)
		d.hi[i] = math.Exp(-float64(64*i) * inv)
	}
	return d
}

// factor returns e^(-age/decay), age in milliseconds.
func (d *decay) factor(age uint32) float64 {
	if age < 64*64 {
		return d.lo[age%64] * d.hi[age/64]
	}
	return expNeg(float64(age) * d.inv)
}

// observe folds a latency sample into the estimate: a sample above it
// replaces it; one below it is averaged in with a weight that grows with the
// time since the last update, so a sample below an estimate updated within
// the same millisecond changes nothing (checked inline, without a write).
func (s *stats) observe(sampleUs float64, nowMs uint32, invDecay float64) {
	if w := s.est.Load(); uint32(w) == nowMs && sampleUs < float64(math.Float32frombits(uint32(w>>32))) {
		return
	}
	s.fold(sampleUs, nowMs, invDecay)
}

func (s *stats) fold(sampleUs float64, nowMs uint32, invDecay float64) {
	for {
		old := s.est.Load()
		cost, ms := unpack(old)
		next := sampleUs
		if sampleUs < cost {
			if nowMs == ms {
				return // no time has passed: the weight of the sample is 0
			}
			w := expNeg(float64(nowMs-ms) * invDecay)
			next = cost*w + sampleUs*(1-w)
		}
		if s.est.CompareAndSwap(old, pack(next, nowMs)) {
			return
		}
	}
}

// expNeg returns e^-x for x >= 0, within a relative 2e-7 of math.Exp, in
// about half its time.
func expNeg(x float64) float64 {
	y := x * math.Log2E // e^-x = 2^-y = 2^-k * 2^-f
	if !(y < 1000) {
		return 0 // also NaN; and below 2^-1000 every estimate is 0
	}
	k := uint64(y)
	t := (y - float64(k)) * math.Ln2 // 2^-f = e^-t, t in [0, ln 2)
	// e^-t by its Taylor series to t^8 (Horner's scheme, coefficients
	// 1/n!): the first term left out is under 0.7^9/9! = 1.1e-7.
	u := -t
	p := 1 + u*(1+u*(1.0/2+u*(1.0/6+u*(1.0/24+u*(1.0/120+u*(1.0/720+u*(1.0/5040+u*(1.0/40320))))))))
	return p * math.Float64frombits((1023-k)<<52)
}

type member struct {
	picker balancer.Picker
	stats  *stats
}

// picker is immutable; the estimates it reads are shared atomics.
type picker struct {
	members []member
	decay   *decay
	penalty float64 // microseconds
	probe   int64   // probe interval, ns
	maxGap  int64   // the longest wait between probes, ns
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	now := clock()
	c := calls.Get().(*call)
	m := &p.members[0]
	probe := false
	if n := len(p.members); n > 1 {
		// Two distinct indexes from one random draw: each half, scaled
		// by a multiply and a shift.
		r := c.rand()
		i := int((r >> 32) * uint64(n) >> 32)
		j := int((r & 0xffffffff) * uint64(n-1) >> 32)
		if j >= i {
			j++
		}
		a, b := &p.members[i], &p.members[j]
		nowMs := millis(now)
		ca := a.stats.estimate(nowMs, p.decay) * float64(a.stats.pending()+1)
		cb := b.stats.estimate(nowMs, p.decay) * float64(b.stats.pending()+1)
		// Costs within tieMargin of each other count as equal, and a is
		// the random one: endpoints alike get alike shares, instead of
		// the one whose estimate happens to be a few microseconds lower
		// taking almost everything while no RPC is in flight.
		m = a
		loser := b
		c.rival = cb
		if beats(cb, ca) {
			m, loser = b, a
			c.rival = ca
		}
		// A loser left alone for the probe interval (or the longer gap
		// earlier probes left) is measured afresh; the CAS lets one pick
		// among concurrent ones do it.
		if last := loser.stats.lastPick.Load(); now-last > max(p.probe, loser.stats.probeGap.Load()) &&
			loser.stats.pending() == 0 && loser.stats.lastPick.CompareAndSwap(last, now) {
			m, probe = loser, true
			c.rival = min(ca, cb)
		}
	} else {
		c.rival = math.Inf(1)
	}
	res, err := m.picker.Pick(info)
	if err != nil {
		calls.Put(c)
		return res, err
	}
	// Count the RPC in flight on m and hook its Done.
	m.stats.picked(now)
	m.stats.flight.Add(flightPick)
	c.stats, c.start, c.p, c.childDone, c.probe = m.stats, now, p, res.Done, probe
	res.Done = c.done
	return res, nil
}

// call carries one RPC from Pick to Done. Calls are pooled, and each keeps
// its Done function bound once, so that a pick allocates nothing.
type call struct {
	stats     *stats
	start     int64
	probe     bool
	rival     float64 // the cost of the endpoint the picked one was compared with
	p         *picker
	childDone func(balancer.DoneInfo)
	done      func(balancer.DoneInfo)
	// seed is the state of the call's own random sequence (splitmix64),
	// which Pick draws from while it holds the call: cheaper than the
	// runtime's generator and, the call being Pick's alone until it is
	// pooled again, without any synchronisation.
	seed uint64
}

// rand returns the next number of the call's splitmix64 sequence.
func (c *call) rand() uint64 {
	c.seed += 0x9e3779b97f4a7c15
	z := c.seed
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

var calls sync.Pool

func newCall() any {
	c := &call{seed: rand.Uint64()}
	c.done = c.finish
	return c
}

func (c *call) finish(info balancer.DoneInfo) {
	now := clock()
	s, p, childDone, probe, rival := c.stats, c.p, c.childDone, c.probe, c.rival
	sample := float64(now-c.start) * 1e-3 // µs
	c.stats, c.p, c.childDone, c.probe = nil, nil, nil, false
	calls.Put(c)

	s.flight.Add(flightDone)
	observe, trouble := true, false
	if info.Err != nil {
		switch status.Code(info.Err) {
		case codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Internal:
			sample = max(sample, p.penalty)
			trouble = true
		case codes.Canceled:
			observe = false // the caller gave up; says nothing of the instance
		}
		if observe {
			s.errors.Add(1)
		}
	}
	if observe {
		if probe {
			s.replace(sample, now)
		} else {
			s.observe(sample, millis(now), p.decay.inv*sampleDecayFactor)
		}
		// The wait before the next probe doubles when a probe, or any
		// failure, shows the endpoint still worse than the rival it was
		// compared with, and halves when an answer shows it better: a
		// slow instance is probed ever less often, one that fails half
		// its calls does not win back every other probe's worth of
		// traffic, and a hiccup (one slow answer, no failure) leaves the
		// wait alone.
		if beats(rival, sample) {
			if probe || trouble {
				s.probeGap.Store(min(2*max(s.probeGap.Load(), p.probe), p.maxGap))
			}
		} else if g := s.probeGap.Load(); g != 0 {
			if g /= 2; g < p.probe {
				g = 0
			}
			s.probeGap.Store(g)
		}
	}
	if childDone != nil {
		childDone(info)
	}
}
