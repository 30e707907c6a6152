package ui

import (
	"cmp"
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

//go:embed static
var staticFiles embed.FS

// Sizes and timings. Variables so that tests can shorten them.
var (
	// healthInterval is how often the store's health is read.
	healthInterval = 2 * time.Second
	// healthTimeout bounds one reading of the store's health.
	healthTimeout = 1500 * time.Millisecond
	// leaseInterval is how often lease TTLs are read.
	leaseInterval = time.Second
	// statsInterval is how often a StatsSource is asked for a new reading.
	statsInterval = 250 * time.Millisecond
	// keepAliveInterval is how often an idle event stream gets a comment,
	// so that proxies keep it open and a dead client is noticed.
	keepAliveInterval = 15 * time.Second
)

const (
	// TimelineSize is how many changes the timeline keeps.
	TimelineSize = 200
	// LeaseReadsPerSecond bounds the LeaseTimeToLive requests the dashboard
	// sends to refresh TTLs it already read once.
	LeaseReadsPerSecond = 200
	// logSize bounds the sequenced messages kept for clients that reconnect
	// or fall behind; those further behind get the whole state again.
	logSize = 1024
	// statsSamples is how many StatsSource readings the charts keep.
	statsSamples = 120
	// txnGets bounds the Get operations of one transaction (etcd's default
	// --max-txn-ops is 128).
	txnGets = 128
	// prefixScanAbove is the number of new keys above which their leases are
	// read with one Get of the namespace rather than in
	// transactions.
	prefixScanAbove = 4 * txnGets
	// ttlWorkers bounds the concurrent LeaseTimeToLive requests.
	ttlWorkers = 8
)

// StatsSource gives per-backend request statistics for the dashboard's
// charts, e.g. those of the load `muster demo` sends, typically one reading a
// second. BackendStats is called four times a second from one goroutine; it
// returns the newest reading once, and nil when there is none since the last
// call. It should return quickly.
type StatsSource interface {
	BackendStats() []BackendStats
}

// BackendStats are one backend's figures over the last reading period.
type BackendStats struct {
	// Backend names the backend, e.g. "b1".
	Backend string `json:"backend"`
	// Addr is its address, if known.
	Addr string `json:"addr,omitempty"`
	// State is what it is doing, e.g. "serving" or "stopped".
	State string `json:"state,omitempty"`
	// RPS is the requests a second it received, failed ones included.
	RPS float64 `json:"rps"`
	// Errors is the failed requests of the period.
	Errors int64 `json:"errors"`
	// Total is the requests since the start.
	Total int64 `json:"total"`
	// P50 and P99 are latency quantiles of the successful requests of the
	// period; 0 when there were none.
	P50 time.Duration `json:"-"`
	P99 time.Duration `json:"-"`
}

// Option configures a Server.
type Option func(*options)

type options struct {
	logger     *slog.Logger
	registerer prometheus.Registerer
	namespace  string
	format     string
	stats      StatsSource
}

// WithLogger sets the logger (etcd unreachable and back, failures to read
// leases). Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithRegisterer registers the dashboard's Prometheus collectors (event
// stream clients connected, events sent) and those of its discovery watcher
// with r. Default: none.
func WithRegisterer(r prometheus.Registerer) Option {
	return func(o *options) { o.registerer = r }
}

// WithNamespace sets the key prefix services live under; it is passed to
// discovery.WithNamespace. Default "services".
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithFormat sets the format of the keys and values to read; it is passed to
// discovery.WithFormat. Default "native". discovery.SubscribeAll, the one
// watch of the whole namespace, reads the native format only, so New
// rejects any other for now.
func WithFormat(name string) Option { return func(o *options) { o.format = name } }

// WithStats adds per-backend request charts fed by src.
// Default: no charts.
func WithStats(src StatsSource) Option { return func(o *options) { o.stats = src } }

// Server is the dashboard: an http.Handler serving the page at "/", its
// state at /api/state and its event stream at /api/events. Create it with
// New and stop it with Close. Its methods are safe for concurrent use.
type Server struct {
	cli     *clientv3.Client
	o       options
	prefix  string
	format  keyfmt.Format
	sub     *discovery.Subscription
	mux     *http.ServeMux
	metrics *metrics
	started time.Time
	epoch   string // tells this run's event ids from those of another

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	revision  int64
	skipped   int
	instances map[instKey]*instance
	leases    map[clientv3.LeaseID]*leaseInfo
	pending   map[instKey]bool // instances whose lease is not known yet
	timeline  []timelineEntry  // oldest first, at most TimelineSize
	seq       uint64           // of the last sequenced message
	log       []message        // the latest sequenced messages, oldest first
	watchErr  error
	health    health
	healthMsg message // latest-wins; seq is its version
	stats     []statsSample
	statsMsg  message // latest-wins; seq is its version
	clients   map[chan struct{}]struct{}
	closed    bool
}

// New starts a dashboard of the services in etcd behind cli: it subscribes
// to the whole namespace (one etcd watch, shared with other subscriptions
// of the process through cli) and starts reading the store's health and the
// instances' leases. cli stays the caller's to close, after Close.
func New(cli *clientv3.Client, opts ...Option) (*Server, error) {
	o := options{logger: slog.New(slog.DiscardHandler), namespace: keyfmt.DefaultNamespace, format: "native"}
	for _, opt := range opts {
		opt(&o)
	}
	f, err := keyfmt.Lookup(o.format)
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	if f != keyfmt.Native {
		return nil, fmt.Errorf("ui: format %s: the dashboard watches the whole namespace, which only the native format allows", f.Name())
	}
	if err := keyfmt.ValidateNamespace(o.namespace); err != nil {
		return nil, fmt.Errorf("ui: namespace: %w", err)
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	dopts := []discovery.Option{
		discovery.WithNamespace(o.namespace),
		discovery.WithFormat(o.format),
		discovery.WithLogger(o.logger),
	}
	if o.registerer != nil {
		dopts = append(dopts, discovery.WithRegisterer(o.registerer))
	}
	sub, err := discovery.SubscribeAll(cli, dopts...)
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cli:       cli,
		o:         o,
		prefix:    keyfmt.NamespacePrefix(o.namespace),
		format:    f,
		sub:       sub,
		metrics:   m,
		started:   time.Now(),
		ctx:       ctx,
		cancel:    cancel,
		instances: map[instKey]*instance{},
		leases:    map[clientv3.LeaseID]*leaseInfo{},
		pending:   map[instKey]bool{},
		clients:   map[chan struct{}]struct{}{},
	}
	s.epoch = strconv.FormatInt(s.started.UnixNano(), 36)
	s.health.Endpoints = cli.Endpoints()
	s.setHealthLocked()
	s.mux = http.NewServeMux()
	static, _ := fs.Sub(staticFiles, "static")
	s.mux.Handle("GET /", http.FileServerFS(static))
	s.mux.HandleFunc("GET /api/state", s.serveState)
	s.mux.HandleFunc("GET /api/events", s.serveEvents)

	s.wg.Go(s.watchLoop)
	s.wg.Go(s.healthLoop)
	s.wg.Go(s.leaseLoop)
	if o.stats != nil {
		s.wg.Go(s.statsLoop)
	}
	return s, nil
}

// ServeHTTP serves the page and its API. Only GET (and HEAD) requests are
// answered.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	s.mux.ServeHTTP(w, r)
}

// Close stops the dashboard: its discovery subscription, its readers of
// etcd, and the event streams being served, which end at once. Call it
// before the http.Server's Shutdown, which waits for them. Close is
// idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.sub.Close()
	s.wg.Wait()
}

// instKey identifies an instance.
type instKey struct{ service, id string }

// instance is one instance as the dashboard knows it.
type instance struct {
	ep        endpoint.Endpoint
	lease     clientv3.LeaseID // NoLease until read, or for a key without one
	createRev int64
	firstSeen time.Time
	atStart   bool // present in the first snapshot
}

// instanceJSON is an instance on the wire.
type instanceJSON struct {
	Service string            `json:"service"`
	ID      string            `json:"id"`
	Addr    string            `json:"addr"`
	Zone    string            `json:"zone,omitempty"`
	Version string            `json:"version,omitempty"`
	Weight  int               `json:"weight"`
	Tags    map[string]string `json:"tags,omitempty"`
	// Lease is the lease ID in hex, "" while unknown, "0" for none.
	Lease          string `json:"lease,omitempty"`
	CreateRevision int64  `json:"createRevision,omitempty"`
	// FirstSeen is when the dashboard first saw the instance, in Unix
	// milliseconds; AtStart says it was there when the dashboard started.
	FirstSeen int64 `json:"firstSeen"`
	AtStart   bool  `json:"atStart,omitempty"`
}

func (in *instance) json() instanceJSON {
	j := instanceJSON{
		Service: in.ep.Service, ID: in.ep.ID, Addr: in.ep.Addr, Zone: in.ep.Zone, Version: in.ep.Version,
		Weight: in.ep.EffectiveWeight(), Tags: in.ep.Tags,
		CreateRevision: in.createRev, FirstSeen: in.firstSeen.UnixMilli(), AtStart: in.atStart,
	}
	if in.createRev != 0 {
		j.Lease = leaseHex(in.lease)
	}
	return j
}

func leaseHex(id clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(id)) }

// leaseInfo is the last reading of a lease.
type leaseInfo struct {
	ttl, granted int64 // seconds; ttl -1 when expired or not found
	readAt       time.Time
	users        int // instances attached to it
}

type leaseJSON struct {
	TTL     int64 `json:"ttl"`
	Granted int64 `json:"granted"`
	At      int64 `json:"at"` // Unix ms of the reading
}

// timelineEntry is one change, as the timeline shows it.
type timelineEntry struct {
	Kind     string `json:"kind"`
	Service  string `json:"service"`
	ID       string `json:"id"`
	Addr     string `json:"addr"`
	Revision int64  `json:"revision"`
	Time     int64  `json:"time"` // Unix ms
}

// health is the store's health on the wire.
type health struct {
	// Stale is set while etcd does not answer or the watcher reports an
	// error: the page shows the last known state.
	Stale bool   `json:"stale"`
	Error string `json:"error,omitempty"`
	// StaleSince is when it became stale, in Unix ms.
	StaleSince int64        `json:"staleSince,omitempty"`
	Endpoints  []string     `json:"endpoints"`
	Members    []memberJSON `json:"members"`
	Leader     string       `json:"leader,omitempty"`
	Revision   int64        `json:"revision"`
	DBSize     int64        `json:"dbSize"`
	DBSizeUsed int64        `json:"dbSizeInUse"`
	// CheckedAt is the last successful reading, in Unix ms.
	CheckedAt int64 `json:"checkedAt,omitempty"`

	statusErr error
}

// clone returns a copy of h that shares no memory with it.
func (h health) clone() health {
	h.Endpoints = slices.Clone(h.Endpoints)
	h.Members = slices.Clone(h.Members)
	return h
}

type memberJSON struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	ClientURLs []string `json:"clientURLs"`
	Leader     bool     `json:"leader"`
	Learner    bool     `json:"learner,omitempty"`
	// Reachable is set when the member answered Status at the last check.
	Reachable bool   `json:"reachable"`
	Version   string `json:"version,omitempty"`
	DBSize    int64  `json:"dbSize,omitempty"`
	RaftIndex uint64 `json:"raftIndex,omitempty"`
}

// statsSample is one reading of the StatsSource.
type statsSample struct {
	Time     int64              `json:"time"` // Unix ms
	Backends []backendStatsJSON `json:"backends"`
}

type backendStatsJSON struct {
	BackendStats
	P50 float64 `json:"p50ms"`
	P99 float64 `json:"p99ms"`
}

// message is one server-sent event, encoded once for every client.
type message struct {
	seq   uint64
	event string
	data  []byte
}

// stateJSON is the whole state: the answer of /api/state and the first
// event of a stream that cannot resume.
type stateJSON struct {
	// Epoch and Seq make the event id to resume after: "<epoch>.<seq>".
	Epoch     string               `json:"epoch"`
	Seq       uint64               `json:"seq"`
	Now       int64                `json:"now"`
	Started   int64                `json:"started"`
	Prefix    string               `json:"prefix"`
	Revision  int64                `json:"revision"`
	Skipped   int                  `json:"skipped"`
	Instances []instanceJSON       `json:"instances"`
	Leases    map[string]leaseJSON `json:"leases"`
	Timeline  []timelineEntry      `json:"timeline"`
	Health    health               `json:"health"`
	Stats     []statsSample        `json:"stats,omitempty"`
	HasStats  bool                 `json:"hasStats"`
}

// stateLocked returns the whole state. s.mu is held.
func (s *Server) stateLocked() stateJSON {
	st := stateJSON{
		Epoch: s.epoch, Seq: s.seq, Now: time.Now().UnixMilli(), Started: s.started.UnixMilli(), Prefix: s.prefix,
		Revision: s.revision, Skipped: s.skipped,
		Instances: make([]instanceJSON, 0, len(s.instances)),
		Leases:    make(map[string]leaseJSON, len(s.leases)),
		Timeline:  slices.Clone(s.timeline),
		Health:    s.health.clone(),
		Stats:     slices.Clone(s.stats),
		HasStats:  s.o.stats != nil,
	}
	for _, in := range s.instances {
		st.Instances = append(st.Instances, in.json())
	}
	slices.SortFunc(st.Instances, func(a, b instanceJSON) int {
		return cmp.Or(strings.Compare(a.Service, b.Service), strings.Compare(a.ID, b.ID))
	})
	for id, l := range s.leases {
		if !l.readAt.IsZero() {
			st.Leases[leaseHex(id)] = l.json()
		}
	}
	return st
}

func (l *leaseInfo) json() leaseJSON {
	return leaseJSON{TTL: l.ttl, Granted: l.granted, At: l.readAt.UnixMilli()}
}

// serveState answers /api/state.
func (s *Server) serveState(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	st := s.stateLocked()
	s.mu.Unlock()
	writeJSON(w, r, st)
}

// publishLocked appends a sequenced message to the log and wakes the
// clients. s.mu is held.
func (s *Server) publishLocked(event string, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		s.o.logger.Error("ui: encoding an event", "event", event, "error", err)
		return
	}
	s.seq++
	s.log = append(s.log, message{seq: s.seq, event: event, data: data})
	if len(s.log) > logSize {
		s.log = slices.Delete(s.log, 0, len(s.log)-logSize/2)
	}
	s.wakeLocked()
}

// wakeLocked tells every event stream that there is something new.
func (s *Server) wakeLocked() {
	for c := range s.clients {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// deltaJSON is a "delta" event: the changes of one snapshot.
type deltaJSON struct {
	Seq      uint64          `json:"seq"`
	Revision int64           `json:"revision"`
	Time     int64           `json:"time"`
	Skipped  int             `json:"skipped"`
	Changes  []changeJSON    `json:"changes"`
	Timeline []timelineEntry `json:"timeline"`
}

type changeJSON struct {
	Kind     string       `json:"kind"`
	Instance instanceJSON `json:"instance"`
}

// watchLoop applies the discovery watcher's states.
func (s *Server) watchLoop() {
	var prev discovery.Snapshot
	first := true
	for st := range s.sub.Updates() {
		s.mu.Lock()
		if errText(st.Err) != errText(s.watchErr) {
			s.watchErr = st.Err
			s.setHealthLocked()
		}
		if st.Snapshot.Revision != 0 && st.Snapshot.Revision != prev.Revision {
			s.applyLocked(prev, st.Snapshot, first)
			first = false
			prev = st.Snapshot
		}
		s.mu.Unlock()
	}
}

// applyLocked turns the difference between two snapshots into a delta
// event. s.mu is held.
func (s *Server) applyLocked(prev, cur discovery.Snapshot, first bool) {
	now := time.Now()
	s.revision, s.skipped = cur.Revision, cur.Skipped
	changes := discovery.Diff(prev, cur)
	d := deltaJSON{Revision: cur.Revision, Time: now.UnixMilli(), Skipped: cur.Skipped, Changes: make([]changeJSON, 0, len(changes))}
	for _, c := range changes {
		k := instKey{c.Endpoint.Service, c.Endpoint.ID}
		in := s.instances[k]
		switch c.Kind {
		case "removed":
			if in == nil {
				continue
			}
			d.Changes = append(d.Changes, changeJSON{Kind: c.Kind, Instance: in.json()})
			s.dropLeaseLocked(in)
			delete(s.instances, k)
			delete(s.pending, k)
		default:
			if in == nil {
				in = &instance{firstSeen: now, atStart: first}
				if first {
					in.firstSeen = s.started
				}
				s.instances[k] = in
			}
			in.ep = c.Endpoint
			// A value changed or a key came back: its lease may have too.
			s.pending[k] = true
			d.Changes = append(d.Changes, changeJSON{Kind: c.Kind, Instance: in.json()})
		}
		if !first {
			s.addTimelineLocked(timelineEntry{Kind: c.Kind, Service: k.service, ID: k.id, Addr: c.Endpoint.Addr, Revision: cur.Revision, Time: now.UnixMilli()})
		}
	}
	if first {
		s.addTimelineLocked(timelineEntry{Kind: "listed", Service: fmt.Sprintf("%d instances", len(s.instances)), Revision: cur.Revision, Time: now.UnixMilli()})
		d.Timeline = s.timeline[len(s.timeline)-1:]
	} else if n := min(len(d.Changes), len(s.timeline)); n > 0 {
		d.Timeline = s.timeline[len(s.timeline)-n:]
	}
	d.Seq = s.seq + 1
	s.publishLocked("delta", d)
}

func (s *Server) addTimelineLocked(e timelineEntry) {
	if len(s.timeline) >= TimelineSize {
		// Shift rather than reslice, so the backing array stays bounded.
		copy(s.timeline, s.timeline[1:])
		s.timeline = s.timeline[:len(s.timeline)-1]
	}
	s.timeline = append(s.timeline, e)
}

// dropLeaseLocked forgets in's use of its lease.
func (s *Server) dropLeaseLocked(in *instance) {
	if in.lease == clientv3.NoLease {
		return
	}
	if l := s.leases[in.lease]; l != nil {
		l.users--
		if l.users <= 0 {
			delete(s.leases, in.lease)
		}
	}
	in.lease = clientv3.NoLease
}

// writeJSON writes v as JSON, gzipped when the client takes it.
func writeJSON(w http.ResponseWriter, r *http.Request, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	out, done := maybeGzip(w, r)
	defer done()
	_ = json.NewEncoder(out).Encode(v)
}
