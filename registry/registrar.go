package registry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// ErrClosed is returned by the methods of a closed Registrar.
var ErrClosed = errors.New("registry: registrar closed")

// maxTxnOps is etcd's default limit of operations in one transaction
// (--max-txn-ops). Larger updates are split into several transactions.
const maxTxnOps = 128

// Registrar keeps a set of endpoints registered in etcd under one lease.
// Its methods are safe for concurrent use.
type Registrar struct {
	cli  *clientv3.Client
	opts options
	m    *metrics

	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}   // closed when run returns
	kick    chan struct{}   // wakes run; capacity 1
	deleted chan watchEvent // from the watch goroutines to run
	watchWG sync.WaitGroup  // the watch goroutines
	kaWG    sync.WaitGroup  // the keepalive goroutines

	mu      sync.Mutex
	desired map[string]string   // key -> value: what etcd should hold
	byEP    map[string][]string // endpoint identity -> its keys
	deletes map[string]struct{} // keys to delete from etcd
	version uint64              // bumped by every Register and Deregister
	status  Status
	changed chan struct{} // closed and replaced when status changes
	closed  bool

	// Owned by run.
	lease   clientv3.LeaseID
	kaCh    <-chan *clientv3.LeaseKeepAliveResponse
	kaStop  context.CancelFunc
	written map[string]writtenKey
	watches map[string]bool // parent prefixes being watched for deletes
}

type writtenKey struct {
	value string
	rev   int64
}

// watchEvent is a delete seen under a watched prefix, or, with resync set, a
// notice that the watch of prefix restarted and may have missed deletes.
type watchEvent struct {
	key    string
	rev    int64
	prefix string
	resync bool
}

// Status is a snapshot of a Registrar's state, for health checks and tests.
type Status struct {
	// LeaseID is the lease the keys are attached to; 0 while there is none.
	LeaseID int64
	// TTL is the lease's TTL as last reported by etcd.
	TTL time.Duration
	// Keys is the number of keys the registrar wants in etcd.
	Keys int
	// Synced reports whether etcd holds every wanted key, as of the last
	// write and the events seen since.
	Synced bool
	// Grants counts the leases granted; Heals those granted after a loss.
	Grants, Heals uint64
	// Restores counts keys put back after someone else deleted them.
	Restores uint64
	// LastError is the error of the last failed attempt, nil once an attempt
	// succeeds again.
	LastError error
	// applied is the last version etcd holds.
	applied uint64
}

// New returns a Registrar that writes through cli. It starts a background
// goroutine; Close stops it. New does not contact etcd: the lease is granted
// on the first Register.
func New(cli *clientv3.Client, opts ...Option) (*Registrar, error) {
	if cli == nil {
		return nil, errors.New("registry: nil etcd client")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registrar{
		cli: cli, opts: o, m: m,
		ctx: ctx, cancel: cancel,
		done:    make(chan struct{}),
		kick:    make(chan struct{}, 1),
		deleted: make(chan watchEvent, 64),
		desired: map[string]string{},
		byEP:    map[string][]string{},
		deletes: map[string]struct{}{},
		changed: make(chan struct{}),
		written: map[string]writtenKey{},
		watches: map[string]bool{},
	}
	go r.run()
	return r, nil
}

// Register adds endpoints, or updates them if already registered (an
// endpoint is identified by its service and ID). The endpoints are written
// in as few transactions as etcd allows (128 keys each), atomically when they
// fit in one. It returns when etcd holds them, or when ctx ends; then the
// endpoints stay wanted and are written as soon as etcd allows.
func (r *Registrar) Register(ctx context.Context, eps ...endpoint.Endpoint) error {
	type enc struct {
		id   string
		keys map[string]string
	}
	encs := make([]enc, 0, len(eps))
	for _, e := range eps {
		e = e.Normalize()
		if err := e.Validate(); err != nil {
			return fmt.Errorf("registry: register: %w", err)
		}
		keys := make(map[string]string, 1+len(r.opts.also))
		k, v, err := keyfmt.Native.Encode(r.opts.namespace, e, 0)
		if err != nil {
			return fmt.Errorf("registry: register %s: %w", e, err)
		}
		keys[k] = string(v)
		for _, a := range r.opts.also {
			f, _ := keyfmt.Lookup(a.Format) // checked by New
			ns, ae := a.Namespace, e
			if ns == "" {
				ns = keyfmt.DefaultNamespaceOf(f)
			}
			if a.Service != "" {
				ae.Service = a.Service
			}
			k, v, err := f.Encode(ns, ae, 0)
			if err != nil {
				return fmt.Errorf("registry: register %s in format %s: %w", e, f.Name(), err)
			}
			keys[k] = string(v)
		}
		encs = append(encs, enc{id: identity(e), keys: keys})
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	for _, e := range encs {
		for _, old := range r.byEP[e.id] {
			if _, keep := e.keys[old]; !keep {
				r.dropKey(old)
			}
		}
		list := make([]string, 0, len(e.keys))
		for k, v := range e.keys {
			if _, had := r.desired[k]; !had {
				r.m.keys.Inc()
			}
			r.desired[k] = v
			delete(r.deletes, k)
			list = append(list, k)
		}
		r.byEP[e.id] = list
	}
	v := r.bump()
	r.mu.Unlock()
	return r.wait(ctx, v, "register")
}

// Deregister removes endpoints (matched by service and ID; unknown ones are
// ignored) and deletes their keys. It returns when etcd no longer holds them,
// or when ctx ends; then the deletion is retried in the background.
func (r *Registrar) Deregister(ctx context.Context, eps ...endpoint.Endpoint) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	for _, e := range eps {
		id := identity(e.Normalize())
		for _, k := range r.byEP[id] {
			r.dropKey(k)
		}
		delete(r.byEP, id)
	}
	v := r.bump()
	r.mu.Unlock()
	return r.wait(ctx, v, "deregister")
}

// Endpoints returns the number of endpoints registered.
func (r *Registrar) Endpoints() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byEP)
}

// Status returns the registrar's current state.
func (r *Registrar) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Keys = len(r.desired)
	s.Synced = s.applied == r.version && (s.LeaseID != 0 || len(r.desired) == 0)
	for k, v := range r.desired {
		if w, ok := r.written[k]; !ok || w.value != v {
			s.Synced = false
			break
		}
	}
	return s
}

// Close stops the background work and revokes the lease, so that every key
// of the registrar vanishes from etcd at once. It waits at most a few seconds
// for etcd. Close is idempotent; after it, Register and Deregister return
// ErrClosed.
func (r *Registrar) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.changed)
	r.changed = make(chan struct{})
	n := len(r.desired)
	r.mu.Unlock()
	r.m.keys.Sub(float64(n))

	r.cancel()
	<-r.done
	r.watchWG.Wait()
	r.kaWG.Wait()
	if r.lease == 0 {
		return nil
	}
	if err := r.revoke(); err != nil {
		r.m.errors.WithLabelValues("revoke").Inc()
		return fmt.Errorf("registry: revoke lease %x: %w", r.lease, err)
	}
	r.opts.logger.Info("registry: lease revoked", "lease", fmt.Sprintf("%x", r.lease), "keys", n)
	return nil
}

// revoke revokes the lease within opTimeout, in attempts of at most a
// second each: a member that takes the request and never answers costs one
// attempt, and the next goes to another member.
func (r *Registrar) revoke() error {
	deadline := time.Now().Add(r.opts.opTimeout)
	for {
		attempt := time.Now().Add(time.Second)
		if attempt.After(deadline) {
			attempt = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), attempt)
		_, err := r.cli.Revoke(ctx, r.lease)
		cancel()
		if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil
		}
		if !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(min(50*time.Millisecond, time.Until(deadline)))
	}
}

func identity(e endpoint.Endpoint) string { return e.Service + "/" + e.ID }

// dropKey removes k from the wanted set and schedules its deletion. r.mu is held.
func (r *Registrar) dropKey(k string) {
	if _, had := r.desired[k]; had {
		delete(r.desired, k)
		r.m.keys.Dec()
	}
	r.deletes[k] = struct{}{}
}

// bump records a change of the wanted set and wakes run. r.mu is held.
func (r *Registrar) bump() uint64 {
	r.version++
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return r.version
}

// wait blocks until etcd holds version v, ctx ends or r closes.
func (r *Registrar) wait(ctx context.Context, v uint64, op string) error {
	for {
		r.mu.Lock()
		applied, closed, ch, lastErr := r.status.applied, r.closed, r.changed, r.status.LastError
		r.mu.Unlock()
		switch {
		case applied >= v:
			return nil
		case closed:
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("registry: %s: %w (last etcd error: %v); retrying in the background", op, ctx.Err(), lastErr)
			}
			return fmt.Errorf("registry: %s: %w; retrying in the background", op, ctx.Err())
		}
	}
}

// update changes the status under r.mu and wakes the waiters.
func (r *Registrar) update(f func(*Status)) {
	r.mu.Lock()
	f(&r.status)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// run owns the lease and every write to etcd.
func (r *Registrar) run() {
	defer close(r.done)
	defer func() {
		if r.kaStop != nil {
			r.kaStop()
		}
	}()
	var (
		retry   <-chan time.Time // set while backing off
		backoff time.Duration
	)
	for {
		if retry == nil {
			if err := r.step(); err != nil {
				if r.ctx.Err() != nil {
					return
				}
				backoff = r.nextBackoff(backoff)
				retry = time.After(backoff)
				r.failed(err)
				// Redial at once on the next attempt instead of waiting out
				// gRPC's reconnect backoff (up to 120s by default).
				r.cli.ActiveConnection().ResetConnectBackoff()
			} else {
				backoff = 0
				r.succeeded()
			}
		}
		select {
		case <-r.ctx.Done():
			return
		case <-r.kick:
		case <-retry:
			retry = nil
		case resp, ok := <-r.kaCh:
			if !ok {
				r.loseLease("keepalive stopped: the lease expired or etcd was unreachable for longer than its TTL")
				retry = nil // heal at once
				continue
			}
			r.update(func(s *Status) { s.TTL = time.Duration(resp.TTL) * time.Second })
		case ev := <-r.deleted:
			r.onWatchEvent(ev)
		}
	}
}

// nextBackoff doubles the backoff within its bounds and applies jitter, so
// that a fleet of registrars does not retry in step.
func (r *Registrar) nextBackoff(prev time.Duration) time.Duration {
	d := prev * 2
	if d < r.opts.backoffMin {
		d = r.opts.backoffMin
	}
	if d > r.opts.backoffMax {
		d = r.opts.backoffMax
	}
	return d/2 + rand.N(d/2+1)
}

func (r *Registrar) failed(err error) {
	r.mu.Lock()
	first := r.status.LastError == nil
	r.mu.Unlock()
	if first {
		r.opts.logger.Warn("registry: etcd write failed; retrying with backoff", "err", err)
	}
	r.update(func(s *Status) { s.LastError = err })
}

func (r *Registrar) succeeded() {
	r.mu.Lock()
	recovered := r.status.LastError != nil
	r.mu.Unlock()
	if recovered {
		r.opts.logger.Info("registry: etcd writes succeed again")
		r.update(func(s *Status) { s.LastError = nil })
	}
}

// step makes etcd hold the wanted set: it grants a lease if one is needed and
// writes what differs.
func (r *Registrar) step() error {
	r.mu.Lock()
	v := r.version
	puts := make(map[string]string)
	for k, val := range r.desired {
		if w, ok := r.written[k]; !ok || w.value != val {
			puts[k] = val
		}
	}
	dels := make([]string, 0, len(r.deletes))
	for k := range r.deletes {
		dels = append(dels, k)
	}
	r.mu.Unlock()

	if len(puts) > 0 && r.lease == 0 {
		if err := r.grant(); err != nil {
			return err
		}
	}
	ops := make([]clientv3.Op, 0, min(len(puts)+len(dels), maxTxnOps))
	keys := make([]string, 0, cap(ops))
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.opts.opTimeout)
		resp, err := r.cli.Txn(ctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			r.m.errors.WithLabelValues("write").Inc()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				r.loseLease("etcd says the lease does not exist (revoked or expired)")
			}
			return fmt.Errorf("write %d keys: %w", len(ops), err)
		}
		rev := resp.Header.Revision
		r.mu.Lock()
		for i, k := range keys {
			if ops[i].IsDelete() {
				delete(r.written, k)
				delete(r.deletes, k)
				continue
			}
			r.written[k] = writtenKey{value: puts[k], rev: rev}
			if p := parent(k); !r.watches[p] {
				r.watches[p] = true
				r.watchWG.Add(1)
				go r.watch(p, rev+1)
			}
		}
		r.mu.Unlock()
		ops, keys = ops[:0], keys[:0]
		return nil
	}
	for k, val := range puts {
		ops = append(ops, clientv3.OpPut(k, val, clientv3.WithLease(r.lease)))
		keys = append(keys, k)
		if len(ops) == maxTxnOps {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	for _, k := range dels {
		ops = append(ops, clientv3.OpDelete(k))
		keys = append(keys, k)
		if len(ops) == maxTxnOps {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	r.update(func(s *Status) {
		if v > s.applied {
			s.applied = v
		}
	})
	return nil
}

// grant obtains a new lease and starts keeping it alive.
func (r *Registrar) grant() error {
	ctx, cancel := context.WithTimeout(r.ctx, r.opts.opTimeout)
	resp, err := r.cli.Grant(ctx, int64(r.opts.ttl/time.Second))
	cancel()
	if err != nil {
		r.m.errors.WithLabelValues("grant").Inc()
		return fmt.Errorf("grant lease: %w", err)
	}
	kaCtx, kaStop := context.WithCancel(r.ctx)
	ch := r.keepAlive(kaCtx, resp.ID, time.Duration(resp.TTL)*time.Second)
	r.lease, r.kaCh, r.kaStop = resp.ID, ch, kaStop
	r.m.grants.Inc()
	r.mu.Lock()
	heal := r.status.Grants > 0
	r.mu.Unlock()
	if heal {
		r.m.heals.Inc()
		r.opts.logger.Warn("registry: lease healed; putting every key again", "lease", fmt.Sprintf("%x", resp.ID), "ttl", r.opts.ttl)
	} else {
		r.opts.logger.Info("registry: lease granted", "lease", fmt.Sprintf("%x", resp.ID), "ttl", r.opts.ttl)
	}
	r.update(func(s *Status) {
		s.LeaseID, s.TTL = int64(resp.ID), time.Duration(resp.TTL)*time.Second
		s.Grants++
		if heal {
			s.Heals++
		}
	})
	return nil
}

// keepAlive renews the lease every third of its TTL until ctx ends. Each
// renewal is a KeepAliveOnce on a stream of its own, bounded by a short
// timeout and retried at once: a member that takes requests and never
// answers (partitioned from this client, or wedged) costs one attempt, and
// the next attempt's stream goes to another member. clientv3's KeepAlive
// keeps one stream for all leases instead, which stays on such a member
// until gRPC's keepalive gives up on the connection (10s + 3s with
// etcdclient's settings): longer than the TTL, so the lease expired. The
// channel gets every renewal (latest wins) and is closed when etcd says the
// lease is gone, or when no renewal succeeded within the TTL.
func (r *Registrar) keepAlive(ctx context.Context, id clientv3.LeaseID, ttl time.Duration) <-chan *clientv3.LeaseKeepAliveResponse {
	ch := make(chan *clientv3.LeaseKeepAliveResponse, 1)
	attempt := min(max(ttl/5, 400*time.Millisecond), 2*time.Second)
	r.kaWG.Add(1)
	go func() {
		defer r.kaWG.Done()
		defer close(ch)
		deadline := time.Now().Add(ttl)
		timer := time.NewTimer(ttl / 3)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			actx, cancel := context.WithTimeout(ctx, attempt)
			resp, err := r.cli.KeepAliveOnce(actx, id)
			cancel()
			switch {
			case err == nil:
				deadline = time.Now().Add(time.Duration(resp.TTL) * time.Second)
				select {
				case <-ch:
				default:
				}
				ch <- resp
				timer.Reset(ttl / 3)
			case ctx.Err() != nil, errors.Is(err, rpctypes.ErrLeaseNotFound):
				return
			case time.Now().After(deadline):
				return // the lease has expired by now
			default:
				r.m.errors.WithLabelValues("keepalive").Inc()
				timer.Reset(50 * time.Millisecond)
			}
		}
	}()
	return ch
}

// loseLease forgets the current lease; the next step grants a new one and
// puts every key again.
func (r *Registrar) loseLease(why string) {
	if r.lease == 0 {
		return
	}
	r.opts.logger.Warn("registry: lease lost; granting a new one", "lease", fmt.Sprintf("%x", r.lease), "reason", why)
	r.kaStop()
	r.lease, r.kaCh, r.kaStop = 0, nil, nil
	r.mu.Lock()
	clear(r.written)
	r.mu.Unlock()
	r.update(func(s *Status) { s.LeaseID = 0 })
}

// onWatchEvent handles a delete seen by a watch: a key of ours deleted after
// we wrote it is written again.
func (r *Registrar) onWatchEvent(ev watchEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.resync {
		// The watch restarted and may have missed deletes: write every key
		// under its prefix again (puts are idempotent).
		for k := range r.written {
			if strings.HasPrefix(k, ev.prefix) {
				delete(r.written, k)
			}
		}
		r.bumpLocked()
		return
	}
	w, ok := r.written[ev.key]
	if !ok || ev.rev <= w.rev {
		return
	}
	delete(r.written, ev.key)
	if _, wanted := r.desired[ev.key]; !wanted {
		return
	}
	r.status.Restores++
	r.m.restores.Inc()
	r.opts.logger.Warn("registry: key deleted by someone else; putting it back", "key", ev.key, "revision", ev.rev)
	r.bumpLocked()
}

// bumpLocked wakes run without a new version. r.mu is held.
func (r *Registrar) bumpLocked() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// watch reports the deletes under prefix, starting at revision rev, until r
// is closed. When the watch breaks (compaction, leader loss, a closed
// stream) it asks run to write every key under prefix again and watches on
// from the current revision.
func (r *Registrar) watch(prefix string, rev int64) {
	defer r.watchWG.Done()
	send := func(ev watchEvent) bool {
		select {
		case r.deleted <- ev:
			return true
		case <-r.ctx.Done():
			return false
		}
	}
	for {
		ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.ctx))
		wch := r.cli.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithFilterPut())
		broken := false
		for resp := range wch {
			if err := resp.Err(); err != nil {
				broken = true
				break
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete && !send(watchEvent{key: string(ev.Kv.Key), rev: ev.Kv.ModRevision}) {
					cancel()
					return
				}
			}
		}
		cancel()
		if r.ctx.Err() != nil {
			return
		}
		if broken {
			r.m.errors.WithLabelValues("watch").Inc()
		}
		// Watch on from the current revision, then write every key under
		// prefix again: a delete before that revision is undone by the
		// writes, one after it is seen by the new watch.
		var err error
		if rev, err = r.currentRevision(prefix); err != nil {
			return
		}
		if !send(watchEvent{prefix: prefix, resync: true}) {
			return
		}
	}
}

// currentRevision returns the revision after etcd's current one, retrying
// with backoff until it succeeds or r is closed.
func (r *Registrar) currentRevision(prefix string) (int64, error) {
	var backoff time.Duration
	for {
		ctx, cancel := context.WithTimeout(r.ctx, r.opts.opTimeout)
		resp, err := r.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err == nil {
			return resp.Header.Revision + 1, nil
		}
		backoff = r.nextBackoff(backoff)
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// parent returns the key's prefix up to and including its last '/'.
func parent(key string) string {
	return key[:strings.LastIndexByte(key, '/')+1]
}
