package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// streamBuffer is how many responses a client watch stream may have queued;
// a client that falls further behind has its stream ended (it reconnects and
// resumes from its last revision), so that it never holds up the others.
const streamBuffer = 4096

// mdStream is the outgoing metadata that places an upstream watch on a
// clientv3 watch stream of its own (clientv3 shares one gRPC stream between
// the watches whose contexts carry equal metadata).
const mdStream = "muster-proxy-watch-stream"

const (
	// askAgainAfter: a progress request sent upstream on a stream and not
	// answered within it is sent again by the next client request that
	// needs that stream; within it, client requests share it.
	askAgainAfter = time.Second
	// askTimeout bounds how long a progress request may wait to be taken
	// by clientv3 (which holds it while it reconnects the stream).
	askTimeout = 5 * time.Second
	// askTries bounds how many times the proxy sends a progress request on
	// an upstream stream, askAgainAfter apart, while it is not answered
	// (etcd drops one while a watcher of the stream is not synced).
	askTries = 4
)

// watchServer is Muster's coalescing Watch service.
//
// Client watchers of one key range share a broadcast: one upstream watch on
// etcd whose responses are fanned out to every receiver, each filtered to
// the revisions it has not had yet. A broadcast's nextRev is a lower bound
// of the next revision it will deliver: every event below it has been
// delivered. A client watcher starting at revision S joins a live broadcast
// of its range with nextRev <= S, and opens a new one from S otherwise (a
// watcher that wants history the shared watch has passed). After each
// response, a broadcast whose receivers another created broadcast can serve
// (that one's nextRev <= this one's) hands them over and closes, so the
// catch-up watches melt into the shared one.
//
// A broadcast that ends upstream (compaction, cancellation) is removed at
// once: its receivers that needed compacted history get the compaction
// (ErrCompacted at the client), the others move to another broadcast, and
// nothing ever joins a dead broadcast. Created is sent once per client
// watcher, by this server, in the order of the create requests; upstream
// Created responses are never forwarded.
//
// Upstream watch streams: a broadcast opened from etcd's current revision
// (the usual shared watch of a range) runs on the clientv3 stream of its
// client's auth token; any other (a catch-up replaying history, a watch
// from a future revision) runs on a stream of its own. etcd answers a
// progress request only when every watcher of the stream is synced, so a
// catch-up or future watch must not share a stream with the shared ones.
//
// Progress requests: a client's progress request starts a round on its
// stream. The round notes, for each watcher of the stream, its broadcast
// and how many progress notifications that broadcast has had; a progress
// request is sent upstream on the stream of each of those broadcasts (one
// per upstream stream, shared by the rounds of every client stream); and
// the round is answered (WatchId -1, Header.Revision R) once every
// broadcast noted has had a newer progress notification, with R the least
// revision that every watcher of the stream has been sent everything up
// to. Nothing is answered from the proxy's own state alone: without
// upstream answers (etcd unreachable, or etcd not answering because a
// watcher of the stream is not synced) the client gets no answer, as from
// etcd, and its own stall detection acts. A client stream has at most one
// round; requests during a round make one more round after it.
//
// One mutex guards all broadcasts, watchers and streams; deliveries only
// queue on the streams' buffered channels under it.
type watchServer struct {
	pb.UnimplementedWatchServer

	ctx context.Context // the proxy's; cancelled by Close
	cli *clientv3.Client
	kv  pb.KVClient
	log *slog.Logger
	m   *metrics

	wg sync.WaitGroup // broadcast goroutines and receive loops

	mu      sync.Mutex
	closing bool
	ranges  map[watchRange][]*bcast
	// asked holds, per upstream stream key, when a progress request was
	// sent on it that has not been answered yet.
	asked   map[string]time.Time
	private uint64 // numbers the private upstream streams
}

type watchRange struct{ key, end string }

// valid is etcd's validity check of a watch range (see grpcproxy).
func (wr watchRange) valid() bool {
	return len(wr.end) == 0 || wr.end > wr.key || (wr.end[0] == 0 && len(wr.end) == 1)
}

type bcast struct {
	wr        watchRange
	cancel    context.CancelFunc
	nextRev   int64
	created   bool // etcd confirmed the upstream watch
	dead      bool
	receivers map[*watcher]struct{}

	key      string // its upstream stream's mdStream value
	token    string // the auth token its upstream watch runs with
	progSeq  uint64 // upstream progress notifications it has had
	hdr      *pb.ResponseHeader
	inflight int // progress requests relying on its upstream stream
}

type watcher struct {
	s        *stream
	id       int64
	wr       watchRange
	nextRev  int64 // the next revision it must receive
	prevKV   bool
	progress bool
	noPut    bool
	noDelete bool
	b        *bcast
}

type stream struct {
	ws     *watchServer
	ctx    context.Context
	cancel context.CancelFunc
	out    chan *pb.WatchResponse

	// guarded by ws.mu
	watchers map[int64]*watcher
	nextID   int64
	closed   bool
	slow     bool
	prog     *progRound // the progress request being answered, or nil
	progNext bool       // answer one more progress request after prog
}

// progRound is a client progress request waiting for upstream answers:
// for each watcher of the stream, the broadcast it was on and the number of
// progress notifications that broadcast had had then.
type progRound struct {
	wait map[*watcher]progMark
}

type progMark struct {
	b   *bcast
	seq uint64
}

func newWatchServer(ctx context.Context, cli *clientv3.Client, log *slog.Logger, m *metrics) *watchServer {
	return &watchServer{
		ctx:    ctx,
		cli:    cli,
		kv:     pb.NewKVClient(cli.ActiveConnection()),
		log:    log,
		m:      m,
		ranges: make(map[watchRange][]*bcast),
		asked:  make(map[string]time.Time),
	}
}

// wait refuses new streams and waits for the goroutines to end; the proxy's
// context must be cancelled.
func (ws *watchServer) wait() {
	ws.mu.Lock()
	ws.closing = true
	ws.mu.Unlock()
	ws.wg.Wait()
}

var errClosing = status.Error(codes.Unavailable, "muster proxy: closing")

func (ws *watchServer) Watch(srv pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(srv.Context())
	defer cancel()
	stop := context.AfterFunc(ws.ctx, cancel)
	defer stop()
	s := &stream{
		ws:       ws,
		ctx:      ctx,
		cancel:   cancel,
		out:      make(chan *pb.WatchResponse, streamBuffer),
		watchers: make(map[int64]*watcher),
	}
	ws.mu.Lock()
	if ws.closing {
		ws.mu.Unlock()
		return errClosing
	}
	ws.wg.Add(1)
	ws.mu.Unlock()
	ws.m.streams.Inc()
	defer ws.m.streams.Dec()

	go func() {
		defer ws.wg.Done()
		defer cancel()
		for {
			req, err := srv.Recv()
			if err != nil {
				return
			}
			switch u := req.RequestUnion.(type) {
			case *pb.WatchRequest_CreateRequest:
				s.create(u.CreateRequest)
			case *pb.WatchRequest_CancelRequest:
				ws.cancelWatcher(s, u.CancelRequest.WatchId)
			case *pb.WatchRequest_ProgressRequest:
				ws.progressRequest(s)
			default:
				ws.log.Debug("proxy: watch request ignored", "request", req.String())
			}
		}
	}()

	err := s.sendLoop(srv)
	ws.log.Debug("proxy: watch stream ends", "err", err)
	cancel()
	ws.closeStream(s)
	return err
}

func (s *stream) sendLoop(srv pb.Watch_WatchServer) error {
	for {
		select {
		case r := <-s.out:
			if err := srv.Send(r); err != nil {
				return err
			}
		case <-s.ctx.Done():
			s.ws.mu.Lock()
			slow := s.slow
			s.ws.mu.Unlock()
			switch {
			case slow:
				return status.Error(codes.Unavailable, "muster proxy: watch stream too slow; resume")
			case s.ws.ctx.Err() != nil:
				return errClosing
			}
			return status.FromContextError(s.ctx.Err()).Err()
		}
	}
}

// post queues r on the stream; ws.mu is held. A stream whose queue is full
// is ended: its client resumes from the last revision it received.
func (s *stream) post(r *pb.WatchResponse) {
	if s.closed || s.slow {
		return
	}
	select {
	case s.out <- r:
	default:
		s.slow = true
		s.cancel()
		s.ws.log.Warn("proxy: a watch client is too slow; its stream is ended")
	}
}

// reject answers a create request that fails.
func (s *stream) reject(reason string) {
	s.ws.mu.Lock()
	defer s.ws.mu.Unlock()
	s.post(&pb.WatchResponse{
		Header:       &pb.ResponseHeader{},
		WatchId:      clientv3.InvalidWatchID,
		Created:      true,
		Canceled:     true,
		CancelReason: reason,
	})
}

// checkRange reads the watch range with the client's token (from ctx), count
// only, to check its permission and learn etcd's current revision. An error
// that says nothing of the permission (etcd restarting, a leader election,
// a timeout) is retried with backoff until ctx ends: refusing the watch
// would end it for good, since clientv3 takes a canceled create as final.
func (ws *watchServer) checkRange(ctx context.Context, key, end []byte) (*pb.RangeResponse, error) {
	req := &pb.RangeRequest{Key: key, RangeEnd: end, CountOnly: true, Limit: 1, Serializable: true}
	backoff := 50 * time.Millisecond
	for {
		resp, err := ws.kv.Range(ctx, req, waitForReady)
		if err == nil || ctx.Err() != nil {
			return resp, err
		}
		switch status.Code(err) {
		case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.OutOfRange:
			return nil, err
		}
		ws.log.Debug("proxy: permission check failed; retrying", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(2*backoff, time.Second)
	}
}

// create handles a create request: it checks the client's permission on
// etcd with its own token (which also gives the current revision), answers
// Created and attaches the watcher to a broadcast.
func (s *stream) create(cr *pb.WatchCreateRequest) {
	ws := s.ws
	wr := watchRange{string(cr.Key), string(cr.RangeEnd)}
	if cr.StartRevision < 0 {
		s.reject(rpctypes.ErrCompacted.Error())
		return
	}
	if !wr.valid() {
		s.reject("muster proxy: invalid watch range")
		return
	}
	key, end := cr.Key, cr.RangeEnd
	if len(key) == 0 {
		key, end = []byte{0}, []byte{0}
	}
	// s.ctx carries the client's incoming metadata: DialOptions forward its
	// token.
	resp, err := ws.checkRange(s.ctx, key, end)
	if err != nil {
		if s.ctx.Err() == nil {
			ws.log.Info("proxy: watch refused", "key", wr.key, "err", err)
			s.reject(err.Error())
		}
		return
	}
	rev := resp.GetHeader().GetRevision()
	ws.log.Debug("proxy: watch create", "key", wr.key, "rev", rev, "start", cr.StartRevision)

	ws.mu.Lock()
	defer ws.mu.Unlock()
	if s.closed || ws.closing {
		return
	}
	id := cr.WatchId
	if id == clientv3.AutoWatchID {
		for s.watchers[s.nextID] != nil {
			s.nextID++
		}
		id = s.nextID
		s.nextID++
	} else if s.watchers[id] != nil {
		s.post(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: clientv3.InvalidWatchID, Created: true, Canceled: true,
			CancelReason: "muster proxy: watch id exists"})
		return
	}
	w := &watcher{s: s, id: id, wr: wr, nextRev: cr.StartRevision, prevKV: cr.PrevKv, progress: cr.ProgressNotify}
	if w.nextRev == 0 {
		w.nextRev = rev + 1
	}
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	s.watchers[id] = w
	ws.m.watchers.Inc()
	s.post(&pb.WatchResponse{Header: resp.Header, WatchId: id, Created: true})
	ws.attach(w, rev)
}

// attach puts w into a live broadcast of its range that has not passed
// w.nextRev, or into a new one starting there; rev is etcd's current
// revision, or 0 if not known. ws.mu is held.
func (ws *watchServer) attach(w *watcher, rev int64) {
	for _, b := range ws.ranges[w.wr] {
		if !b.dead && b.nextRev <= w.nextRev {
			b.receivers[w] = struct{}{}
			w.b = b
			return
		}
	}
	ctx, cancel := context.WithCancel(ws.ctx)
	token := clientToken(w.s.ctx)
	b := &bcast{wr: w.wr, cancel: cancel, nextRev: w.nextRev, receivers: map[*watcher]struct{}{w: {}}, token: token}
	if rev > 0 && w.nextRev == rev+1 {
		// From the current revision: synced at once; shares the stream of
		// its token.
		sum := sha256.Sum256([]byte(token))
		b.key = "s" + hex.EncodeToString(sum[:8])
	} else {
		ws.private++
		b.key = "p" + strconv.FormatUint(ws.private, 10)
	}
	w.b = b
	ws.ranges[w.wr] = append(ws.ranges[w.wr], b)
	ws.m.upstreamWatches.Inc()
	ws.wg.Add(1)
	go ws.run(ctx, b, w.nextRev)
}

// upstreamCtx returns a context that places a watch or a progress request
// on b's upstream stream, with b's token.
func upstreamCtx(ctx context.Context, b *bcast) context.Context {
	return withToken(metadata.AppendToOutgoingContext(ctx, mdStream, b.key), b.token)
}

// run is the upstream watch of b, from revision start, opened with the
// auth token of the client that asked for it.
func (ws *watchServer) run(ctx context.Context, b *bcast, start int64) {
	defer ws.wg.Done()
	defer b.cancel()
	// A watch from the current revision starts upstream one revision
	// earlier (whose events send filters out): etcd does not answer
	// progress requests on a stream while a watcher of it starts after
	// etcd's current revision, which a watch from current+1 does until the
	// next write. (Only then: the revision before another start may be
	// compacted.)
	from := start
	if b.key[0] == 's' && from > 1 {
		from--
	}
	wch := ws.cli.Watch(upstreamCtx(ctx, b), b.wr.key,
		clientv3.WithRange(b.wr.end), clientv3.WithRev(from),
		clientv3.WithPrevKV(), clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	ws.log.Debug("proxy: upstream watch", "key", b.wr.key, "end", b.wr.end, "rev", start)
	for resp := range wch {
		ws.deliver(b, resp)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if !b.dead {
		ws.end(b, clientv3.WatchResponse{Canceled: true}, "muster proxy: upstream watch ended")
	}
}

// deliver fans an upstream response of b out to its receivers.
func (ws *watchServer) deliver(b *bcast, resp clientv3.WatchResponse) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if b.dead {
		return
	}
	if resp.CompactRevision != 0 || resp.Canceled || resp.Err() != nil {
		reason := "muster proxy: upstream watch canceled"
		if err := resp.Err(); err != nil {
			reason = err.Error()
		}
		ws.end(b, resp, reason)
		return
	}
	hdr := resp.Header
	if hdr == nil {
		hdr = &pb.ResponseHeader{}
	}
	switch {
	case resp.Created:
		b.created = true
	case resp.IsProgressNotify():
		b.progSeq++
		b.hdr = hdr
		delete(ws.asked, b.key)
		next := hdr.Revision + 1
		b.nextRev = max(b.nextRev, next)
		var waiting map[*stream]struct{}
		for w := range b.receivers {
			w.nextRev = max(w.nextRev, next)
			// Not to a watcher that starts later: etcd's client would
			// resume it from next.
			if w.progress && w.nextRev == next {
				w.s.post(&pb.WatchResponse{Header: hdr, WatchId: w.id})
			}
			if w.s.prog != nil {
				if waiting == nil {
					waiting = make(map[*stream]struct{})
				}
				waiting[w.s] = struct{}{}
			}
		}
		for s := range waiting {
			ws.checkProgress(s)
		}
	case len(resp.Events) > 0:
		for w := range b.receivers {
			w.send(hdr, resp.Events)
		}
		b.nextRev = max(b.nextRev, resp.Events[len(resp.Events)-1].Kv.ModRevision+1)
	}
	ws.coalesce(b)
}

// send posts the events w has not had yet, filtered as it asked.
func (w *watcher) send(hdr *pb.ResponseHeader, events []*clientv3.Event) {
	evs := make([]*mvccpb.Event, 0, len(events))
	var last int64
	for _, ev := range events {
		if ev.Kv.ModRevision < w.nextRev {
			continue
		}
		last = ev.Kv.ModRevision
		if (w.noPut && ev.Type == mvccpb.PUT) || (w.noDelete && ev.Type == mvccpb.DELETE) {
			continue
		}
		if !w.prevKV && ev.PrevKv != nil {
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		evs = append(evs, ev)
	}
	if last >= w.nextRev {
		w.nextRev = last + 1
	}
	if len(evs) > 0 {
		w.s.post(&pb.WatchResponse{Header: hdr, WatchId: w.id, Events: evs})
	}
}

// coalesce hands b's receivers to another created broadcast of the range
// that has not passed b, and closes b; ws.mu is held.
func (ws *watchServer) coalesce(b *bcast) {
	for _, c := range ws.ranges[b.wr] {
		if c == b || c.dead || !c.created || c.nextRev > b.nextRev {
			continue
		}
		for w := range b.receivers {
			c.receivers[w] = struct{}{}
			w.b = c
		}
		moved := b.receivers
		b.receivers = nil
		ws.kill(b)
		for w := range moved {
			ws.checkProgress(w.s)
		}
		return
	}
}

// end closes b after its upstream watch ended with resp. Receivers that
// need compacted history get the compaction; after a compaction the others
// move to another broadcast; after any other end they get the cancellation.
// ws.mu is held.
func (ws *watchServer) end(b *bcast, resp clientv3.WatchResponse, reason string) {
	ws.kill(b)
	if ws.ctx.Err() != nil {
		// The proxy is closing: its streams end with codes.Unavailable
		// and the clients resume elsewhere. A cancellation sent now would
		// end their watches for good.
		for w := range b.receivers {
			w.b = nil
		}
		b.receivers = nil
		return
	}
	hdr := resp.Header
	if hdr == nil {
		hdr = &pb.ResponseHeader{}
	}
	for w := range b.receivers {
		w.b = nil
		if resp.CompactRevision != 0 && w.nextRev >= resp.CompactRevision {
			ws.attach(w, 0)
			ws.checkProgress(w.s)
			continue
		}
		r := &pb.WatchResponse{Header: hdr, WatchId: w.id, Canceled: true}
		if resp.CompactRevision != 0 {
			r.CompactRevision = resp.CompactRevision
		} else {
			r.CancelReason = reason
		}
		w.s.post(r)
		delete(w.s.watchers, w.id)
		ws.m.watchers.Dec()
		ws.checkProgress(w.s)
	}
	b.receivers = nil
	if resp.CompactRevision != 0 {
		ws.log.Info("proxy: watch compacted", "key", b.wr.key, "compact_revision", resp.CompactRevision)
	} else {
		ws.log.Warn("proxy: upstream watch ended", "key", b.wr.key, "reason", reason)
	}
}

// kill marks b dead, stops its upstream watch and forgets it; ws.mu is
// held.
func (ws *watchServer) kill(b *bcast) {
	if b.dead {
		return
	}
	b.dead = true
	if b.inflight == 0 {
		// Otherwise askUpstream cancels it: until then its upstream watch
		// keeps clientv3's stream, which RequestProgress would recreate.
		b.cancel()
	}
	if b.key[0] == 'p' {
		delete(ws.asked, b.key)
	}
	bs := slices.DeleteFunc(ws.ranges[b.wr], func(x *bcast) bool { return x == b })
	if len(bs) == 0 {
		delete(ws.ranges, b.wr)
	} else {
		ws.ranges[b.wr] = bs
	}
	ws.m.upstreamWatches.Dec()
}

// detach removes w from its broadcast, closing the broadcast if it was the
// last receiver; ws.mu is held.
func (ws *watchServer) detach(w *watcher) {
	if b := w.b; b != nil {
		delete(b.receivers, w)
		if len(b.receivers) == 0 {
			ws.kill(b)
		}
		w.b = nil
	}
	ws.m.watchers.Dec()
}

func (ws *watchServer) cancelWatcher(s *stream, id int64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w := s.watchers[id]
	if w == nil {
		return
	}
	ws.detach(w)
	delete(s.watchers, id)
	s.post(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: id, Canceled: true})
	ws.checkProgress(s)
}

func (ws *watchServer) closeStream(s *stream) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	s.closed = true
	for _, w := range s.watchers {
		ws.detach(w)
	}
	s.watchers = nil
	s.prog = nil
}

// progressRequest handles a client's progress request on s.
func (ws *watchServer) progressRequest(s *stream) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if s.closed || ws.closing {
		return
	}
	if r := s.prog; r != nil {
		s.progNext = true
		// Ask again where the answer is overdue (lost with a broken
		// stream, or not given by etcd).
		for _, m := range r.wait {
			ws.ask(m.b)
		}
		return
	}
	ws.startRound(s)
}

// startRound starts a progress round on s; ws.mu is held. A stream without
// watchers gets no answer, as from etcd.
func (ws *watchServer) startRound(s *stream) {
	r := &progRound{wait: make(map[*watcher]progMark, len(s.watchers))}
	for _, w := range s.watchers {
		if b := w.b; b != nil && !b.dead {
			r.wait[w] = progMark{b, b.progSeq}
		}
	}
	if len(r.wait) == 0 {
		return
	}
	s.prog = r
	for _, m := range r.wait {
		ws.ask(m.b)
	}
}

// ask sends a progress request on b's upstream stream, unless one was sent
// there less than askAgainAfter ago and is still unanswered; ws.mu is held.
func (ws *watchServer) ask(b *bcast) {
	if b.dead || ws.closing || ws.ctx.Err() != nil {
		return
	}
	if t, ok := ws.asked[b.key]; ok && time.Since(t) < askAgainAfter {
		return
	}
	t := time.Now()
	ws.asked[b.key] = t
	b.inflight++
	ws.wg.Add(1)
	go ws.askUpstream(b, t)
}

// askUpstream sends a progress request on b's upstream stream. etcd
// answers it on every watch of the stream (clientv3 broadcasts the answer),
// and deliver counts the answers.
// It sends it again while it is not answered, up to askTries times in
// all; t is when ask recorded it in ws.asked.
func (ws *watchServer) askUpstream(b *bcast, t time.Time) {
	defer ws.wg.Done()
	defer func() {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		b.inflight--
		if b.dead && b.inflight == 0 {
			b.cancel()
		}
	}()
	for try := 1; ; try++ {
		// b's upstream watch is kept (see kill), so that clientv3 sends
		// the request on its stream instead of opening a new one; unless
		// the proxy is closing, when the watches are cancelled anyway.
		if ws.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(upstreamCtx(ws.ctx, b), askTimeout)
		if err := ws.cli.RequestProgress(ctx); err != nil {
			ws.log.Debug("proxy: upstream progress request", "key", b.wr.key, "err", err)
		}
		cancel()
		if try == askTries {
			return
		}
		timer := time.NewTimer(max(0, askAgainAfter-time.Since(t)))
		select {
		case <-timer.C:
		case <-ws.ctx.Done():
			timer.Stop()
			return
		}
		ws.mu.Lock()
		again := !b.dead && ws.asked[b.key].Equal(t)
		if again {
			t = time.Now()
			ws.asked[b.key] = t
		}
		ws.mu.Unlock()
		if !again {
			return
		}
	}
}

// checkProgress answers s's progress round if every broadcast it waits for
// has had a progress notification since; ws.mu is held. A watcher that has
// moved to another broadcast waits for that one.
func (ws *watchServer) checkProgress(s *stream) {
	r := s.prog
	if r == nil {
		return
	}
	waiting := false
	for w, m := range r.wait {
		switch {
		case s.watchers[w.id] != w:
			delete(r.wait, w)
		case w.b == nil:
			waiting = true // the proxy is closing
		case w.b != m.b:
			r.wait[w] = progMark{w.b, w.b.progSeq}
			ws.ask(w.b)
			waiting = true
		case m.b.progSeq == m.seq:
			waiting = true
		}
	}
	if waiting {
		return
	}
	s.prog = nil
	var hdr *pb.ResponseHeader
	rev := int64(-1)
	for _, w := range s.watchers {
		if rev < 0 || w.nextRev-1 < rev {
			rev = w.nextRev - 1
		}
		if w.b != nil && w.b.hdr != nil {
			hdr = w.b.hdr
		}
	}
	if rev > 0 {
		h := &pb.ResponseHeader{Revision: rev}
		if hdr != nil {
			h.ClusterId, h.MemberId, h.RaftTerm = hdr.ClusterId, hdr.MemberId, hdr.RaftTerm
		}
		s.post(&pb.WatchResponse{Header: h, WatchId: clientv3.InvalidWatchID})
	}
	if s.progNext {
		s.progNext = false
		ws.startRound(s)
	}
}
