package p2c

import (
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fixedPicker stands for an endpoint's pick_first picker.
type fixedPicker struct{ n int }

func (p *fixedPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{}, nil
}

func newTestPicker(n int) (*picker, []*fixedPicker) {
	cfg, err := ParseConfig([]byte(`{"decay":"1s","failurePenalty":"500ms"}`))
	if err != nil {
		panic(err)
	}
	p := &picker{decay: newDecay(cfg.invDecay()), penalty: float64(time.Duration(cfg.FailurePenalty).Microseconds()), probe: int64(time.Duration(cfg.ProbeInterval)),
		maxGap: int64(time.Duration(cfg.MaxProbeInterval))}
	var fs []*fixedPicker
	for i := range n {
		f := &fixedPicker{n: i}
		fs = append(fs, f)
		st := &stats{}
		st.reset(0, clock())
		p.members = append(p.members, member{picker: f, stats: st})
	}
	return p, fs
}

// TestPickAllocatesNothing: Pick followed by Done allocates nothing.
func TestPickAllocatesNothing(t *testing.T) {
	for _, n := range []int{1, 2, 10, 100} {
		p, _ := newTestPicker(n)
		allocs := testing.AllocsPerRun(1000, func() {
			res, err := p.Pick(balancer.PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			res.Done(balancer.DoneInfo{})
		})
		if allocs != 0 {
			t.Errorf("%d endpoints: %v allocations per Pick+Done, want 0", n, allocs)
		}
	}
}

func TestPeakEWMA(t *testing.T) {
	const invDecay = 1.0 / 1000 // 1s
	d := newDecay(invDecay)
	s := &stats{}
	now := int64(time.Hour) // any time
	s.reset(1000, now)      // 1ms
	// A spike is taken at once.
	s.observe(50_000, millis(now+int64(time.Millisecond)), invDecay)
	if got := s.estimate(millis(now+int64(time.Millisecond)), d); got != 50_000 {
		t.Fatalf("after a 50ms sample the estimate is %vµs, want 50000", got)
	}
	// Lower samples pull it down gradually: one decay time later, 63% of
	// the way.
	s.observe(1000, millis(now+int64(time.Second)+int64(time.Millisecond)), invDecay)
	got := s.estimate(millis(now+int64(time.Second)+int64(time.Millisecond)), d)
	want := 50_000*0.3679 + 1000*0.6321
	if got < want*0.99 || got > want*1.01 {
		t.Fatalf("one decay time after the spike the estimate is %vµs, want about %vµs", got, want)
	}
	// Unobserved, it decays towards zero, so the endpoint is tried again.
	later := s.estimate(millis(now+int64(5*time.Second)), d)
	if later > got*0.05 {
		t.Fatalf("4s without samples the estimate is %vµs, want under 5%% of %v", later, got)
	}
}

// TestFailuresRaiseCost: a failure that says the instance is in trouble
// counts as at least the penalty; a cancellation counts as nothing.
func TestFailuresRaiseCost(t *testing.T) {
	p, _ := newTestPicker(1)
	s := p.members[0].stats
	done := func(err error) {
		res, perr := p.Pick(balancer.PickInfo{})
		if perr != nil {
			t.Fatal(perr)
		}
		res.Done(balancer.DoneInfo{Err: err})
	}
	done(status.Error(codes.Canceled, "gave up"))
	if c, _ := unpack(s.est.Load()); c != 0 {
		t.Fatalf("a cancelled RPC moved the estimate to %vµs", c)
	}
	done(status.Error(codes.NotFound, "no such order"))
	if c, _ := unpack(s.est.Load()); c >= 100_000 {
		t.Fatalf("an application error counted as a failure: estimate %vµs", c)
	}
	for _, code := range []codes.Code{codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Internal} {
		s.reset(0, clock())
		done(status.Error(code, "trouble"))
		if c, _ := unpack(s.est.Load()); c < 500_000 {
			t.Errorf("%v: estimate %vµs after the failure, want at least the 500ms penalty", code, c)
		}
	}
	if n := s.pending(); n != 0 {
		t.Fatalf("%d RPCs still counted in flight after their Done", n)
	}
}

// TestPrefersCheaper: with one endpoint ten times slower, p2c sends it
// (almost) nothing; picks are counted in flight until Done.
func TestPrefersCheaper(t *testing.T) {
	p, fs := newTestPicker(4)
	now := clock()
	for i, m := range p.members {
		cost := 1000.0
		if i == 2 {
			cost = 10_000
		}
		m.stats.reset(cost, now)
	}
	counts := map[*fixedPicker]int{}
	for range 4000 {
		// Pick returns the child's (empty) result; find which one by
		// comparing pending counters.
		before := make([]int64, len(p.members))
		for i, m := range p.members {
			before[i] = m.stats.pending()
		}
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range p.members {
			if m.stats.pending() != before[i] {
				counts[fs[i]]++
			}
		}
		res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")}) // keep estimates as set
	}
	if c := counts[fs[2]]; c != 0 {
		t.Errorf("the slow endpoint got %d of 4000 picks, want 0 (it loses every comparison)", c)
	}
	for _, i := range []int{0, 1, 3} {
		if c := counts[fs[i]]; c < 1000 {
			t.Errorf("endpoint %d got %d of 4000 picks, want about 1333", i, c)
		}
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestProbe: an endpoint avoided for the probe interval is picked once as a
// probe, and a fast answer to the probe replaces its estimate.
func TestProbe(t *testing.T) {
	p, _ := newTestPicker(2)
	now := clock()
	fast, slow := p.members[0].stats, p.members[1].stats
	fast.reset(1000, now)
	slow.reset(50_000, now)
	slow.lastPick.Store(now - int64(2*time.Second)) // avoided for 2s
	var probe balancer.PickResult
	picks := 0
	for range 100 {
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if slow.pending() == 1 && probe.Done == nil {
			probe = res // keep the probe in flight
			picks++
			continue
		}
		if slow.pending() > 1 {
			picks++
		}
		res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
	}
	if picks != 1 {
		t.Fatalf("the avoided endpoint got %d of 100 picks, want 1 probe", picks)
	}
	probe.Done(balancer.DoneInfo{}) // answered at once: healthy again
	if c := slow.estimate(millis(clock()), p.decay); c > 10_000 {
		t.Fatalf("after a fast probe the estimate is still %vµs", c)
	}
}

// TestProbeBackoff: probes that find an endpoint still slower than its
// rival wait twice as long each time, up to the longest gap; answers that
// would win halve the wait, and failures double it.
func TestProbeBackoff(t *testing.T) {
	p, _ := newTestPicker(2)
	p.probe, p.maxGap = int64(5*time.Millisecond), int64(20*time.Millisecond)
	now := clock()
	fast, slow := p.members[0].stats, p.members[1].stats
	fast.reset(1000, now)
	slow.reset(50_000, now)
	slow.lastPick.Store(now - int64(time.Second))

	// nextProbe picks until the slow endpoint gets a probe and returns the
	// probe's RPC and the clock() reading of its Pick.
	nextProbe := func() (balancer.PickResult, int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			res, err := p.Pick(balancer.PickInfo{})
			if err != nil {
				t.Fatal(err)
			}
			if slow.pending() == 1 {
				return res, slow.lastPick.Load() // the probe's Pick time
			}
			res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
		}
		t.Fatal("no probe of the slow endpoint within 10s")
		return balancer.PickResult{}, 0
	}
	unavailable := balancer.DoneInfo{Err: status.Error(codes.Unavailable, "")}

	probe, last := nextProbe()
	probe.Done(unavailable) // counts as the 500ms penalty: still the loser
	for _, want := range []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 20 * time.Millisecond} {
		if got := time.Duration(slow.probeGap.Load()); got != want {
			t.Fatalf("after a failed probe the wait is %v, want %v", got, want)
		}
		probe, at := nextProbe()
		if gap := time.Duration(at - last); gap < want {
			t.Fatalf("a probe came %v after the previous one, want at least %v", gap, want)
		}
		last = at
		probe.Done(unavailable)
	}
	probe, _ = nextProbe()
	probe.Done(balancer.DoneInfo{}) // answered at once: faster than its 1ms rival
	if got := time.Duration(slow.probeGap.Load()); got != 10*time.Millisecond {
		t.Fatalf("after a fast probe the wait is %v, want it halved to 10ms", got)
	}
	// Now the faster one, it wins every pick; two more fast answers bring
	// the wait down to the probe interval.
	// (The other one may get a probe of its own, should the test be
	// descheduled past the 5ms probe interval; it is answered as
	// cancelled, which changes nothing.)
	for answered, picks := 0, 0; answered < 2; picks++ {
		if picks == 100 {
			t.Fatal("the endpoint that answered its probe fastest got 2 of 100 picks")
		}
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if slow.pending() == 1 {
			res.Done(balancer.DoneInfo{})
			answered++
		} else {
			res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
		}
	}
	if got := slow.probeGap.Load(); got != 0 {
		t.Fatalf("after three fast answers the wait is %v, want 0 (the probe interval)", time.Duration(got))
	}
	// A failure, probe or not, doubles it again.
	for picks := 0; ; picks++ {
		if picks == 100 {
			t.Fatal("the faster endpoint got none of 100 picks")
		}
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if slow.pending() == 1 {
			res.Done(unavailable)
			break
		}
		res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
	}
	if got := time.Duration(slow.probeGap.Load()); got != 10*time.Millisecond {
		t.Fatalf("after a failure the wait is %v, want 10ms", got)
	}
}

// TestTiesSpread: endpoints whose costs are within the tie margin share the
// picks evenly.
func TestTiesSpread(t *testing.T) {
	p, _ := newTestPicker(2)
	now := clock()
	p.members[0].stats.reset(1000, now)
	p.members[1].stats.reset(1100, now)
	var first int
	for range 4000 {
		res, err := p.Pick(balancer.PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		if p.members[0].stats.pending() == 1 {
			first++
		}
		res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
	}
	if first < 1700 || first > 2300 {
		t.Fatalf("the endpoint 10%% cheaper got %d of 4000 picks, want about half", first)
	}
}

// TestExpNeg: the estimates' decay agrees with math.Exp.
func TestExpNeg(t *testing.T) {
	check := func(x float64) {
		t.Helper()
		got, want := expNeg(x), math.Exp(-x)
		if want == 0 || want < 1e-300 {
			if got > 1e-300 {
				t.Fatalf("expNeg(%v) = %v, want about %v", x, got, want)
			}
			return
		}
		if math.Abs(got-want)/want > 2e-7 {
			t.Fatalf("expNeg(%v) = %v, want %v (relative error %.2g)", x, got, want, math.Abs(got-want)/want)
		}
	}
	for x := 0.0; x < 800; x += 0.0007 {
		check(x)
	}
	for _, x := range []float64{0, 1e-12, 0.5, math.Ln2, 1, 10, 693, 694, 1000, 1e9, math.Inf(1)} {
		check(x)
	}
	if got := expNeg(math.NaN()); got != 0 {
		t.Fatalf("expNeg(NaN) = %v, want 0", got)
	}
}

// TestDecayFactor: the table-driven decay agrees with math.Exp at every
// age, on either side of the tables' end.
func TestDecayFactor(t *testing.T) {
	for _, decayMs := range []float64{1, 10, 1000, 10_000, 3_600_000} {
		d := newDecay(1 / decayMs)
		for age := uint32(0); age < 10_000; age++ {
			got, want := d.factor(age), math.Exp(-float64(age)/decayMs)
			if want < 1e-300 {
				if got > 1e-300 {
					t.Fatalf("decay %vms, age %dms: factor %v, want about %v", decayMs, age, got, want)
				}
				continue
			}
			if math.Abs(got-want)/want > 2e-7 {
				t.Fatalf("decay %vms, age %dms: factor %v, want %v", decayMs, age, got, want)
			}
		}
	}
}
