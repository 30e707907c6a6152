package resolver

import (
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
)

// A fan delivers the snapshots of one service to every resolver of that
// service in the process: one subscription and one goroutine per service,
// however many ClientConns there are, and each snapshot converted to a
// gRPC state once, not once per ClientConn. With 1,000 ClientConns this
// divides the garbage a change makes by four and wakes one goroutine
// instead of 1,000 (see the resolver benchmark in bench/).
type fan struct {
	key     fanKey
	subs    []*discovery.Subscription // one per format
	log     *slog.Logger
	kick    chan struct{} // a resolver joined and wants the current state
	changed chan struct{} // a subscription has a new state
	done    chan struct{}
	fwd     sync.WaitGroup // the forwarders of subs

	stMu   sync.Mutex
	states []discovery.State // the latest of each subscription

	mu      sync.Mutex
	members map[*etcdResolver]struct{}
}

type fanKey struct {
	cli       *clientv3.Client
	service   string
	namespace string
	nsSet     bool
	formats   string // canonical names, comma-separated
}

var fans = struct {
	mu sync.Mutex
	m  map[fanKey]*fan
}{m: map[fanKey]*fan{}}

// join adds r to the fan of key, starting the fan if there is none.
func join(key fanKey, o options, r *etcdResolver) error {
	fans.mu.Lock()
	defer fans.mu.Unlock()
	f := fans.m[key]
	if f == nil {
		var subs []*discovery.Subscription
		for _, format := range strings.Split(key.formats, ",") {
			opts := []discovery.Option{discovery.WithFormat(format),
				discovery.WithLogger(o.logger), discovery.WithRegisterer(o.registerer)}
			if key.nsSet {
				opts = append(opts, discovery.WithNamespace(key.namespace))
			}
			sub, err := discovery.Subscribe(key.cli, key.service, opts...)
			if err != nil {
				for _, s := range subs {
					s.Close()
				}
				return err
			}
			subs = append(subs, sub)
		}
		f = &fan{
			key:     key,
			subs:    subs,
			log:     o.logger.With("service", key.service),
			kick:    make(chan struct{}, 1),
			changed: make(chan struct{}, 1),
			done:    make(chan struct{}),
			states:  make([]discovery.State, len(subs)),
			members: map[*etcdResolver]struct{}{},
		}
		for i, sub := range subs {
			f.states[i] = sub.Current()
			f.fwd.Add(1)
			go f.forward(i, sub)
		}
		fans.m[key] = f
		go f.run()
	}
	f.mu.Lock()
	f.members[r] = struct{}{}
	f.mu.Unlock()
	r.fan = f
	select {
	case f.kick <- struct{}{}:
	default:
	}
	return nil
}

// leave removes r from its fan, and stops the fan with its last member.
func (f *fan) leave(r *etcdResolver) {
	fans.mu.Lock()
	f.mu.Lock()
	delete(f.members, r)
	last := len(f.members) == 0
	if last {
		delete(fans.m, f.key)
	}
	f.mu.Unlock()
	fans.mu.Unlock()
	if last {
		for _, sub := range f.subs {
			sub.Close()
		}
		f.fwd.Wait()
		close(f.changed)
		<-f.done
	}
}

// forward records the states of subscription i and wakes the fan.
func (f *fan) forward(i int, sub *discovery.Subscription) {
	defer f.fwd.Done()
	for st := range sub.Updates() {
		f.stMu.Lock()
		f.states[i] = st
		f.stMu.Unlock()
		select {
		case f.changed <- struct{}{}:
		default:
		}
	}
}

// merged returns the state of the service across its formats: the union of
// their instances, one per address (the first format's wins), the first
// error, and a revision that grows whenever any of theirs does (their sum;
// 0 until every format has been listed). With one format it is that
// format's state as it stands.
func (f *fan) merged() discovery.State {
	f.stMu.Lock()
	defer f.stMu.Unlock()
	if len(f.states) == 1 {
		return f.states[0]
	}
	var out discovery.State
	seen := map[string]bool{}
	var rev int64
	for _, st := range f.states {
		if st.Err != nil && out.Err == nil {
			out.Err = st.Err
		}
		if st.Snapshot.Revision == 0 {
			rev = -1
		} else if rev >= 0 {
			rev += st.Snapshot.Revision
		}
		out.Snapshot.Skipped += st.Snapshot.Skipped
		for _, e := range st.Snapshot.Endpoints {
			if !seen[e.Addr] {
				seen[e.Addr] = true
				out.Snapshot.Endpoints = append(out.Snapshot.Endpoints, e)
			}
		}
	}
	out.Snapshot.Revision = max(rev, 0)
	endpoint.Sort(out.Snapshot.Endpoints)
	return out
}

// delivery is one state as the fan hands it out.
type delivery struct {
	seq   uint64
	st    discovery.State
	once  sync.Once
	state grpcresolver.State
}

// grpcState converts the snapshot once, for every member.
func (d *delivery) grpcState() grpcresolver.State {
	d.once.Do(func() { d.state = State(d.st.Snapshot) })
	return d.state
}

func (f *fan) run() {
	defer close(f.done)
	cur := &delivery{seq: 1, st: f.merged()}
	for {
		select {
		case _, ok := <-f.changed:
			if !ok {
				return
			}
			cur = &delivery{seq: cur.seq + 1, st: f.merged()}
		case <-f.kick:
		}
		f.deliver(cur)
	}
}

// deliver hands d to every member that has not had it, from up to
// GOMAXPROCS goroutines: gRPC's UpdateState returns only once the
// ClientConn's balancer has taken the state, so one goroutine would make
// the last of 1,000 ClientConns wait for the 999 before it.
func (f *fan) deliver(d *delivery) {
	f.mu.Lock()
	members := make([]*etcdResolver, 0, len(f.members))
	for r := range f.members {
		members = append(members, r)
	}
	f.mu.Unlock()
	workers := min(runtime.GOMAXPROCS(0), len(members)/16+1)
	if workers <= 1 {
		for _, r := range members {
			r.deliver(d, f.log)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(len(members)); i = next.Add(1) - 1 {
				members[i].deliver(d, f.log)
			}
		}()
	}
	wg.Wait()
}

// etcdResolver is one ClientConn's view of a fan.
type etcdResolver struct {
	cc      grpcresolver.ClientConn
	service string
	fan     *fan
	once    sync.Once

	mu        sync.Mutex // held while delivering, so Close waits for it
	closed    bool
	seq       uint64 // of the last delivery handled (deliveries count from 1)
	pushed    int64  // revision of the last snapshot gRPC was given
	retryNext bool   // gRPC rejected the last state: give it again
	hadErr    bool
}

// ResolveNow is a no-op: the resolver is pushed every change by its watch.
func (r *etcdResolver) ResolveNow(grpcresolver.ResolveNowOptions) {}

// Close stops the resolver and releases its share of the watcher.
func (r *etcdResolver) Close() {
	r.once.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.fan.leave(r)
	})
}

func (r *etcdResolver) deliver(d *delivery, log *slog.Logger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || d.seq <= r.seq {
		return
	}
	r.seq = d.seq
	snap := d.st.Snapshot
	if snap.Revision != 0 && (snap.Revision != r.pushed || r.retryNext) {
		if len(snap.Endpoints) == 0 && snap.Skipped > 0 {
			// Malformed values never empty the set.
			r.cc.ReportError(fmt.Errorf("muster resolver: %s: all %d values are malformed; keeping the last endpoints", r.service, snap.Skipped))
			return
		}
		err := r.cc.UpdateState(d.grpcState())
		r.pushed = snap.Revision
		r.retryNext = err != nil
		if err != nil {
			log.Debug("muster resolver: gRPC rejected the state; will push again on the next change", "err", err)
		}
	}
	switch {
	case d.st.Err != nil:
		r.cc.ReportError(fmt.Errorf("muster resolver: %s: %w", r.service, d.st.Err))
		r.hadErr = true
	case r.hadErr && snap.Revision != 0:
		// Back in touch: push the current state again so the channel
		// leaves any error the report left behind.
		_ = r.cc.UpdateState(d.grpcState())
		r.hadErr = false
	}
}
