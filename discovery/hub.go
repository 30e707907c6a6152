package discovery

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// hub holds the watchers of the process, one per (client, prefix, format).
var hub = &watcherHub{
	watchers: map[hubKey]*hubEntry{},
	clients:  map[*clientv3.Client]*liveness{},
}

type hubKey struct {
	cli    *clientv3.Client
	prefix string
	format string
}

type hubEntry struct {
	w    *Watcher
	refs int
}

type watcherHub struct {
	mu       sync.Mutex
	watchers map[hubKey]*hubEntry
	clients  map[*clientv3.Client]*liveness
}

// acquire returns the watcher for key, creating it with create if there is
// none, and counts a reference to it.
func (h *watcherHub) acquire(key hubKey, create func(*liveness) *Watcher) *Watcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.watchers[key]; ok {
		e.refs++
		return e.w
	}
	live, ok := h.clients[key.cli]
	if !ok {
		live = newLiveness(key.cli)
		h.clients[key.cli] = live
	}
	live.refs++
	w := create(live)
	h.watchers[key] = &hubEntry{w: w, refs: 1}
	return w
}

// release drops a reference to w and stops it, and its client's prober,
// when the last one goes.
func (h *watcherHub) release(w *Watcher) {
	h.mu.Lock()
	e := h.watchers[w.key]
	e.refs--
	if e.refs > 0 {
		h.mu.Unlock()
		return
	}
	delete(h.watchers, w.key)
	live := h.clients[w.key.cli]
	live.refs--
	if live.refs == 0 {
		delete(h.clients, w.key.cli)
	}
	h.mu.Unlock()
	w.stop()
	if live.refs == 0 {
		live.stop()
	}
}

// liveness tracks whether a client is in touch with etcd. One prober per
// client suffices: every response on any of the client's watches counts, and
// when they have all been quiet for probeAfter it sends a probe, a
// serializable count-only read that a live member answers locally. It covers
// the client's connection as a whole; each Watcher also probes its own watch
// stream with progress requests (see Watcher.follow), since a member can
// swallow one stream while answering reads. A member that lost its leader is
// caught by WithRequireLeader.
type liveness struct {
	cli       *clientv3.Client
	refs      int // under hub.mu
	lastHeard atomic.Int64
	cancel    context.CancelFunc
	done      chan struct{}
}

// probeKey is read, count only, to probe a member; it need not exist.
const probeKey = "\x00muster-liveness-probe"

func newLiveness(cli *clientv3.Client) *liveness {
	ctx, cancel := context.WithCancel(context.Background())
	l := &liveness{cli: cli, cancel: cancel, done: make(chan struct{})}
	l.heard()
	go l.run(ctx)
	return l
}

func (l *liveness) heard() { l.lastHeard.Store(time.Now().UnixNano()) }

func (l *liveness) quiet() time.Duration {
	return time.Duration(time.Now().UnixNano() - l.lastHeard.Load())
}

func (l *liveness) run(ctx context.Context) {
	defer close(l.done)
	tick := time.NewTicker(probeAfter / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		quiet := l.quiet()
		if quiet < probeAfter {
			continue
		}
		if quiet > 2*probeAfter {
			// Probes have gone unanswered: the connection is probably down.
			// Redial now instead of waiting out gRPC's reconnect backoff (up
			// to 120s by default), so the watch is back as soon as etcd is.
			l.cli.ActiveConnection().ResetConnectBackoff()
		}
		pctx, cancel := context.WithTimeout(ctx, probeAfter)
		_, err := l.cli.Get(pctx, probeKey, clientv3.WithSerializable(), clientv3.WithCountOnly())
		cancel()
		if err == nil {
			l.heard()
		}
	}
}

func (l *liveness) stop() {
	l.cancel()
	<-l.done
}
