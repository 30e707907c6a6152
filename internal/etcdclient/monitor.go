package etcdclient

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/internal/promx"
)

// The member health monitor of clients with 2 or more endpoints (see New).
//
// clientv3 round-robins every new RPC and stream over one gRPC connection
// per endpoint, and keeps a connection in use until gRPC's keepalive gives
// up on it (10s + 3s at the least). A member that is partitioned from the
// client (the TCP connection stays open, nothing is answered) therefore
// gets a third of the retries of a 3-member cluster for that long. The
// monitor asks every member for its gRPC health (grpc.health.v1.Health/Check,
// which etcd serves without authentication and answers without a raft round
// trip) on a connection of its own, and takes an endpoint that fails
// failAfter checks in a row out of the client's endpoints, as long as
// another endpoint answers; it closes the client's connections to it, so
// that the streams on it (watches, lease keepalives) fail over at once, and
// puts it back after recoverAfter good checks in a row.
const (
	probeInterval = 500 * time.Millisecond
	probeTimeout  = 800 * time.Millisecond
	failAfter     = 2
	recoverAfter  = 2
)

// monitor watches the health of a client's endpoints.
type monitor struct {
	cli     *clientv3.Client
	eps     []string // as configured
	tracker *connTracker
	log     *slog.Logger

	met *monitorMetrics

	mu       sync.Mutex
	state    []probeState
	applied  []string        // the endpoints last given to the client
	out      map[string]bool // the endpoints taken out, as counted in met.excluded
	disabled bool            // somebody else set the client's endpoints
}

// monitorMetrics are the monitor's Prometheus collectors, shared by the
// clients of a Registerer.
type monitorMetrics struct {
	exclusions *prometheus.CounterVec
	excluded   *prometheus.GaugeVec
}

// newMonitorMetrics registers the monitor's collectors with reg (nil:
// collectors that nobody reads).
func newMonitorMetrics(reg prometheus.Registerer) (*monitorMetrics, error) {
	ex, err := promx.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "muster_etcd_endpoint_exclusions_total",
		Help: "Times an etcd endpoint was taken out of a client's endpoints because it failed its health checks while another answered.",
	}, []string{"endpoint"}))
	if err != nil {
		return nil, err
	}
	out, err := promx.Register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "muster_etcd_endpoint_excluded",
		Help: "Clients that have an etcd endpoint taken out now (0 when every endpoint is in use).",
	}, []string{"endpoint"}))
	if err != nil {
		return nil, err
	}
	return &monitorMetrics{exclusions: ex, excluded: out}, nil
}

type probeState struct {
	fails, oks int
	down       bool
}

// startMonitor starts the monitor of cli, whose connections tracker
// dials, and returns it; it stops when cli is closed.
func startMonitor(cli *clientv3.Client, tracker *connTracker, log *slog.Logger, met *monitorMetrics) (*monitor, error) {
	eps := slices.Clone(cli.Endpoints())
	m := &monitor{
		cli:     cli,
		eps:     eps,
		tracker: tracker,
		log:     log,
		met:     met,
		out:     map[string]bool{},
		state:   make([]probeState, len(eps)),
		applied: slices.Clone(eps),
	}
	conns := make([]*grpc.ClientConn, len(eps))
	for i, ep := range eps {
		c, err := cli.Dial(ep) // the client's TLS, dial options and interceptors
		if err != nil {
			for _, c := range conns[:i] {
				_ = c.Close()
			}
			return nil, err
		}
		conns[i] = c
	}
	for i, c := range conns {
		go m.probeLoop(i, c)
	}
	return m, nil
}

// probeLoop checks endpoint i on conn until the client is closed.
func (m *monitor) probeLoop(i int, conn *grpc.ClientConn) {
	defer conn.Close()
	defer func() {
		// The client is closed: it no longer keeps anything out.
		m.mu.Lock()
		defer m.mu.Unlock()
		if ep := m.eps[i]; m.out[ep] {
			delete(m.out, ep)
			m.met.excluded.WithLabelValues(ep).Dec()
		}
	}()
	ctx := m.cli.Ctx()
	hc := healthpb.NewHealthClient(conn)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		resp, err := hc.Check(pctx, &healthpb.HealthCheckRequest{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		ok := err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
		var why string
		switch {
		case err != nil:
			why = err.Error()
		case !ok:
			why = "health " + resp.GetStatus().String()
		}
		m.report(i, ok, why)
		t.Reset(max(0, probeInterval-time.Since(start)))
	}
}

// report records the outcome of a check of endpoint i.
func (m *monitor) report(i int, ok bool, why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &m.state[i]
	if ok {
		s.fails = 0
		s.oks++
		if !s.down || s.oks < recoverAfter {
			return
		}
		s.down = false
		m.log.Info("etcd endpoint answers health checks again", "endpoint", m.eps[i])
	} else {
		s.oks = 0
		s.fails++
		if s.down || s.fails < failAfter {
			return
		}
		s.down = true
		m.log.Warn("etcd endpoint does not answer health checks", "endpoint", m.eps[i], "checks", s.fails, "error", why)
	}
	m.apply()
}

// apply gives the client the endpoints that answer, or all of them if none
// does. m.mu is held.
func (m *monitor) apply() {
	if m.disabled {
		return
	}
	var want []string
	answers := false // an endpoint answered its last check
	for i, ep := range m.eps {
		s := m.state[i]
		if !s.down {
			want = append(want, ep)
			answers = answers || (s.fails == 0 && s.oks > 0)
		}
	}
	if !answers {
		// etcd down, or the client's network: no better endpoint to go to.
		want = m.eps
		m.log.Warn("no etcd endpoint answers health checks; keeping them all", "endpoints", m.eps)
	}
	if slices.Equal(want, m.applied) {
		return
	}
	if cur := m.cli.Endpoints(); !slices.Equal(cur, m.applied) {
		// Somebody else (clientv3's Sync, say) manages the endpoints.
		m.disabled = true
		m.log.Warn("etcd client endpoints changed outside the health monitor; it no longer changes them",
			"endpoints", cur)
		return
	}
	// Counted before the change is made, so that whoever sees the change
	// sees it counted.
	for _, ep := range m.eps {
		switch out := !slices.Contains(want, ep); {
		case out && !m.out[ep]:
			m.out[ep] = true
			m.met.exclusions.WithLabelValues(ep).Inc()
			m.met.excluded.WithLabelValues(ep).Inc()
		case !out && m.out[ep]:
			delete(m.out, ep)
			m.met.excluded.WithLabelValues(ep).Dec()
		}
	}
	m.cli.SetEndpoints(want...)
	for _, ep := range m.applied {
		if !slices.Contains(want, ep) {
			// Removing an endpoint shuts its subchannel down gracefully:
			// the streams open on it stay there until the connection dies.
			// Cut it, so that they fail over now.
			m.tracker.closeConns(parseEndpoint(ep))
		}
	}
	m.log.Info("etcd client endpoints changed", "endpoints", want, "excluded", excluded(m.eps, want))
	m.applied = slices.Clone(want)
}

func excluded(all, kept []string) []string {
	var out []string
	for _, ep := range all {
		if !slices.Contains(kept, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// connTracker is a gRPC dialer that remembers the open connections per
// address, so that those to an endpoint can be closed.
type connTracker struct {
	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
}

func newConnTracker() *connTracker {
	return &connTracker{conns: map[string]map[*trackedConn]struct{}{}}
}

// trackerKey is the key of an address as the connTracker stores it.
func trackerKey(network, addr string) string { return network + " " + addr }

// dial dials addr as gRPC's default dialer does (for the addresses clientv3
// gives it: host:port, unix:path and unix://absolute-path) and tracks the
// connection.
func (t *connTracker) dial(ctx context.Context, addr string) (net.Conn, error) {
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, address = "unix", p
	} else if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", p
	}
	// TCP keepalive on, with the system's timings, like gRPC's dialer.
	d := net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}}
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, t: t, key: trackerKey(network, address)}
	t.mu.Lock()
	set := t.conns[tc.key]
	if set == nil {
		set = map[*trackedConn]struct{}{}
		t.conns[tc.key] = set
	}
	set[tc] = struct{}{}
	t.mu.Unlock()
	return tc, nil
}

// closeConns closes the open connections to the endpoint.
func (t *connTracker) closeConns(ep target) {
	key := trackerKey(ep.network, ep.addr)
	t.mu.Lock()
	var cs []*trackedConn
	for c := range t.conns[key] {
		cs = append(cs, c)
	}
	t.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

func (t *connTracker) forget(c *trackedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if set := t.conns[c.key]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(t.conns, c.key)
		}
	}
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	key  string
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.t.forget(c) })
	return c.Conn.Close()
}
