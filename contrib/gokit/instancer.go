package gokit

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/go-kit/kit/sd"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/discovery"
)

var _ sd.Instancer = (*Instancer)(nil)

// ErrNoSnapshot is the error of the first Event when etcd gave no answer at
// all within the wait of NewInstancer.
var ErrNoSnapshot = errors.New("gokit: no snapshot of the service yet")

// firstStateWait bounds how long NewInstancer waits for the first state.
// discovery publishes one (a snapshot, or the error of a failed list) within
// its list timeout of a few seconds; this is a safety net above it.
const firstStateWait = 10 * time.Second

// Instancer is a go-kit sd.Instancer on a Muster discovery subscription. It
// sends every registered channel the current Event when it registers and
// then every change; Events that would repeat the previous one are dropped.
// Its methods are safe for concurrent use.
//
// Like go-kit's own Instancers, it sends on the channels while holding its
// lock: a registered channel must be read until Deregister returns.
type Instancer struct {
	sub  *discovery.Subscription
	log  *slog.Logger
	done chan struct{}
	once sync.Once

	mu    sync.Mutex
	state sd.Event
	chans map[chan<- sd.Event]struct{}
}

// NewInstancer subscribes to service's instances through cli (see
// discovery.Subscribe; WithDiscoveryOptions passes it options) and returns
// once it knows the first state: the instances listed from etcd, or the
// error of a list that failed (within a few seconds), so that an Endpointer
// built on it has endpoints from its first call. It starts a goroutine; Stop
// ends it.
func NewInstancer(cli *clientv3.Client, service string, opts ...Option) (*Instancer, error) {
	o := buildOptions(opts)
	sub, err := discovery.Subscribe(cli, service, append([]discovery.Option{discovery.WithLogger(o.logger)}, o.discovery...)...)
	if err != nil {
		return nil, fmt.Errorf("gokit: %w", err)
	}
	i := &Instancer{
		sub:   sub,
		log:   o.logger.With("service", service, "prefix", sub.Watcher().Prefix()),
		done:  make(chan struct{}),
		state: sd.Event{Err: ErrNoSnapshot},
		chans: map[chan<- sd.Event]struct{}{},
	}
	timer := time.NewTimer(firstStateWait)
	defer timer.Stop()
	select {
	case st := <-sub.Updates():
		i.state = event(st)
	case <-timer.C:
		i.log.Warn("gokit: etcd gave no answer yet; starting without instances", "waited", firstStateWait)
	}
	go i.run()
	return i, nil
}

// event turns a discovery state into a go-kit Event: the sorted, distinct
// addresses of the snapshot, and the error beside it. The instances stay in
// an Event with an error: the error never empties the set.
func event(st discovery.State) sd.Event {
	instances := make([]string, 0, len(st.Snapshot.Endpoints))
	for _, e := range st.Snapshot.Endpoints {
		instances = append(instances, e.Addr)
	}
	slices.Sort(instances)
	return sd.Event{Instances: slices.Compact(instances), Err: st.Err}
}

func sameEvent(a, b sd.Event) bool {
	if (a.Err == nil) != (b.Err == nil) || a.Err != nil && a.Err.Error() != b.Err.Error() {
		return false
	}
	return slices.Equal(a.Instances, b.Instances)
}

func (i *Instancer) run() {
	defer close(i.done)
	for st := range i.sub.Updates() {
		i.update(event(st))
	}
}

func (i *Instancer) update(ev sd.Event) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if sameEvent(i.state, ev) {
		return
	}
	switch {
	case ev.Err != nil:
		i.log.Warn("gokit: etcd trouble; keeping the last instances", "instances", len(ev.Instances), "err", ev.Err)
	case i.state.Err != nil:
		i.log.Info("gokit: in touch with etcd again", "instances", len(ev.Instances))
	}
	i.state = ev
	for ch := range i.chans {
		ch <- copyEvent(ev)
	}
}

// copyEvent gives each receiver its own slice: go-kit's listeners may sort
// or change it.
func copyEvent(ev sd.Event) sd.Event {
	ev.Instances = slices.Clone(ev.Instances)
	return ev
}

// Register implements sd.Instancer: ch receives the current Event at once,
// then every change until Deregister.
func (i *Instancer) Register(ch chan<- sd.Event) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.chans[ch] = struct{}{}
	ch <- copyEvent(i.state)
}

// Deregister implements sd.Instancer: ch receives nothing more.
func (i *Instancer) Deregister(ch chan<- sd.Event) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.chans, ch)
}

// Stop implements sd.Instancer: it ends the subscription and the goroutine.
// Registered channels keep the last Event and are not closed. Stop is
// idempotent.
func (i *Instancer) Stop() {
	i.once.Do(func() {
		i.sub.Close()
		<-i.done
	})
}

// State returns the Event the Instancer would send a channel registering
// now.
func (i *Instancer) State() sd.Event {
	i.mu.Lock()
	defer i.mu.Unlock()
	return copyEvent(i.state)
}
