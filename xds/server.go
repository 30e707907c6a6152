package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
)

// The resource types the server serves.
const (
	listenerType = resourcev3.ListenerType
	routeType    = resourcev3.RouteType
	clusterType  = resourcev3.ClusterType
	endpointType = resourcev3.EndpointType
)

// ErrClosed is returned by Serve on a closed Server.
var ErrClosed = errors.New("xds: server closed")

// Server is an xDS (ADS, state of the world) server that serves Muster
// services to proxyless gRPC clients. Its methods are safe for concurrent
// use.
type Server struct {
	cli   *clientv3.Client
	o     options
	m     *metrics
	cache map[string]*cachev3.LinearCache // by type URL
	ads   serverv3.Server

	ctx    context.Context // ends the ADS streams when cancelled by Close
	cancel context.CancelFunc

	stopping sync.WaitGroup // services being stopped after their last client left

	mu       sync.Mutex
	closed   bool
	gs       *grpc.Server // of Serve
	streams  map[int64]*stream
	services map[string]*service
}

// stream is one client's ADS stream.
type stream struct {
	peer  string
	node  string
	names map[string]bool // Listener names it asks for
}

// service is a service some client asked for: its etcd subscription and
// the goroutine that turns its snapshots into assignments.
type service struct {
	name   string
	sub    *discovery.Subscription
	refs   int         // streams asking for it; guarded by Server.mu
	linger *time.Timer // releases it after the last stream left; guarded by Server.mu
	done   chan struct{}

	mu      sync.Mutex // guards stopped and hasCLA against the pump
	stopped bool
	hasCLA  bool
}

// New returns a Server that reads services from etcd through cli. It
// serves nothing until Serve is called or it is registered on a gRPC
// server with Register. Close releases it; cli stays the caller's.
func New(cli *clientv3.Client, opts ...Option) (*Server, error) {
	if cli == nil {
		return nil, errors.New("xds: nil etcd client")
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := ParsePolicy(string(o.policy)); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	s := &Server{
		cli:      cli,
		o:        o,
		m:        m,
		cache:    map[string]*cachev3.LinearCache{},
		streams:  map[int64]*stream{},
		services: map[string]*service{},
	}
	// A version prefix of its own, so that a client reconnecting after a
	// restart never takes this server's versions for those it already has.
	prefix := fmt.Sprintf("%016x-", rand.Uint64())
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, t := range []string{listenerType, routeType, clusterType, endpointType} {
		c := cachev3.NewLinearCache(t, cachev3.WithVersionPrefix(prefix))
		s.cache[t] = c
		mux.Caches[t] = c
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.ads = serverv3.NewServer(s.ctx, unknownTypes{mux}, serverv3.CallbackFuncs{
		StreamOpenFunc:      s.onStreamOpen,
		StreamClosedFunc:    s.onStreamClosed,
		StreamRequestFunc:   s.onStreamRequest,
		StreamResponseFunc:  s.onStreamResponse,
		DeltaStreamOpenFunc: s.onDeltaStreamOpen,
		FetchRequestFunc:    s.onFetchRequest,
	})
	return s, nil
}

// Register registers the server's Aggregated Discovery Service on r, for
// callers that serve it on a gRPC server of their own. Close then ends the
// ADS streams, but stopping r stays the caller's job.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	discoverypb.RegisterAggregatedDiscoveryServiceServer(r, s.ads)
}

// Serve serves ADS on lis until Close, on a gRPC server of its own built
// with opts, and returns nil after Close. It returns ErrClosed if the
// server was closed before, and an error if it is serving already.
func (s *Server) Serve(lis net.Listener, opts ...grpc.ServerOption) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.gs != nil {
		s.mu.Unlock()
		return errors.New("xds: Serve called twice")
	}
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	s.gs = gs
	s.mu.Unlock()
	if err := gs.Serve(lis); err != nil {
		return fmt.Errorf("xds: serve %s: %w", lis.Addr(), err)
	}
	return nil
}

// Close ends every ADS stream, stops the gRPC server of Serve, and closes
// every etcd subscription. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	svcs := s.services
	s.services = map[string]*service{}
	gs := s.gs
	for _, svc := range svcs {
		if svc.linger != nil {
			svc.linger.Stop()
		}
	}
	s.mu.Unlock()

	s.cancel() // the stream handlers return
	if gs != nil {
		gs.Stop()
	}
	for _, svc := range svcs {
		s.stop(svc, false)
	}
	s.stopping.Wait()
	return nil
}

// Services returns the names of the services the server currently follows
// in etcd (one watch each), sorted.
func (s *Server) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.services))
}

func (s *Server) onStreamOpen(ctx context.Context, id int64, _ string) error {
	st := &stream{names: map[string]bool{}}
	if p, ok := peer.FromContext(ctx); ok {
		st.peer = p.Addr.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.streams[id] = st
	s.m.streams.Inc()
	return nil
}

func (s *Server) onStreamClosed(id int64, node *corepb.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return
	}
	delete(s.streams, id)
	s.m.streams.Dec()
	for name := range st.names {
		s.release(name)
	}
	s.o.logger.Debug("xds client gone", "stream", id, "peer", st.peer, "node", node.GetId())
}

func (s *Server) onDeltaStreamOpen(context.Context, int64, string) error {
	return errors.New("xds: incremental (delta) xDS is not served; use state of the world")
}

func (s *Server) onFetchRequest(context.Context, *discoverypb.DiscoveryRequest) error {
	return errors.New("xds: REST fetch is not served; use ADS")
}

func (s *Server) onStreamRequest(id int64, req *discoverypb.DiscoveryRequest) error {
	if d := req.GetErrorDetail(); d != nil {
		s.m.nacks.WithLabelValues(typeLabel(req.GetTypeUrl())).Inc()
		s.o.logger.Warn("xds client rejected a response", "stream", id, "type", typeLabel(req.GetTypeUrl()),
			"names", req.GetResourceNames(), "error", d.GetMessage())
	}
	if req.GetTypeUrl() != listenerType {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	st, ok := s.streams[id]
	if !ok {
		return nil
	}
	if n := req.GetNode(); n != nil && st.node == "" {
		st.node = n.GetId()
		s.o.logger.Info("xds client connected", "stream", id, "peer", st.peer, "node", st.node, "zone", n.GetLocality().GetZone())
	}
	want := map[string]bool{}
	for _, name := range req.GetResourceNames() {
		if err := endpoint.ValidateService(name); err != nil {
			if !st.names[name] {
				s.o.logger.Warn("xds client asked for an invalid service name", "stream", id, "name", name, "error", err)
			}
			continue
		}
		want[name] = true
	}
	for name := range want {
		if !st.names[name] {
			if err := s.acquire(name); err != nil {
				s.o.logger.Error("xds: cannot follow service", "service", name, "error", err)
				delete(want, name)
			}
		}
	}
	for name := range st.names {
		if !want[name] {
			s.release(name)
		}
	}
	st.names = want
	return nil
}

func (s *Server) onStreamResponse(_ context.Context, _ int64, req *discoverypb.DiscoveryRequest, _ *discoverypb.DiscoveryResponse) {
	s.m.pushes.WithLabelValues(typeLabel(req.GetTypeUrl())).Inc()
}

// acquire takes a reference on service name, subscribing to it in etcd and
// publishing its Listener, RouteConfiguration and Cluster if it is new.
// s.mu is held.
func (s *Server) acquire(name string) error {
	if svc, ok := s.services[name]; ok {
		svc.refs++
		if svc.linger != nil {
			svc.linger.Stop()
			svc.linger = nil
		}
		return nil
	}
	dopts := append([]discovery.Option{
		discovery.WithLogger(s.o.logger), discovery.WithRegisterer(s.o.registerer),
	}, s.o.discovery...)
	sub, err := discovery.Subscribe(s.cli, name, dopts...)
	if err != nil {
		return fmt.Errorf("xds: subscribe to %s: %w", name, err)
	}
	svc := &service{name: name, sub: sub, refs: 1, done: make(chan struct{})}
	s.services[name] = svc
	// These three depend on the name only: they are there at once, so that
	// the client's next requests find them; the assignment follows the
	// first snapshot from etcd.
	for t, r := range map[string]types.Resource{
		listenerType: listener(name),
		routeType:    routeConfig(name),
		clusterType:  cluster(name, s.o.policy),
	} {
		_ = s.cache[t].UpdateResource(name, r) // only fails with a nil resource
		s.m.resources.WithLabelValues(typeLabel(t)).Inc()
	}
	s.m.watchers.Inc()
	s.o.logger.Info("xds: following service", "service", name)
	go s.pump(svc)
	return nil
}

// release drops a reference on service name; the last one stops the
// service after the linger delay. s.mu is held.
func (s *Server) release(name string) {
	svc, ok := s.services[name]
	if !ok {
		return
	}
	if svc.refs--; svc.refs > 0 {
		return
	}
	if s.o.linger == 0 {
		delete(s.services, name)
		s.stopping.Go(func() { s.stop(svc, true) })
		return
	}
	svc.linger = time.AfterFunc(s.o.linger, func() {
		s.mu.Lock()
		if s.closed || s.services[name] != svc || svc.refs > 0 {
			s.mu.Unlock()
			return
		}
		delete(s.services, name)
		s.stopping.Add(1)
		s.mu.Unlock()
		defer s.stopping.Done()
		s.stop(svc, true)
	})
}

// stop closes the subscription of svc, already out of s.services, waits
// for its pump, and, with unpublish, takes its resources out of the cache.
func (s *Server) stop(svc *service, unpublish bool) {
	svc.mu.Lock()
	svc.stopped = true
	hadCLA := svc.hasCLA
	svc.mu.Unlock()
	svc.sub.Close()
	<-svc.done
	s.m.watchers.Dec()
	held := []string{listenerType, routeType, clusterType}
	if hadCLA {
		held = append(held, endpointType)
	}
	for _, t := range held {
		s.m.resources.WithLabelValues(typeLabel(t)).Dec()
		if unpublish {
			_ = s.cache[t].DeleteResource(svc.name) // only fails for a name it does not hold
		}
	}
	s.o.logger.Info("xds: released service", "service", svc.name)
}

// pump publishes the assignment of every new snapshot of svc. An error
// state changes nothing: the last assignment stays served.
func (s *Server) pump(svc *service) {
	defer close(svc.done)
	var (
		rev     int64
		last    *endpointpb.ClusterLoadAssignment
		lastErr error
	)
	for st := range svc.sub.Updates() {
		start := time.Now()
		switch {
		case st.Err != nil && lastErr == nil:
			s.o.logger.Warn("xds: etcd trouble; serving the last assignment", "service", svc.name,
				"endpoints", len(st.Snapshot.Endpoints), "error", st.Err)
		case st.Err == nil && lastErr != nil:
			s.o.logger.Info("xds: etcd back", "service", svc.name)
		}
		lastErr = st.Err
		if st.Snapshot.Revision == 0 || st.Snapshot.Revision == rev {
			continue
		}
		rev = st.Snapshot.Revision
		cla, skipped := assignment(svc.name, st.Snapshot.Endpoints)
		for _, addr := range skipped {
			s.o.logger.Warn("xds: endpoint address is not host:port; left out", "service", svc.name, "addr", addr)
		}
		if last != nil && proto.Equal(cla, last) {
			continue
		}
		last = cla
		svc.mu.Lock()
		if svc.stopped {
			svc.mu.Unlock()
			return
		}
		err := s.cache[endpointType].UpdateResource(svc.name, cla)
		if err == nil && !svc.hasCLA {
			svc.hasCLA = true
			s.m.resources.WithLabelValues(typeLabel(endpointType)).Inc()
		}
		svc.mu.Unlock()
		if err != nil {
			s.o.logger.Error("xds: set assignment", "service", svc.name, "error", err)
			continue
		}
		s.m.pushLatency.Observe(time.Since(start).Seconds())
		s.o.logger.Debug("xds: assignment", "service", svc.name, "revision", rev, "endpoints", len(st.Snapshot.Endpoints)-len(skipped))
	}
}

var _ cachev3.Cache = unknownTypes{}

// unknownTypes serves the four types of the MuxCache and answers nothing,
// rather than ending the stream, for any other type a client asks for.
type unknownTypes struct{ *cachev3.MuxCache }

func (u unknownTypes) CreateWatch(r *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if _, ok := u.Caches[r.GetTypeUrl()]; !ok {
		return func() {}, nil
	}
	return u.MuxCache.CreateWatch(r, sub, ch)
}
