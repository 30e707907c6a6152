package muster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking
	grpcresolver "google.golang.org/grpc/resolver"

	mbalancer "github.com/mustersd/muster/balancer"
	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/balancer/weighted"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/promx"
	"github.com/mustersd/muster/resolver"
)

// ServiceConfig returns the gRPC service config of clients made by
// NewClient: the balancing policy cfg.Balancer (default muster_p2c), in the
// client's zone (cfg.Metadata.Zone, else $MUSTER_ZONE) for the Muster
// policies, and every instance health-checked through the standard
// grpc.health.v1 service, so that an instance that reports NOT_SERVING (as a
// Muster server does first when it shuts down) gets no new RPC even before
// its key leaves etcd.
func ServiceConfig(cfg Config) string {
	policy := cfg.Balancer
	if policy == "" {
		policy = DefaultBalancer
	}
	lb := "{}"
	if (policy == p2c.Name || policy == weighted.Name) && cfg.Metadata.Zone != "" {
		js, _ := json.Marshal(map[string]string{"zone": cfg.Metadata.Zone})
		lb = string(js)
	}
	return fmt.Sprintf(`{"loadBalancingConfig":[{%q:%s}],"healthCheckConfig":{"serviceName":""}}`, policy, lb)
}

// NewClient returns a gRPC ClientConn to the service cfg.Name (or
// cfg.Etcd.Key), balanced by cfg.Balancer (default muster_p2c) with
// client-side health checking (see ServiceConfig), over plaintext unless
// WithDialOptions says otherwise. The instances come from exactly one source:
//
//   - Etcd.Hosts (or WithEtcdClient): the Muster resolver follows the
//     service in etcd. Clients made with the same etcd settings share one
//     etcd client, and so one etcd watch per service; it is closed when the
//     last of them closes.
//   - Endpoints: a fixed list, with the same metadata attributes as
//     instances found in etcd, so that every balancing policy works the same.
//   - Target: any gRPC target, e.g. "dns:///order-rpc.default.svc:8080".
//
// Like grpc.NewClient it does not connect: the first RPC does, or
// cc.Connect().
func NewClient(cfg Config, opts ...Option) (*grpc.ClientConn, error) {
	o := buildOptions(opts)
	cfg = cfg.WithDefaults()
	err := cfg.Validate()
	if cfg.Name == "" && cfg.Target == "" {
		err = errors.Join(err, fieldError("Name", "required: the service to call, e.g. order.rpc"))
	}
	if o.etcd == nil && len(cfg.Etcd.Hosts) == 0 && len(cfg.Endpoints) == 0 && cfg.Target == "" {
		err = errors.Join(err, fieldError("Etcd.Hosts", "required (or Endpoints, or Target): where to find the service's instances, e.g. [127.0.0.1:2379]"))
	}
	if o.etcd != nil && (len(cfg.Endpoints) > 0 || cfg.Target != "") {
		err = errors.Join(err, fieldError("Endpoints, Target", "not used with an etcd client (WithEtcdClient); set only one source of instances"))
	}
	if err != nil {
		return nil, fmt.Errorf("muster: client config: %w", err)
	}
	if o.registerer != nil {
		if _, err := promx.Register(o.registerer, mbalancer.Collector()); err != nil {
			return nil, fmt.Errorf("muster: metrics: %w", err)
		}
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(ServiceConfig(cfg)),
	}
	var target string
	switch {
	case cfg.Target != "":
		target = cfg.Target
	case len(cfg.Endpoints) > 0:
		eps := make([]endpoint.Endpoint, 0, len(cfg.Endpoints))
		for _, s := range cfg.Endpoints {
			e, err := parseStaticEndpoint(cfg.Name, s)
			if err != nil { // Validate has checked them
				return nil, fmt.Errorf("muster: client config: Endpoints: %w", err)
			}
			eps = append(eps, e)
		}
		target = resolver.StaticScheme + ":///" + cfg.Name
		dopts = append(dopts, grpc.WithResolvers(resolver.NewStaticBuilder(eps)))
	default:
		ropts := []resolver.Option{
			resolver.WithLogger(o.logger),
			resolver.WithRegisterer(o.registerer),
		}
		if cfg.Etcd.Namespace != "" {
			ropts = append(ropts, resolver.WithNamespace(cfg.Etcd.Namespace))
		}
		if len(cfg.Etcd.Formats) > 0 {
			ropts = append(ropts, resolver.WithFormat(strings.Join(cfg.Etcd.Formats, ",")))
		}
		var b grpcresolver.Builder
		if o.etcd != nil {
			b = resolver.NewBuilder(o.etcd, ropts...)
		} else {
			ec := cfg.etcdConfig()
			ec.Logger, ec.Registerer = o.logger, o.registerer
			b = &pooledBuilder{etcd: ec, opts: ropts}
		}
		target = resolver.Scheme + ":///" + cfg.Name
		dopts = append(dopts, grpc.WithResolvers(b))
	}
	cc, err := grpc.NewClient(target, append(dopts, o.dialOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("muster: dial %s: %w", target, err)
	}
	return cc, nil
}

// pool shares etcd clients between the ClientConns of NewClient that use the
// same etcd settings. A client lives while a resolver uses it.
var pool = struct {
	mu sync.Mutex
	m  map[string]*pooledClient
}{m: map[string]*pooledClient{}}

type pooledClient struct {
	cli  *clientv3.Client
	refs int
}

// poolKey identifies an etcd configuration; it stays in memory only.
func poolKey(c etcdclient.Config) string {
	// Clients that differ only in their logger or registerer share a
	// connection (with the first one's).
	c.Logger, c.Registerer = nil, nil
	return fmt.Sprintf("%#v", c)
}

// acquire returns the shared client for c, connecting when there is none.
// With authentication on, connecting waits for a token, up to DialTimeout.
func acquire(c etcdclient.Config) (*clientv3.Client, func(), error) {
	k := poolKey(c)
	pool.mu.Lock()
	defer pool.mu.Unlock()
	p := pool.m[k]
	if p == nil {
		cli, err := etcdclient.New(c)
		if err != nil {
			return nil, nil, err
		}
		p = &pooledClient{cli: cli}
		pool.m[k] = p
	}
	p.refs++
	var once sync.Once
	return p.cli, func() {
		once.Do(func() {
			pool.mu.Lock()
			defer pool.mu.Unlock()
			if p.refs--; p.refs == 0 {
				delete(pool.m, k)
				_ = p.cli.Close()
			}
		})
	}, nil
}

// pooledBuilder builds Muster resolvers on a shared etcd client, which it
// gets in the background so that Build never blocks on etcd.
type pooledBuilder struct {
	etcd etcdclient.Config
	opts []resolver.Option
}

func (b *pooledBuilder) Scheme() string { return resolver.Scheme }

func (b *pooledBuilder) Build(t grpcresolver.Target, cc grpcresolver.ClientConn, bo grpcresolver.BuildOptions) (grpcresolver.Resolver, error) {
	if _, err := resolver.ParseTarget(t); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &pooledResolver{cancel: cancel, done: make(chan struct{})}
	go r.run(ctx, b, t, cc, bo)
	return r, nil
}

type pooledResolver struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	inner   grpcresolver.Resolver
	release func()
}

func (r *pooledResolver) run(ctx context.Context, b *pooledBuilder, t grpcresolver.Target, cc grpcresolver.ClientConn, bo grpcresolver.BuildOptions) {
	defer close(r.done)
	delay := 100 * time.Millisecond
	for {
		cli, release, err := acquire(b.etcd)
		if err == nil {
			inner, err := resolver.NewBuilder(cli, b.opts...).Build(t, cc, bo)
			if err == nil {
				r.mu.Lock()
				r.inner, r.release = inner, release
				r.mu.Unlock()
				return
			}
			release()
		}
		cc.ReportError(fmt.Errorf("muster: etcd: %w", err))
		timer := time.NewTimer(delay/2 + rand.N(delay))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func (r *pooledResolver) ResolveNow(o grpcresolver.ResolveNowOptions) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inner != nil {
		r.inner.ResolveNow(o)
	}
}

func (r *pooledResolver) Close() {
	r.cancel()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inner != nil {
		r.inner.Close()
		r.release()
		r.inner = nil
	}
}
