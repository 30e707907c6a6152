package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// ErrUnreachable is wrapped by State.Err when etcd stopped answering.
var ErrUnreachable = errors.New("etcd unreachable")

// decodeFunc turns a key under a watcher's prefix and its value into an
// endpoint.
type decodeFunc func(key string, value []byte) (endpoint.Endpoint, error)

// Watcher follows one prefix in etcd and publishes its snapshots to the
// subscriptions that share it. Obtain one through Subscribe or SubscribeAll.
type Watcher struct {
	cli    *clientv3.Client
	prefix string
	decode decodeFunc
	log    *slog.Logger
	live   *liveness
	key    hubKey

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// Owned by run.
	entries map[string]endpoint.Endpoint // key -> good endpoint
	bad     map[string]bool              // keys whose value is malformed (logged once)

	mu    sync.Mutex
	state State
	subs  map[*Subscription]struct{}
}

// Prefix returns the etcd prefix the watcher follows.
func (w *Watcher) Prefix() string { return w.prefix }

// Subscription receives the states of a shared Watcher.
type Subscription struct {
	w      *Watcher
	ch     chan State
	closed atomic.Bool
}

// Updates returns the channel of states. The current state, if the watcher
// has one, is on it already. It is latest-wins: an unread state is replaced
// by a newer one. It is closed by Close.
func (s *Subscription) Updates() <-chan State { return s.ch }

// Current returns the watcher's latest state.
func (s *Subscription) Current() State {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.w.state
}

// Watcher returns the shared watcher behind s.
func (s *Subscription) Watcher() *Watcher { return s.w }

// Close ends the subscription and closes its channel. The watcher stops when
// its last subscription closes. Close is idempotent.
func (s *Subscription) Close() {
	if s.closed.Swap(true) {
		return
	}
	w := s.w
	w.mu.Lock()
	delete(w.subs, s)
	close(s.ch)
	w.mu.Unlock()
	hub.release(w)
}

// Subscribe subscribes to the instances of service.
func Subscribe(cli *clientv3.Client, service string, opts ...Option) (*Subscription, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if cli == nil {
		return nil, errors.New("discovery: nil etcd client")
	}
	if err := endpoint.ValidateService(service); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	f, err := keyfmt.Lookup(o.format)
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if !o.nsSet {
		o.namespace = keyfmt.DefaultNamespaceOf(f)
	}
	if err := keyfmt.ValidateNamespace(o.namespace); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	prefix := f.Prefix(o.namespace, service)
	decode := func(key string, value []byte) (endpoint.Endpoint, error) {
		return f.Decode(service, key[len(prefix):], value)
	}
	return subscribe(cli, hubKey{cli: cli, prefix: prefix, format: f.Name()}, decode, o)
}

// SubscribeAll subscribes to every service in the namespace (native format):
// one watch for the whole namespace, for tools that show the whole fleet.
func SubscribeAll(cli *clientv3.Client, opts ...Option) (*Subscription, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if cli == nil {
		return nil, errors.New("discovery: nil etcd client")
	}
	if err := keyfmt.ValidateNamespace(o.namespace); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	prefix := keyfmt.NamespacePrefix(o.namespace)
	decode := func(key string, value []byte) (endpoint.Endpoint, error) {
		service, id, ok := keyfmt.SplitKey(o.namespace, key)
		if !ok {
			return endpoint.Endpoint{}, fmt.Errorf("%w: key %q is not <namespace>/<service>/<id>", keyfmt.ErrMalformed, key)
		}
		return keyfmt.Native.Decode(service, id, value)
	}
	return subscribe(cli, hubKey{cli: cli, prefix: prefix, format: "native/all"}, decode, o)
}

func subscribe(cli *clientv3.Client, key hubKey, decode decodeFunc, o options) (*Subscription, error) {
	if err := registerMetrics(o.registerer); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	w := hub.acquire(key, func(live *liveness) *Watcher {
		ctx, cancel := context.WithCancel(context.Background())
		w := &Watcher{
			cli: cli, prefix: key.prefix, decode: decode, live: live, key: key,
			log: o.logger.With("prefix", key.prefix),
			ctx: ctx, cancel: cancel, done: make(chan struct{}),
			entries: map[string]endpoint.Endpoint{},
			bad:     map[string]bool{},
			subs:    map[*Subscription]struct{}{},
		}
		metricWatchers.Inc()
		go w.run()
		return w
	})
	s := &Subscription{w: w, ch: make(chan State, 1)}
	w.mu.Lock()
	w.subs[s] = struct{}{}
	if w.state.Snapshot.Revision != 0 || w.state.Err != nil {
		s.ch <- w.state
	}
	w.mu.Unlock()
	return s, nil
}

// stop ends the watcher's goroutine; hub.release calls it for the last
// subscription.
func (w *Watcher) stop() {
	w.cancel()
	<-w.done
	metricWatchers.Dec()
	deleteMetrics(w.prefix)
}

// setState records st and hands it to every subscription, replacing any
// state they have not read yet.
func (w *Watcher) setState(st State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.state = st
	for s := range w.subs {
		select {
		case <-s.ch:
		default:
		}
		s.ch <- st // cannot block: cap 1, emptied above, w.mu held
	}
}

func (w *Watcher) current() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// setErr reports err beside the last snapshot. Only transitions between
// healthy and failing are published and logged.
func (w *Watcher) setErr(err error) {
	st := w.current()
	if (st.Err == nil) == (err == nil) {
		return
	}
	if err != nil {
		w.log.Warn("discovery: serving the last snapshot through an etcd error", "endpoints", len(st.Snapshot.Endpoints), "revision", st.Snapshot.Revision, "err", err)
		metricHealthy.WithLabelValues(w.prefix).Set(0)
	} else {
		w.log.Info("discovery: in touch with etcd again", "revision", st.Snapshot.Revision)
		metricHealthy.WithLabelValues(w.prefix).Set(1)
	}
	st.Err = err
	w.setState(st)
}

// publish builds a snapshot from the entries and publishes it if it differs
// from the last one. It also clears any error.
func (w *Watcher) publish(rev int64) {
	eps := make([]endpoint.Endpoint, 0, len(w.entries))
	for _, e := range w.entries {
		eps = append(eps, e)
	}
	eps = dedupe(eps)
	st := w.current()
	if st.Snapshot.Revision != 0 && sameEndpoints(st.Snapshot.Endpoints, eps) && st.Snapshot.Skipped == len(w.bad) {
		if st.Err != nil {
			w.setErr(nil)
		}
		return
	}
	if st.Err != nil {
		w.log.Info("discovery: in touch with etcd again", "revision", rev)
		metricHealthy.WithLabelValues(w.prefix).Set(1)
	}
	metricEndpoints.WithLabelValues(w.prefix).Set(float64(len(eps)))
	metricSnapshots.WithLabelValues(w.prefix).Inc()
	metricHealthy.WithLabelValues(w.prefix).Set(1)
	w.setState(State{Snapshot: Snapshot{Revision: rev, Endpoints: eps, Skipped: len(w.bad)}})
}

// apply records one key's value; a nil value deletes it.
func (w *Watcher) apply(key string, value []byte, deleted bool) {
	if deleted {
		delete(w.entries, key)
		delete(w.bad, key)
		return
	}
	e, err := w.decode(key, value)
	if err != nil {
		delete(w.entries, key)
		metricMalformed.WithLabelValues(w.prefix).Inc()
		if !w.bad[key] {
			w.bad[key] = true
			w.log.Warn("discovery: skipping malformed value", "key", key, "err", err)
		}
		return
	}
	delete(w.bad, key)
	w.entries[key] = e
}

// run watches and lists until the watcher is stopped.
func (w *Watcher) run() {
	defer close(w.done)
	var backoff time.Duration
	for {
		listed, err := w.follow()
		if w.ctx.Err() != nil {
			return
		}
		if listed {
			backoff = 0
			metricRestarts.WithLabelValues(w.prefix).Inc()
			w.log.Info("discovery: watch broke; listing again", "err", err)
		} else if err != nil {
			w.setErr(fmt.Errorf("%w: %s: %v", ErrUnreachable, w.prefix, err))
		}
		backoff = min(max(backoff*2, backoffMin), backoffMax)
		select {
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		case <-w.ctx.Done():
			return
		}
	}
}

// list reads the whole prefix with a linearizable read (a member that lags
// behind cannot hand us a stale list) and publishes it.
func (w *Watcher) list() (int64, error) {
	ctx, cancel := context.WithTimeout(w.ctx, listTimeout)
	defer cancel()
	resp, err := w.cli.Get(ctx, w.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	w.live.heard()
	clear(w.entries)
	seen := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		seen[string(kv.Key)] = true
		w.apply(string(kv.Key), kv.Value, false)
	}
	for k := range w.bad {
		if !seen[k] {
			delete(w.bad, k)
		}
	}
	w.publish(resp.Header.Revision)
	return resp.Header.Revision, nil
}

// watchStreams numbers the watch streams of the process.
var watchStreams atomic.Uint64

// follow watches the prefix, lists it, and applies the watch's events after
// the list, until the watch breaks or the watcher stops. listed says
// whether it got as far as the list.
//
// The watch is created first, from etcd's current revision, and the list is
// read once etcd has confirmed it: the list's revision L is then at or
// after the watch's start, so no event is lost between them, and the
// watch's events up to L (already in the list) are skipped.
// WithRequireLeader makes a member that lost its leader cancel the watch
// instead of starving it silently.
//
// A member that stops answering without closing the connection (a
// partition, a wedged process) would starve it silently too, until gRPC's
// keepalive gives up on the connection (10s at the least: grpc-go's
// floor). So the watch has a gRPC stream of its own, and when it has been
// quiet for probeAfter it asks etcd for a progress notification on that
// stream; no answer within stallAfter means the stream is stalled, and
// follow returns so that run watches again on a new stream, which gRPC
// places on the next member. (etcd answers progress requests only for
// watches whose start revision it has reached, which a watch from the
// current revision has; one resumed by clientv3 after a broken stream may
// not have, and is then replaced the same way.)
func (w *Watcher) follow() (listed bool, err error) {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	defer cancel()
	// A metadata value of its own gives the watch a gRPC stream of its own
	// (clientv3 shares a stream between watches with equal metadata).
	ctx = metadata.AppendToOutgoingContext(ctx, "muster-watch-stream", strconv.FormatUint(watchStreams.Add(1), 10))
	// Watch blocks until etcd accepts the watch, which is forever while etcd
	// is down: create it aside, so the health checks below keep running.
	created := make(chan clientv3.WatchChan, 1)
	go func() {
		created <- w.cli.Watch(ctx, w.prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	}()
	var wch clientv3.WatchChan
	var progress sync.WaitGroup // the progress requests
	defer func() {
		cancel()
		if wch == nil {
			<-created // returns at once now that ctx is done
		}
		progress.Wait()
	}()
	tick := time.NewTicker(probeAfter / 2)
	defer tick.Stop()
	start := time.Now()
	listRev := int64(-1) // until the list is read
	lastMsg := time.Now()
	var asked time.Time // when progress was requested; zero if not pending
	for {
		select {
		case wch = <-created:
		case resp, ok := <-wch:
			if !ok {
				return listed, errors.New("watch channel closed")
			}
			w.live.heard()
			lastMsg, asked = time.Now(), time.Time{}
			if err := resp.Err(); err != nil {
				return listed, err
			}
			if resp.Canceled {
				return listed, errors.New("watch canceled by etcd")
			}
			if resp.Created {
				rev, err := w.list()
				if err != nil {
					return false, fmt.Errorf("list: %w", err)
				}
				listRev, listed = rev, true
				continue
			}
			if resp.IsProgressNotify() || listRev < 0 {
				continue
			}
			n := 0
			for _, ev := range resp.Events {
				if ev.Kv.ModRevision <= listRev {
					continue // in the list already
				}
				w.apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
				n++
			}
			if n > 0 {
				w.publish(resp.Header.Revision)
			}
		case <-tick.C:
			if quiet := w.live.quiet(); quiet > unreachableAfter {
				w.setErr(fmt.Errorf("%w: no answer on the watch of %s for %v", ErrUnreachable, w.prefix, quiet.Round(100*time.Millisecond)))
			} else if w.current().Err != nil && quiet < probeAfter {
				w.setErr(nil)
			}
			switch {
			case listRev < 0:
				if time.Since(start) > probeAfter+stallAfter {
					return false, fmt.Errorf("watch not created within %v", probeAfter+stallAfter)
				}
			case !asked.IsZero() && time.Since(asked) > stallAfter:
				return listed, fmt.Errorf("watch stream stalled: no answer to a progress request in %v", stallAfter)
			case asked.IsZero() && time.Since(lastMsg) >= probeAfter:
				// RequestProgress blocks while clientv3 reconnects the
				// stream: ask aside.
				asked = time.Now()
				progress.Go(func() { _ = w.cli.RequestProgress(ctx) })
			}
		case <-w.ctx.Done():
			return listed, w.ctx.Err()
		}
	}
}

// dedupe sorts eps and keeps one endpoint per service and ID: go-zero's
// format may hold one address under several keys (an instance that
// re-registered before its old lease expired); those copies are identical.
func dedupe(eps []endpoint.Endpoint) []endpoint.Endpoint {
	endpoint.Sort(eps)
	return slices.CompactFunc(eps, func(a, b endpoint.Endpoint) bool {
		return a.Service == b.Service && a.ID == b.ID
	})
}
