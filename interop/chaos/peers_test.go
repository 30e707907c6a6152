//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	_ "unsafe" // go:linkname, to close go-zero's etcd clients after each scenario

	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/syncx"
	"github.com/zeromicro/go-zero/zrpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mustersd/muster/internal/chaosharness"
	"github.com/mustersd/muster/internal/echo"
)

// The systems, by the name MUSTER_CHAOS_SYSTEMS and the subtests use.
type system struct {
	id       string
	backends chaosharness.BackendMaker
	clients  chaosharness.ClientMaker
	after    func() // run once the scenario has ended
}

var systems = []system{
	{id: "muster", backends: chaosharness.MusterBackends, clients: chaosharness.MusterClients},
	{id: "etcdnaming", backends: etcdNamingBackends, clients: etcdNamingClients},
	{id: "gozero", backends: goZeroBackends, clients: goZeroClients, after: closeGoZeroClients},
}

// TestChaosPeers runs every scenario with every system, records what each
// does and prints the table.
func TestChaosPeers(t *testing.T) {
	p := chaosharness.EnvParams(t)
	p.RecordOnly = true
	p.Observe = chaosharness.EnvDuration(t, "MUSTER_CHAOS_OBSERVE", 30*time.Second)
	chosen := systems
	if s := os.Getenv("MUSTER_CHAOS_SYSTEMS"); s != "" {
		ids := strings.Split(s, ",")
		chosen = slices.DeleteFunc(slices.Clone(systems), func(s system) bool { return !slices.Contains(ids, s.id) })
		if len(chosen) == 0 {
			t.Fatalf("MUSTER_CHAOS_SYSTEMS=%q names no system", s)
		}
	}
	var results []chaosharness.Result
	for _, sc := range chaosharness.Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			for _, s := range chosen {
				t.Run(s.id, func(t *testing.T) {
					if s.after != nil {
						t.Cleanup(s.after) // after the scenario's own cleanups
					}
					p := p
					p.Servers, p.Maker = s.backends, s.clients
					results = append(results, sc.Run(t, p))
				})
			}
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\nPeers under the same faults: TTL %v, bound %v, timed faults %v, watched %v after each fault, %d backends, %d clients x %d workers\n\n",
		p.TTL, p.Bound, p.Fault, max(p.Observe, p.TTL+p.Bound+time.Second), p.Backends, p.Clients, p.Workers)
	b.WriteString(chaosharness.PeerTableHeader + "\n")
	for _, r := range results {
		b.WriteString(r.PeerLine() + "\n")
	}
	fmt.Print(b.String())
}

// etcdClient is an etcd client as the examples of etcd's naming packages
// make one: the endpoints and a dial timeout, nothing else (in particular
// no gRPC keepalive). Its logs are dropped.
func etcdClient(hosts []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: hosts, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// etcdNamingBackends register with etcd's endpoints.Manager: a lease of
// their own (Grant with the TTL), AddEndpoint of services/echo.rpc/<addr>
// under it, and clientv3's KeepAlive on the lease, its channel drained.
// Nothing re-registers: the Manager has no lease handling, and when
// KeepAlive gives up (the lease expired or was revoked) its channel
// closes, which a backend can only log. They stop as such a server does:
// DeleteEndpoint, Revoke, GracefulStop.
var etcdNamingBackends = chaosharness.BackendMaker{
	Name:   "etcd naming",
	Prefix: "services/" + chaosharness.Service + "/",
	Addr:   chaosharness.AddrFromKey("services/" + chaosharness.Service + "/"),
	Start: func(ctx context.Context, cfg chaosharness.BackendConfig) (chaosharness.Backend, error) {
		srv, err := echo.Start(cfg.Name, "")
		if err != nil {
			return nil, err
		}
		cli, err := etcdClient(cfg.Hosts)
		if err != nil {
			srv.Stop()
			return nil, err
		}
		b := &etcdNamingBackend{srv: srv, cli: cli, key: "services/" + cfg.Service + "/" + srv.Addr}
		// Registration in attempts of 3s, until ctx ends: a request can
		// hang on a member that does not answer.
		for {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			err = b.register(actx, cfg)
			cancel()
			if err == nil {
				return b, nil
			}
			if ctx.Err() != nil {
				srv.Stop()
				_ = cli.Close()
				return nil, err
			}
			cfg.Log.Warn("etcd naming: registration failed; trying again", "err", err)
		}
	},
}

type etcdNamingBackend struct {
	once   sync.Once
	srv    *echo.Server
	cli    *clientv3.Client
	em     endpoints.Manager
	key    string
	lease  clientv3.LeaseID
	cancel context.CancelFunc
}

func (b *etcdNamingBackend) register(ctx context.Context, cfg chaosharness.BackendConfig) error {
	em, err := endpoints.NewManager(b.cli, "services/"+cfg.Service)
	if err != nil {
		return err
	}
	b.em = em
	lease, err := b.cli.Grant(ctx, int64(cfg.TTL/time.Second))
	if err != nil {
		return err
	}
	b.lease = lease.ID
	if err := em.AddEndpoint(ctx, b.key, endpoints.Endpoint{Addr: b.srv.Addr}, clientv3.WithLease(lease.ID)); err != nil {
		return err
	}
	kctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	ch, err := b.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		cancel()
		return err
	}
	go func() {
		for range ch {
		}
		cfg.Log.Warn("etcd naming: the lease's KeepAlive channel closed; the endpoint is no longer kept alive")
	}()
	return nil
}

func (b *etcdNamingBackend) Addr() string { return b.srv.Addr }

func (b *etcdNamingBackend) Shutdown(ctx context.Context) error {
	var err error
	b.once.Do(func() { err = b.shutdown(ctx) })
	return err
}

func (b *etcdNamingBackend) shutdown(ctx context.Context) error {
	call := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return f(ctx)
	}
	err := call(func(ctx context.Context) error { return b.em.DeleteEndpoint(ctx, b.key) })
	err2 := call(func(ctx context.Context) error { _, err := b.cli.Revoke(ctx, b.lease); return err })
	b.cancel()
	b.srv.GRPC.GracefulStop()
	b.srv.Stop()
	_ = b.cli.Close()
	if err != nil {
		return err
	}
	return err2
}

// etcdNamingClients resolve etcd:///services/echo.rpc with etcd's naming
// resolver on an etcd client of their own, and balance with gRPC's
// round_robin (etcd's documented use).
var etcdNamingClients = chaosharness.ClientMaker{
	Name: "etcd naming",
	New: func(hosts []string, service string, i int, _ *slog.Logger) (chaosharness.ClientUnderTest, error) {
		cli, err := etcdClient(hosts)
		if err != nil {
			return nil, err
		}
		rb, err := etcdresolver.NewBuilder(cli)
		if err != nil {
			_ = cli.Close()
			return nil, err
		}
		c, err := chaosharness.ObservedClient("round_robin", "", func(sc string) (*grpc.ClientConn, error) {
			return grpc.NewClient("etcd:///services/"+service,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithResolvers(rb), // before zrpc's global "etcd" scheme
				grpc.WithDefaultServiceConfig(sc))
		}, cli.Close)
		if err != nil {
			_ = cli.Close()
		}
		return c, err
	},
}

// goZeroBackends register as a zrpc server with Etcd {Hosts, Key}
// configured does: discov.NewPublisher(hosts, key, addr).KeepAlive(),
// with discov.TimeToLive set to the TTL. go-zero shares one etcd client
// between all the Publishers and Subscribers of a process with the same
// hosts, so every backend gets proxies of its own, as if it ran in its own
// process. They stop as zrpc does: Publisher.Stop (which revokes in the
// background), go-zero's 1s wrap-up time, GracefulStop.
var goZeroBackends = chaosharness.BackendMaker{
	Name:       "go-zero",
	Prefix:     chaosharness.Service + "/",
	Addr:       func(_, value []byte) string { return string(value) },
	OwnProxies: true,
	Start: func(ctx context.Context, cfg chaosharness.BackendConfig) (chaosharness.Backend, error) {
		srv, err := echo.Start(cfg.Name, "")
		if err != nil {
			return nil, err
		}
		setGoZeroTTL(cfg.TTL)
		b := &goZeroBackend{srv: srv, quit: make(chan struct{})}
		started := make(chan struct{})
		go b.publish(cfg, started)
		select {
		case <-started:
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			// Not registered yet: see publish. It serves meanwhile; the
			// run records when (or whether) it gets into etcd.
			cfg.Log.Warn("go-zero: not registered after 5s; still trying")
		}
		return b, nil
	},
}

var goZeroTTL sync.Mutex

func setGoZeroTTL(ttl time.Duration) {
	goZeroTTL.Lock()
	defer goZeroTTL.Unlock()
	discov.TimeToLive = int64(ttl / time.Second)
}

type goZeroBackend struct {
	srv  *echo.Server
	quit chan struct{}
	once sync.Once

	mu  sync.Mutex
	pub *discov.Publisher
}

// publish registers the backend. A zrpc server whose Publisher.KeepAlive
// fails does not start (the process exits), and is restarted by whatever
// supervises it: here, a new Publisher every second until one succeeds.
// KeepAlive fails, for instance, when go-zero cannot make its etcd client:
// go-zero sets RejectOldCluster, so clientv3.New asks every endpoint for
// its version within the 5s dial timeout, and one unreachable member
// fails it. KeepAlive can also hang: its Grant and Put have no deadline.
func (b *goZeroBackend) publish(cfg chaosharness.BackendConfig, started chan struct{}) {
	for {
		pub := discov.NewPublisher(slices.Clone(cfg.Hosts), cfg.Service, b.srv.Addr)
		b.mu.Lock()
		b.pub = pub
		b.mu.Unlock()
		err := pub.KeepAlive()
		if err == nil {
			close(started)
			return
		}
		cfg.Log.Warn("go-zero: Publisher.KeepAlive failed; a new one in 1s", "err", err)
		pub.Stop()
		select {
		case <-b.quit:
			return
		case <-time.After(time.Second):
		}
	}
}

func (b *goZeroBackend) Addr() string { return b.srv.Addr }

func (b *goZeroBackend) Shutdown(context.Context) error {
	b.once.Do(b.shutdown)
	return nil
}

func (b *goZeroBackend) shutdown() {
	close(b.quit)
	b.mu.Lock()
	pub := b.pub
	b.mu.Unlock()
	pub.Stop()
	time.Sleep(time.Second) // go-zero's proc: wrap-up listeners, then 1s, then shutdown listeners
	b.srv.GRPC.GracefulStop()
	b.srv.Stop()
}

// goZeroClients are zrpc clients with Etcd {Hosts, Key}: go-zero's
// discov Subscriber-based resolver and its p2c_ewma balancer, with zrpc's
// defaults (non-blocking dial, 2s timeout, the default middlewares:
// tracing, duration, Prometheus, breaker, timeout).
var goZeroClients = chaosharness.ClientMaker{
	Name: "go-zero",
	New: func(hosts []string, service string, _ int, _ *slog.Logger) (chaosharness.ClientUnderTest, error) {
		conf := zrpc.RpcClientConf{
			Etcd:         discov.EtcdConf{Hosts: slices.Clone(hosts), Key: service},
			NonBlock:     true,
			Timeout:      2000,
			Middlewares:  zrpc.ClientMiddlewaresConf{Trace: true, Duration: true, Prometheus: true, Breaker: true, Timeout: true},
			BalancerName: "p2c_ewma",
		}
		return chaosharness.ObservedClient(conf.BalancerName, "", func(sc string) (*grpc.ClientConn, error) {
			c, err := zrpc.NewClient(conf, zrpc.WithDialOption(grpc.WithDefaultServiceConfig(sc)))
			if err != nil {
				return nil, err
			}
			return c.Conn(), nil
		}, nil)
	},
}

// goZeroConns is go-zero's cache of etcd clients, one per set of hosts
// (core/discov/internal/registry.go: connManager), which go-zero never
// closes. Each scenario has proxies of its own, so the clients of the
// scenarios before are useless; closing them after each scenario keeps
// them from retrying a closed proxy for the rest of the run.
//
//go:linkname goZeroConns github.com/zeromicro/go-zero/core/discov/internal.connManager
var goZeroConns *syncx.ResourceManager

func closeGoZeroClients() {
	_ = goZeroConns.Close()
	goZeroConns = syncx.NewResourceManager() // Close leaves it unusable
}
