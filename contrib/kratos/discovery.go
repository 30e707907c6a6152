package kratos

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

var _ registry.Watcher = (*Watcher)(nil)

// subscribe subscribes to name in each of r's formats.
func (r *Registry) subscribe(name string) ([]*discovery.Subscription, error) {
	subs := make([]*discovery.Subscription, 0, len(r.o.formats))
	for _, format := range r.o.formats {
		f, _ := keyfmt.Lookup(format) // checked by New
		opts := []discovery.Option{discovery.WithFormat(f.Name()), discovery.WithLogger(r.o.logger)}
		switch {
		case f == keyfmt.Native && r.o.namespace != "":
			opts = append(opts, discovery.WithNamespace(r.o.namespace))
		case f == keyfmt.Kratos && r.o.kratosNamespace != "":
			opts = append(opts, discovery.WithNamespace(r.o.kratosNamespace))
		}
		sub, err := discovery.Subscribe(r.cli, name, append(opts, r.o.discovery...)...)
		if err != nil {
			closeAll(subs)
			return nil, fmt.Errorf("kratos: %w", err)
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

func closeAll(subs []*discovery.Subscription) {
	for _, s := range subs {
		s.Close()
	}
}

// merged returns the endpoints of the subscriptions' current states, one
// per address (the first format's winning), sorted by ID; ready is false
// until every subscription has a snapshot; err is the first state's error.
func merged(subs []*discovery.Subscription) (eps []endpoint.Endpoint, skipped int, ready bool, err error) {
	ready = true
	seen := map[string]bool{}
	for _, s := range subs {
		st := s.Current()
		if st.Snapshot.Revision == 0 {
			ready = false
		}
		if st.Err != nil && err == nil {
			err = st.Err
		}
		skipped += st.Snapshot.Skipped
		for _, e := range st.Snapshot.Endpoints {
			if !seen[e.Addr] {
				seen[e.Addr] = true
				eps = append(eps, e)
			}
		}
	}
	endpoint.Sort(eps)
	return eps, skipped, ready, err
}

func instances(eps []endpoint.Endpoint) []*registry.ServiceInstance {
	out := make([]*registry.ServiceInstance, len(eps))
	for i, e := range eps {
		out[i] = toInstance(e)
	}
	return out
}

// GetService implements registry.Discovery: the instances of name now. With
// a watch of name open in the process (a Watch, a Muster resolver) it
// answers from its snapshot at once; otherwise it lists name from etcd,
// waiting at most until ctx ends. While etcd is unreachable it answers
// with the last snapshot the process has, or the error when there is none.
// The instances are the caller's to change.
func (r *Registry) GetService(ctx context.Context, name string) ([]*registry.ServiceInstance, error) {
	subs, err := r.subscribe(name)
	if err != nil {
		return nil, err
	}
	defer closeAll(subs)
	for _, s := range subs {
		for s.Current().Snapshot.Revision == 0 {
			select {
			case st, ok := <-s.Updates():
				if !ok {
					return nil, fmt.Errorf("kratos: get %s: subscription closed", name)
				}
				if st.Snapshot.Revision == 0 && st.Err != nil {
					return nil, fmt.Errorf("kratos: get %s: %w", name, st.Err)
				}
			case <-ctx.Done():
				return nil, fmt.Errorf("kratos: get %s: %w", name, ctx.Err())
			}
		}
	}
	eps, _, _, _ := merged(subs)
	return instances(eps), nil
}

// Watch implements registry.Discovery: a Watcher of name's instances, which
// ends when ctx does or with Stop. It returns at once; the watch of name is
// shared with every other one in the process.
func (r *Registry) Watch(ctx context.Context, name string) (registry.Watcher, error) {
	subs, err := r.subscribe(name)
	if err != nil {
		return nil, err
	}
	w := &Watcher{subs: subs, log: r.o.logger.With("service", name)}
	w.ctx, w.cancel = context.WithCancel(ctx)
	w.stopOnDone = context.AfterFunc(w.ctx, w.release)
	return w, nil
}

// Watcher is a Kratos registry.Watcher on Muster's discovery. Next may be
// called by one goroutine at a time; Stop by any, at any time.
//
// It behaves as Muster's resolver does, not as Kratos's etcd watcher: it
// keeps one shared etcd watch and never lists etcd again for a change; an
// etcd outage neither ends it nor empties its list (Next keeps waiting, and
// the caller keeps the last instances); and Next never returns an empty
// list: not for an error, not for a service whose every value is
// malformed, and not for a service with no instances left (Kratos's gRPC
// and HTTP resolvers refuse an empty list anyway; the instances that left
// are gone from etcd, and calls to them fail over as their connections
// close).
type Watcher struct {
	subs       []*discovery.Subscription
	log        *slog.Logger
	ctx        context.Context
	cancel     context.CancelFunc
	stopOnDone func() bool
	once       sync.Once

	// Owned by Next.
	last   []endpoint.Endpoint
	sent   bool
	hadErr bool
	allBad bool
}

// Next implements registry.Watcher. Its first call returns the current
// instances at once when there are some (once the service has been listed),
// and later calls when they change; otherwise it waits. After Stop, or once
// the context given to Watch ends, it returns the context's error
// (context.Canceled after Stop), which Kratos's resolvers take as their
// signal to stop.
func (w *Watcher) Next() ([]*registry.ServiceInstance, error) {
	for {
		if err := w.ctx.Err(); err != nil {
			return nil, err
		}
		eps, skipped, ready, err := merged(w.subs)
		switch {
		case err != nil && !w.hadErr:
			w.log.Warn("kratos: etcd trouble; the last instances stay", "instances", len(eps), "err", err)
		case err == nil && w.hadErr:
			w.log.Info("kratos: in touch with etcd again", "instances", len(eps))
		}
		w.hadErr = err != nil
		if ready && len(eps) > 0 && !(w.sent && sameEndpoints(eps, w.last)) {
			w.last, w.sent = eps, true
			return instances(eps), nil
		}
		allBad := ready && len(eps) == 0 && skipped > 0
		if allBad && !w.allBad {
			w.log.Warn("kratos: every value is malformed; keeping the last instances", "skipped", skipped)
		}
		w.allBad = allBad
		if !w.wait() {
			return nil, context.Canceled
		}
	}
}

// wait blocks until a subscription has news or the watcher ends; false
// means a subscription closed.
func (w *Watcher) wait() bool {
	cases := make([]reflect.SelectCase, 0, 1+len(w.subs))
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.ctx.Done())})
	for _, s := range w.subs {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(s.Updates())})
	}
	i, _, ok := reflect.Select(cases)
	return i == 0 || ok
}

// Stop implements registry.Watcher: it ends the watcher's subscriptions and
// makes Next return context.Canceled, now and from then on. It is
// idempotent and returns nil.
func (w *Watcher) Stop() error {
	w.stopOnDone()
	w.cancel()
	w.release()
	return nil
}

// release closes the subscriptions, once: by Stop, or when the context of
// Watch ends.
func (w *Watcher) release() { w.once.Do(func() { closeAll(w.subs) }) }

func sameEndpoints(a, b []endpoint.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !endpoint.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
