package main

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Buckets of latencyHist: bucket 0 holds everything below histMin, bucket i
// (from 1) durations in [histMin·g^(i-1), histMin·g^i), g = histGrowth; the
// last one everything above.
const (
	histMin     = time.Microsecond
	histGrowth  = 1.02
	histBuckets = 1000 // 1µs·1.02^999 ≈ 6.6 minutes
)

var logGrowth = math.Log(histGrowth)

// latencyHist counts durations in logarithmic buckets 2% wide, so that its
// quantiles are within 1% of the true ones, in constant memory.
type latencyHist struct {
	counts [histBuckets]uint32
	n      int64
}

func (h *latencyHist) add(d time.Duration) {
	i := 0
	if d >= histMin {
		i = min(int(math.Log(float64(d)/float64(histMin))/logGrowth)+1, histBuckets-1)
	}
	h.counts[i]++
	h.n++
}

// quantile returns the q-quantile (0 < q <= 1): the geometric middle of the
// bucket that holds it. It returns 0 for an empty histogram.
func (h *latencyHist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	var seen int64
	for i, c := range h.counts {
		seen += int64(c)
		if seen >= rank {
			if i == 0 {
				return histMin / 2
			}
			return time.Duration(float64(histMin) * math.Pow(histGrowth, float64(i)-0.5))
		}
	}
	return 0 // not reached
}

func (h *latencyHist) reset() { *h = latencyHist{} }

// backendStats are the counts of one backend (or of all, or of failed
// requests that reached none).
type backendStats struct {
	label, addr, state string
	slot, gen          int
	shownStopped       bool // a table has shown it stopped

	window            latencyHist // successful requests of the current window
	windowReqs        int64       // requests of the current window, failed ones too
	total, ok, errors int64
}

// demoRow is one line of the table.
type demoRow struct {
	label, addr, state    string
	window, total, errors int64
	ok                    int64 // successful requests of the window
	p50, p99              time.Duration
}

func (b *backendStats) row() demoRow {
	return demoRow{
		label: b.label, addr: b.addr, state: b.state,
		window: b.windowReqs, total: b.total, errors: b.errors,
		ok: b.window.n, p50: b.window.quantile(0.5), p99: b.window.quantile(0.99),
	}
}

// failureKey groups failed requests for the summary.
type failureKey struct{ backend, err string }

// demoSummary is the outcome of the whole run.
type demoSummary struct {
	requests, ok, failed int64
	p50, p99             time.Duration
	failures             []failureCount // most frequent first
}

type failureCount struct {
	backend, err string
	count        int64
}

// demoStats counts the requests of the demo, by backend, for the table, the
// summary and Prometheus. It is safe for concurrent use.
type demoStats struct {
	requests *prometheus.CounterVec
	failures *prometheus.CounterVec
	latency  prometheus.Histogram

	mu       sync.Mutex
	backends []*backendStats // by slot, then generation
	byLabel  map[string]*backendStats
	byAddr   map[string]*backendStats
	none     backendStats // failed requests that reached no backend
	all      backendStats
	allHist  latencyHist // successful requests of the whole run
	failed   map[failureKey]int64

	// The last table, for the dashboard: its rows, how long its window
	// lasted, and whether lastTable has returned it already.
	last       []demoRow
	lastWindow time.Duration
	lastTaken  bool
	rotatedAt  time.Time
}

// newDemoStats returns empty stats whose collectors are registered with reg.
func newDemoStats(reg prometheus.Registerer) *demoStats {
	s := &demoStats{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "muster_demo_requests_total",
			Help: "Requests the demo's client sent, failed ones included, by the backend that served them (\"-\": none reached).",
		}, []string{"backend"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "muster_demo_failures_total",
			Help: "Requests of the demo's client that failed, by the backend they reached (\"-\": none).",
		}, []string{"backend"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "muster_demo_request_duration_seconds",
			Help:    "Latency of the demo's requests, failed ones included.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2.5, 12), // 100µs .. 2.4s
		}),
		byLabel:   map[string]*backendStats{},
		byAddr:    map[string]*backendStats{},
		none:      backendStats{label: "-"},
		all:       backendStats{label: "all"},
		failed:    map[failureKey]int64{},
		rotatedAt: time.Now(),
		lastTaken: true,
	}
	reg.MustRegister(s.requests, s.failures, s.latency)
	return s
}

// addBackend starts counting a backend that serves at addr.
func (s *demoStats) addBackend(label, addr string, slot, gen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &backendStats{label: label, addr: addr, state: "serving", slot: slot, gen: gen}
	s.backends = append(s.backends, b)
	slices.SortStableFunc(s.backends, func(x, y *backendStats) int {
		return cmp.Or(cmp.Compare(x.slot, y.slot), cmp.Compare(x.gen, y.gen))
	})
	s.byLabel[label] = b
	s.byAddr[addr] = b
}

// setState sets the state the table shows for a backend.
func (s *demoStats) setState(label, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.byLabel[label]; b != nil {
		b.state = state
	}
}

// addr returns a backend's address.
func (s *demoStats) addr(label string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.byLabel[label]; b != nil {
		return b.addr
	}
	return ""
}

// served reports whether a backend has served a request successfully.
func (s *demoStats) served(label string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.byLabel[label]
	return b != nil && b.ok > 0
}

// record counts one request: the address of the backend it reached ("" if
// none), the name the backend answered with, its latency and its error.
func (s *demoStats) record(addr, name string, d time.Duration, err error) {
	s.mu.Lock()
	b := s.byLabel[name]
	if err != nil || b == nil {
		b = s.byAddr[addr]
	}
	if b == nil {
		b = &s.none
	}
	for _, c := range []*backendStats{b, &s.all} {
		c.windowReqs++
		c.total++
		if err != nil {
			c.errors++
		} else {
			c.ok++
			c.window.add(d)
		}
	}
	if err != nil {
		s.failed[failureKey{b.label, errorText(err)}]++
	} else {
		s.allHist.add(d)
	}
	label := b.label
	s.mu.Unlock()

	s.requests.WithLabelValues(label).Inc()
	if err != nil {
		s.failures.WithLabelValues(label).Inc()
	}
	s.latency.Observe(d.Seconds())
}

// rotate returns the rows of the window (a second) that ended and starts
// the next one.
// A stopped backend is shown once more after it stopped, and while requests
// still reach it.
func (s *demoStats) rotate() []demoRow {
	s.mu.Lock()
	defer s.mu.Unlock()
	var rows []demoRow
	for _, b := range s.backends {
		if b.state == "stopped" && b.shownStopped && b.windowReqs == 0 {
			continue
		}
		if b.state == "stopped" {
			b.shownStopped = true
		}
		rows = append(rows, b.row())
	}
	if s.none.total > 0 {
		rows = append(rows, s.none.row())
	}
	rows = append(rows, s.all.row())
	for _, b := range append(slices.Clone(s.backends), &s.none, &s.all) {
		b.window.reset()
		b.windowReqs = 0
	}
	now := time.Now()
	s.last, s.lastWindow, s.lastTaken, s.rotatedAt = rows, now.Sub(s.rotatedAt), false, now
	return rows
}

// lastTable returns the rows of the last window rotate ended and how long
// that window lasted, once: ok is false if it has been returned already.
func (s *demoStats) lastTable() (rows []demoRow, window time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastTaken {
		return nil, 0, false
	}
	s.lastTaken = true
	return s.last, s.lastWindow, true
}

// summary returns the outcome of the run so far.
func (s *demoStats) summary() demoSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	sum := demoSummary{
		requests: s.all.total,
		ok:       s.all.ok,
		failed:   s.all.errors,
		p50:      s.allHist.quantile(0.5),
		p99:      s.allHist.quantile(0.99),
	}
	for k, n := range s.failed {
		sum.failures = append(sum.failures, failureCount{backend: k.backend, err: k.err, count: n})
	}
	slices.SortFunc(sum.failures, func(x, y failureCount) int {
		return cmp.Or(cmp.Compare(y.count, x.count), cmp.Compare(x.backend, y.backend), cmp.Compare(x.err, y.err))
	})
	return sum
}
