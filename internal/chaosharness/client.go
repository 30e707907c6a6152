package chaosharness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/serviceconfig"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/internal/echo"
)

// ClientUnderTest is a discovery client under test: it finds the service's
// instances through etcd and calls them. Muster's is MusterClients; a peer
// (etcd's naming resolver, go-zero) plugs in with another ClientMaker.
type ClientUnderTest interface {
	// Call makes one RPC on the service and returns the name of the backend
	// that answered and the address the RPC went to (also when it failed,
	// if it got as far as a connection; "" otherwise). It must not wait
	// for a ready backend: a call that finds none fails, and counts as
	// failed.
	Call(ctx context.Context) (backend, addr string, err error)
	// Endpoints returns the addresses the client's resolver holds now,
	// sorted.
	Endpoints() []string
	// History returns every update of the client's endpoint set so far.
	History() []Update
	// Close releases the client.
	Close() error
}

// Update is one endpoint set a client's resolver delivered.
type Update struct {
	At    time.Time
	Addrs []string // sorted
}

// ClientMaker makes clients under test.
type ClientMaker struct {
	// Name names the kind of client in reports ("muster").
	Name string
	// New connects the i-th client of a scenario to service, through the
	// etcd endpoints hosts (the fault proxies). Clients made with different
	// i must not share an etcd watch, so that each is an independent
	// observer of etcd. log receives the client's own logs.
	New func(hosts []string, service string, i int, log *slog.Logger) (ClientUnderTest, error)
}

// MusterClients makes clients with muster.NewClient, as an application
// would: the default muster_p2c policy with client-side health checking,
// the Muster resolver on a pooled etcd client. The only addition is a
// pass-through balancer in front of muster_p2c that records the endpoint
// sets the resolver delivers.
var MusterClients = musterMaker("muster", "")

// MusterRetryClients are MusterClients whose service config also retries
// RPCs that fail UNAVAILABLE (up to 3 attempts): what an application whose
// methods are idempotent can add to survive a backend dying mid-RPC.
var MusterRetryClients = musterMaker("muster+retry", `,"methodConfig":[{"name":[{}],"retryPolicy":{`+
	`"maxAttempts":3,"initialBackoff":"0.01s","maxBackoff":"0.1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]`)

// musterMaker returns a ClientMaker of muster.NewClient clients; extra is
// appended to their service config.
func musterMaker(name, extra string) ClientMaker {
	return ClientMaker{
		Name: name,
		New: func(hosts []string, service string, i int, log *slog.Logger) (ClientUnderTest, error) {
			rec := newRecorder()
			// The host order differs per client, so that clients do not
			// share a pooled etcd client (and so one watch).
			cfg := muster.Config{Name: service, Etcd: muster.EtcdConfig{Hosts: rotate(hosts, i)}}
			sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"id":%q,"child":%q}}],"healthCheckConfig":{"serviceName":""}%s}`,
				observeName, rec.id, p2c.Name, extra)
			cc, err := muster.NewClient(cfg, muster.WithLogger(log), muster.WithDialOptions(grpc.WithDefaultServiceConfig(sc)))
			if err != nil {
				rec.release()
				return nil, err
			}
			cc.Connect()
			return &grpcClient{cc: cc, rec: rec}, nil
		},
	}
}

// ObservedClient makes a ClientUnderTest of a gRPC ClientConn: dial
// dials it with the given default service config, which runs the
// registered balancer child behind a pass-through that records every
// endpoint set the resolver delivers (extra is appended to the config,
// e.g. `,"healthCheckConfig":{"serviceName":""}`). Close closes the
// ClientConn, then runs onClose if not nil.
func ObservedClient(child, extra string, dial func(serviceConfig string) (*grpc.ClientConn, error), onClose func() error) (ClientUnderTest, error) {
	rec := newRecorder()
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"id":%q,"child":%q}}]%s}`, observeName, rec.id, child, extra)
	cc, err := dial(sc)
	if err != nil {
		rec.release()
		return nil, err
	}
	cc.Connect()
	return &grpcClient{cc: cc, rec: rec, onClose: onClose}, nil
}

// rotate returns hosts starting at index i.
func rotate(hosts []string, i int) []string {
	n := len(hosts)
	out := make([]string, 0, n)
	for j := range n {
		out = append(out, hosts[(i+j)%n])
	}
	return out
}

// grpcClient is a ClientUnderTest over a gRPC ClientConn whose policy is
// wrapped by the observing balancer.
type grpcClient struct {
	cc      *grpc.ClientConn
	rec     *recorder
	onClose func() error
}

func (c *grpcClient) Call(ctx context.Context) (string, string, error) {
	var p peer.Peer
	name, err := echo.Call(ctx, c.cc, grpc.Peer(&p))
	var addr string
	if p.Addr != nil {
		addr = p.Addr.String()
	}
	return name, addr, err
}

func (c *grpcClient) Endpoints() []string { return c.rec.current() }
func (c *grpcClient) History() []Update   { return c.rec.history() }
func (c *grpcClient) Close() error {
	err := c.cc.Close()
	c.rec.release()
	if c.onClose != nil {
		err = errors.Join(err, c.onClose())
	}
	return err
}

// The observing balancer: a pass-through in front of a child policy that
// records the endpoints of every resolver update. Its config names the
// recorder and the child: {"id":"3","child":"muster_p2c"}.
const observeName = "chaos_observe"

func init() { balancer.Register(observeBuilder{}) }

var recorders = struct {
	sync.Mutex
	next atomic.Int64
	m    map[string]*recorder
}{m: map[string]*recorder{}}

// recorder keeps the endpoint sets a ClientConn's resolver delivered.
type recorder struct {
	id      string
	mu      sync.Mutex
	updates []Update
	errs    int
}

func newRecorder() *recorder {
	r := &recorder{id: fmt.Sprint(recorders.next.Add(1))}
	recorders.Lock()
	recorders.m[r.id] = r
	recorders.Unlock()
	return r
}

func (r *recorder) release() {
	recorders.Lock()
	delete(recorders.m, r.id)
	recorders.Unlock()
}

func lookupRecorder(id string) *recorder {
	recorders.Lock()
	defer recorders.Unlock()
	return recorders.m[id]
}

func (r *recorder) record(addrs []string) {
	slices.Sort(addrs)
	r.mu.Lock()
	defer r.mu.Unlock()
	if n := len(r.updates); n > 0 && slices.Equal(r.updates[n-1].Addrs, addrs) {
		return
	}
	r.updates = append(r.updates, Update{At: time.Now(), Addrs: addrs})
}

func (r *recorder) resolverError() {
	r.mu.Lock()
	r.errs++
	r.mu.Unlock()
}

func (r *recorder) current() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.updates) == 0 {
		return nil
	}
	return r.updates[len(r.updates)-1].Addrs
}

func (r *recorder) history() []Update {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.updates)
}

type observeConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
	ID                                string `json:"id"`
	Child                             string `json:"child"`

	childConfig serviceconfig.LoadBalancingConfig
}

type observeBuilder struct{}

func (observeBuilder) Name() string { return observeName }

func (observeBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	c := &observeConfig{}
	if err := json.Unmarshal(js, c); err != nil {
		return nil, fmt.Errorf("%s: %w", observeName, err)
	}
	b := balancer.Get(c.Child)
	if b == nil {
		return nil, fmt.Errorf("%s: unknown child policy %q", observeName, c.Child)
	}
	if p, ok := b.(balancer.ConfigParser); ok {
		cc, err := p.ParseConfig(json.RawMessage("{}"))
		if err != nil {
			return nil, fmt.Errorf("%s: child %s: %w", observeName, c.Child, err)
		}
		c.childConfig = cc
	}
	return c, nil
}

func (observeBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	return &observeBalancer{cc: cc, opts: opts}
}

type observeBalancer struct {
	cc    balancer.ClientConn
	opts  balancer.BuildOptions
	rec   *recorder
	child balancer.Balancer
}

func (b *observeBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*observeConfig)
	if !ok {
		return fmt.Errorf("%s: config of type %T", observeName, s.BalancerConfig)
	}
	if b.rec == nil {
		b.rec = lookupRecorder(cfg.ID)
	}
	if b.child == nil {
		b.child = balancer.Get(cfg.Child).Build(b.cc, b.opts)
	}
	if b.rec != nil {
		var addrs []string
		for _, e := range s.ResolverState.Endpoints {
			for _, a := range e.Addresses {
				addrs = append(addrs, a.Addr)
			}
		}
		if len(s.ResolverState.Endpoints) == 0 {
			for _, a := range s.ResolverState.Addresses {
				addrs = append(addrs, a.Addr)
			}
		}
		b.rec.record(addrs)
	}
	s.BalancerConfig = cfg.childConfig
	return b.child.UpdateClientConnState(s)
}

func (b *observeBalancer) ResolverError(err error) {
	if b.rec != nil {
		b.rec.resolverError()
	}
	if b.child == nil {
		// No config yet: the default child, so that the channel reports
		// the error rather than waiting.
		b.child = balancer.Get(p2c.Name).Build(b.cc, b.opts)
	}
	b.child.ResolverError(err)
}

func (b *observeBalancer) UpdateSubConnState(sc balancer.SubConn, s balancer.SubConnState) {
	if b.child != nil {
		//lint:ignore SA1019 a pass-through forwards what the balancer.Balancer interface still carries
		b.child.UpdateSubConnState(sc, s)
	}
}

func (b *observeBalancer) Close() {
	if b.child != nil {
		b.child.Close()
	}
}

func (b *observeBalancer) ExitIdle() {
	if b.child != nil {
		b.child.ExitIdle()
	}
}
