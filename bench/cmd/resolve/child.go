package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/mustersd/muster/bench/internal/benchenv"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/zeromicro/go-zero/core/logx"
	zrpcresolver "github.com/zeromicro/go-zero/zrpc/resolver"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/grpclog"

	"github.com/mustersd/muster/resolver"
)

// resultFD is the file descriptor on which a child reports to its parent
// (cmd.ExtraFiles[0]); stdout and stderr stay free for whatever the
// libraries print.
const resultFD = 3

// message is one line of JSON from a child to its parent.
type message struct {
	Type  string `json:"type"` // "ready", "done" or "error"
	Error string `json:"error,omitempty"`

	// "ready": sent when all N ClientConns have resolved the initial set;
	// the child then waits for a line on stdin before the changes.
	InitWall   time.Duration `json:"init_wall,omitempty"`
	HeapGrowth int64         `json:"heap_growth,omitempty"`
	RSSGrowth  int64         `json:"rss_growth,omitempty"`
	Goroutines int           `json:"goroutines,omitempty"`

	// "done": sent after the changes.
	Add   []time.Duration `json:"add,omitempty"`   // write start until all N saw the new address
	First []time.Duration `json:"first,omitempty"` // write start until the first saw it
	Del   []time.Duration `json:"del,omitempty"`   // delete start until all N no longer had the old one
	Put   []time.Duration `json:"put,omitempty"`   // the Put call alone (etcd's commit)
	CPU   time.Duration   `json:"cpu,omitempty"`   // the child's CPU during the changes
}

// keep holds the ClientConns, so that nothing is collected while the parent
// reads etcd's metrics.
var keep []any

// system is how one resolver is used: its target, and the key and value of
// an endpoint in its format (setup makes its dial options).
type system struct {
	target string
	key    func(id int) string
	value  func(addr string) string
	prefix string
}

// format returns the key layout and value format of sys; its resolver is set
// up later by setup.
func format(sys, etcdHost string) system {
	switch sys {
	case sysGoZero:
		// go-zero's discov.Publisher puts <key>/<lease id> = host:port.
		return system{
			target: "discov://" + etcdHost + "/" + service,
			prefix: service + "/",
			key:    func(id int) string { return service + "/" + strconv.Itoa(7587000000000000+id) },
			value:  func(a string) string { return a },
		}
	default:
		// Muster's native format is etcd naming's: the same key and the
		// JSON endpoints.Manager writes.
		s := system{
			target: resolver.Scheme + ":///" + service,
			prefix: "services/" + service + "/",
			value: func(a string) string {
				b, _ := json.Marshal(endpoints.Endpoint{Addr: a})
				return string(b)
			},
		}
		s.key = func(id int) string { return s.prefix + addr(id) }
		if sys == sysEtcd {
			s.target = "etcd:///services/" + service
		}
		return s
	}
}

// setup creates what the system's resolver needs (an etcd client for
// Muster's and etcd's; go-zero's makes its own, on the first Build) and
// returns the dial options that use it.
func setup(sys, etcdURL string) ([]grpc.DialOption, error) {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(serviceConfig),
	}
	switch sys {
	case sysMuster:
		cli, err := newClient(etcdURL)
		if err != nil {
			return nil, err
		}
		keep = append(keep, cli)
		return append(opts, grpc.WithResolvers(resolver.NewBuilder(cli))), nil
	case sysEtcd:
		cli, err := newClient(etcdURL)
		if err != nil {
			return nil, err
		}
		keep = append(keep, cli)
		b, err := etcdresolver.NewBuilder(cli)
		if err != nil {
			return nil, fmt.Errorf("etcd naming resolver: %w", err)
		}
		return append(opts, grpc.WithResolvers(b)), nil
	case sysGoZero:
		// zrpc/resolver.Register was called before the baseline; its
		// discov builder shares one etcd client per set of hosts.
		return opts, nil
	}
	return nil, fmt.Errorf("unknown system %q", sys)
}

// runChild runs one system with cfg.conns ClientConns against the parent's
// etcd and reports on fd 3. It exits when its stdin closes.
func runChild(cfg config) error {
	out := os.NewFile(resultFD, "results")
	if out == nil {
		return fmt.Errorf("fd %d is not open: -system is for the parent process only", resultFD)
	}
	enc := json.NewEncoder(out)
	send := func(m message) error {
		if err := enc.Encode(m); err != nil {
			return fmt.Errorf("report to parent: %w", err)
		}
		return nil
	}
	goAhead := make(chan struct{}, 1)
	parentGone := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			select {
			case goAhead <- struct{}{}:
			default:
			}
		}
		close(parentGone)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	go func() {
		select {
		case <-parentGone:
			cancel()
		case <-ctx.Done():
		}
	}()

	done, err := measure(ctx, cfg, send, goAhead)
	if err != nil {
		send(message{Type: "error", Error: err.Error()})
		return err
	}
	if err := send(done); err != nil {
		return err
	}
	<-parentGone
	// Leave without closing anything: closing 1,000 ClientConns would only
	// add noise.
	os.Exit(0)
	return nil
}

func measure(ctx context.Context, cfg config, send func(message) error, goAhead <-chan struct{}) (message, error) {
	quiet()
	u, err := url.Parse(cfg.etcd)
	if err != nil || u.Host == "" {
		return message{}, fmt.Errorf("-etcd %q: want a URL like http://127.0.0.1:2379", cfg.etcd)
	}
	sys := format(cfg.system, u.Host)

	// The writer's client exists in every system alike, before the
	// baseline, so it is not counted in the growth.
	writer, err := newClient(cfg.etcd)
	if err != nil {
		return message{}, err
	}
	put := func(id int) (time.Duration, error) {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		t := time.Now()
		if _, err := writer.Put(wctx, sys.key(id), sys.value(addr(id))); err != nil {
			return 0, fmt.Errorf("put %s: %w", sys.key(id), err)
		}
		return time.Since(t), nil
	}
	del := func(id int) error {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := writer.Delete(wctx, sys.key(id)); err != nil {
			return fmt.Errorf("delete %s: %w", sys.key(id), err)
		}
		return nil
	}
	{
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := writer.Get(gctx, sys.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		cancel()
		if err != nil {
			return message{}, fmt.Errorf("count keys under %q: %w", sys.prefix, err)
		}
		if resp.Count != 0 {
			return message{}, fmt.Errorf("etcd holds %d keys under %q already", resp.Count, sys.prefix)
		}
	}
	var live []int // ids registered, oldest first
	var initial []string
	for id := range initialEndpoints {
		if _, err := put(id); err != nil {
			return message{}, err
		}
		live = append(live, id)
		initial = append(initial, addr(id))
	}
	if cfg.system == sysGoZero {
		// Registers go-zero's direct, discov, etcd and k8s builders
		// globally, as zrpc clients do. Muster's and etcd's are passed per
		// ClientConn with WithResolvers, which takes precedence.
		zrpcresolver.Register()
	}

	rss0, heap0, g0, err := baseline()
	if err != nil {
		return message{}, err
	}

	// From here on, everything allocated is the system's: its etcd client,
	// its resolvers, the ClientConns.
	start := time.Now()
	opts, err := setup(cfg.system, cfg.etcd)
	if err != nil {
		return message{}, err
	}
	ready := track.arm(cfg.conns, hasAll(initial))
	conns := make([]*grpc.ClientConn, 0, cfg.conns)
	for i := range cfg.conns {
		cc, err := grpc.NewClient(sys.target, opts...)
		if err != nil {
			return message{}, fmt.Errorf("ClientConn %d: grpc.NewClient(%q): %w", i, sys.target, err)
		}
		cc.Connect() // leave idle mode: build the resolver and the balancer
		conns = append(conns, cc)
	}
	keep = append(keep, conns)
	if err := waitGoal(ctx, ready, cfg.wait*2, "the initial endpoints"); err != nil {
		return message{}, err
	}
	_, at, _ := ready.result()
	initWall := at.Sub(start)
	if n := track.observers(); n != cfg.conns {
		return message{}, fmt.Errorf("%d balancers for %d ClientConns", n, cfg.conns)
	}

	rss1, heap1, g1, err := baseline()
	if err != nil {
		return message{}, err
	}
	if err := send(message{
		Type: "ready", InitWall: initWall,
		HeapGrowth: heap1 - heap0, RSSGrowth: rss1 - rss0, Goroutines: g1 - g0,
	}); err != nil {
		return message{}, err
	}
	select {
	case <-goAhead:
	case <-ctx.Done():
		return message{}, fmt.Errorf("waiting for the parent's go-ahead: %w", ctx.Err())
	}

	m := message{Type: "done"}
	var stopProfile func() error
	if cfg.profile != "" {
		if stopProfile, err = startProfile(cfg); err != nil {
			return message{}, err
		}
	}
	cpu0, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}
	next := initialEndpoints
	for i := range cfg.changes {
		// Add a new endpoint: timed from just before the Put until the
		// last of the N ClientConns has it.
		id := next
		next++
		seen := track.arm(cfg.conns, has(addr(id)))
		t0 := time.Now()
		d, err := put(id)
		if err != nil {
			return message{}, err
		}
		if err := waitGoal(ctx, seen, cfg.wait, fmt.Sprintf("change %d: the addition of %s", i+1, addr(id))); err != nil {
			return message{}, err
		}
		first, at, _ := seen.result()
		m.Add = append(m.Add, at.Sub(t0))
		m.First = append(m.First, first.Sub(t0))
		m.Put = append(m.Put, d)
		live = append(live, id)
		if err := pause(ctx, cfg.gap); err != nil {
			return message{}, err
		}

		// Remove the oldest, so the set stays small.
		old := live[0]
		live = live[1:]
		gone := track.arm(cfg.conns, lacks(addr(old)))
		t0 = time.Now()
		if err := del(old); err != nil {
			return message{}, err
		}
		if err := waitGoal(ctx, gone, cfg.wait, fmt.Sprintf("change %d: the removal of %s", i+1, addr(old))); err != nil {
			return message{}, err
		}
		_, at, _ = gone.result()
		m.Del = append(m.Del, at.Sub(t0))
		if err := pause(ctx, cfg.gap); err != nil {
			return message{}, err
		}
	}
	cpu1, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}
	m.CPU = cpu1 - cpu0
	if stopProfile != nil {
		if err := stopProfile(); err != nil {
			return message{}, err
		}
	}
	return m, nil
}

// startProfile writes the allocation profile so far to
// <-profile>/<system>-<N>.allocs-base.pprof and starts a CPU profile in
// <system>-<N>.cpu.pprof; stop ends it and writes the allocation profile
// again, to <system>-<N>.allocs.pprof. The allocations of the changes alone
// are "go tool pprof -sample_index=alloc_space -diff_base X.allocs-base.pprof X.allocs.pprof".
func startProfile(cfg config) (stop func() error, err error) {
	if err := os.MkdirAll(cfg.profile, 0o755); err != nil {
		return nil, fmt.Errorf("-profile: %w", err)
	}
	base := filepath.Join(cfg.profile, fmt.Sprintf("%s-%d", cfg.system, cfg.conns))
	writeAllocs := func(name string) error {
		f, err := os.Create(name)
		if err != nil {
			return fmt.Errorf("-profile: %w", err)
		}
		defer f.Close()
		runtime.GC() // the profile is as of the last GC
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return fmt.Errorf("-profile: %w", err)
		}
		return f.Close()
	}
	if err := writeAllocs(base + ".allocs-base.pprof"); err != nil {
		return nil, err
	}
	f, err := os.Create(base + ".cpu.pprof")
	if err != nil {
		return nil, fmt.Errorf("-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-profile: %w", err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("-profile: %w", err)
		}
		return writeAllocs(base + ".allocs.pprof")
	}, nil
}

// waitGoal waits for g to be reached, at most d.
func waitGoal(ctx context.Context, g *goal, d time.Duration, what string) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-g.done:
		return nil
	case <-t.C:
		_, _, got := g.result()
		return fmt.Errorf("%s reached %d of the %d ClientConns within %v", what, got, g.need, d)
	case <-ctx.Done():
		_, _, got := g.result()
		return fmt.Errorf("%s reached %d of the %d ClientConns: %w", what, got, g.need, ctx.Err())
	}
}

func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// baseline collects garbage and returns the RSS, the live heap and the
// number of goroutines.
func baseline() (rss, heap int64, goroutines int, err error) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err = benchenv.RSSBytes()
	return rss, int64(ms.HeapAlloc), runtime.NumGoroutine(), err
}

// quiet silences the libraries' logs: gRPC's and go-zero's (etcd clients get
// a no-op zap logger in newClient; go-zero's client logs through gRPC's).
func quiet() {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	logx.Disable()
	debug.SetTraceback("all")
}

// newClient returns an etcd client configured as Muster's internal
// etcdclient package configures its own (the benchmark, another module,
// cannot import it): 5 s dial timeout, 10 s / 3 s keepalive, gRPC reconnect
// backoff of 100 ms to 1 s. Muster's and etcd's resolvers get one such
// client each; go-zero's makes its own.
func newClient(ep string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            []string{ep},
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: 2 * time.Second,
		})},
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", ep, err)
	}
	return cli, nil
}
