package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy: closed")

// Option configures a Proxy.
type Option func(*options)

type options struct {
	logger     *slog.Logger
	registerer prometheus.Registerer
	// etcdWatch serves Watch from etcd's grpcproxy watch proxy instead of
	// Muster's own; for the tests that compare them.
	etcdWatch bool
}

// WithLogger sets the logger. By default nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithRegisterer registers the proxy's metrics with r (never the global
// registry unless r is it). By default the metrics are kept but not
// registered. Metrics: muster_proxy_watchers (client watchers attached),
// muster_proxy_upstream_watches (watches open on etcd),
// muster_proxy_watch_streams (client watch streams),
// muster_proxy_ranges_forwarded_total (Range requests sent to etcd).
func WithRegisterer(r prometheus.Registerer) Option {
	return func(o *options) { o.registerer = r }
}

// withEtcdWatchProxy makes the proxy serve Watch with etcd's grpcproxy
// watch proxy; tests only.
func withEtcdWatchProxy() Option {
	return func(o *options) { o.etcdWatch = true }
}

// DialOptions returns the gRPC dial options the proxy's etcd client needs
// so that each request it forwards carries the calling client's auth token
// (append them to clientv3.Config.DialOptions).
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(grpcproxy.AuthUnaryClientInterceptor),
		grpc.WithChainStreamInterceptor(grpcproxy.AuthStreamClientInterceptor),
	}
}

type metrics struct {
	watchers        prometheus.Gauge
	upstreamWatches prometheus.Gauge
	streams         prometheus.Gauge
	ranges          prometheus.Counter
}

func newMetrics(r prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_proxy_watchers",
			Help: "Watchers attached by the proxy's clients.",
		}),
		upstreamWatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_proxy_upstream_watches",
			Help: "Watches the proxy has open on etcd for its clients.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_proxy_watch_streams",
			Help: "Watch streams open by the proxy's clients.",
		}),
		ranges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "muster_proxy_ranges_forwarded_total",
			Help: "Range requests forwarded to etcd (all linearizable).",
		}),
	}
	if r != nil {
		for _, c := range []prometheus.Collector{m.watchers, m.upstreamWatches, m.streams, m.ranges} {
			if err := r.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Proxy serves etcd's gRPC API (KV, Watch, Lease, Cluster, Maintenance,
// Auth) and forwards it to an etcd cluster; see the package documentation.
// Its methods are safe for concurrent use.
type Proxy struct {
	cli     *clientv3.Client
	log     *slog.Logger
	metrics *metrics
	srv     *grpc.Server
	watch   *watchServer // nil with the etcd watch proxy

	ctx    context.Context
	cancel context.CancelFunc
	// waits lists what Close waits for (etcd's proxies' done channels).
	waits []<-chan struct{}

	// wg counts the goroutines of the lease relays, which Close waits for.
	wg sync.WaitGroup

	mu     sync.Mutex
	lis    net.Listener
	closed bool
}

// track adds n goroutines to wg, unless the proxy is closed.
func (p *Proxy) track(n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.wg.Add(n)
	return true
}

// New returns a proxy forwarding to the etcd cluster of cli. cli should be
// built with DialOptions (for authentication) and is not closed by the
// proxy. It fails only if a metric cannot be registered.
func New(cli *clientv3.Client, opts ...Option) (*Proxy, error) {
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{cli: cli, log: o.logger, metrics: m, ctx: ctx, cancel: cancel}

	p.srv = grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	pb.RegisterKVServer(p.srv, &kvServer{c: pb.NewKVClient(cli.ActiveConnection()), m: m})
	pb.RegisterClusterServer(p.srv, &clusterServer{p: p, c: pb.NewClusterClient(cli.ActiveConnection())})
	pb.RegisterMaintenanceServer(p.srv, grpcproxy.NewMaintenanceProxy(cli))
	pb.RegisterAuthServer(p.srv, grpcproxy.NewAuthProxy(cli))
	pb.RegisterLeaseServer(p.srv, &leaseServer{p: p, c: pb.NewLeaseClient(cli.ActiveConnection())})
	if o.etcdWatch {
		watchp, watchDone := grpcproxy.NewWatchProxy(ctx, zap.NewNop(), cli)
		pb.RegisterWatchServer(p.srv, watchp)
		p.waits = append(p.waits, watchDone)
	} else {
		p.watch = newWatchServer(ctx, cli, o.logger, m)
		pb.RegisterWatchServer(p.srv, p.watch)
	}
	return p, nil
}

// Serve serves clients on lis until Close. It returns ErrClosed after
// Close, or the listener's error.
func (p *Proxy) Serve(lis net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = lis.Close()
		return ErrClosed
	}
	p.lis = lis
	p.mu.Unlock()
	p.log.Info("proxy serving", "addr", lis.Addr().String())
	err := p.srv.Serve(lis)
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed || errors.Is(err, grpc.ErrServerStopped) {
		return ErrClosed
	}
	return err
}

// Close ends every client stream (watchers reconnect and resume from their
// last revision, on this proxy's successor or elsewhere), closes the
// proxy's watches on etcd, stops serving and waits for its goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.srv.Stop()
	if p.watch != nil {
		p.watch.wait()
	}
	for _, w := range p.waits {
		<-w
	}
	p.wg.Wait()
	return nil
}

// addr returns the address Serve listens on, or "" before Serve.
func (p *Proxy) addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis == nil {
		return ""
	}
	return p.lis.Addr().String()
}

// clientToken returns the auth token the client sent with the request of
// ctx, or "".
func clientToken(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	if ts := md.Get(rpctypes.TokenFieldNameGRPC); len(ts) > 0 {
		return ts[0]
	}
	return ""
}

// withToken returns ctx carrying token for the interceptors of DialOptions.
func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return context.WithValue(ctx, rpctypes.TokenFieldNameGRPCKey{}, token)
}
