package main

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/mustersd/muster/bench/internal/benchenv"
	"io"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/logx"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/registry"
)

// resultFD is the file descriptor on which a child reports to its parent
// (cmd.ExtraFiles[0]); stdout and stderr stay free for whatever the
// libraries print.
const resultFD = 3

// message is one line of JSON from a child to its parent.
type message struct {
	Type  string `json:"type"` // "registered", "done" or "error"
	Error string `json:"error,omitempty"`

	// "registered": sent when the count Get sees all N keys.
	RegWall      time.Duration `json:"reg_wall,omitempty"`
	RegCPU       time.Duration `json:"reg_cpu,omitempty"`
	RSSGrowth    int64         `json:"rss_growth,omitempty"`
	HeapGrowth   int64         `json:"heap_growth,omitempty"`
	Goroutines   int           `json:"goroutines,omitempty"`
	KeysAfterReg int64         `json:"keys_after_reg,omitempty"`

	// "done": sent after the keepalive window.
	WindowWall     time.Duration `json:"window_wall,omitempty"`
	WindowCPU      time.Duration `json:"window_cpu,omitempty"`
	RSSGrowthEnd   int64         `json:"rss_growth_end,omitempty"`
	KeysAfterWatch int64         `json:"keys_after_window,omitempty"`
}

// keep holds what a system registered, so that nothing is collected while
// the keepalive window runs.
var keep []any

// runChild runs one system against the parent's etcd and reports on fd 3.
// It exits when its stdin closes (the parent is done with it, or died).
func runChild(cfg config) error {
	out := os.NewFile(resultFD, "results")
	if out == nil {
		return fmt.Errorf("fd %d is not open: -system is for the parent process only", resultFD)
	}
	enc := json.NewEncoder(out)
	parentGone := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(parentGone)
	}()
	send := func(m message) error {
		if err := enc.Encode(m); err != nil {
			return fmt.Errorf("report to parent: %w", err)
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	go func() {
		select {
		case <-parentGone:
			cancel()
		case <-ctx.Done():
		}
	}()

	m, err := measure(ctx, cfg, send)
	if err != nil {
		send(message{Type: "error", Error: err.Error()})
		return err
	}
	if err := send(m); err != nil {
		return err
	}
	<-parentGone
	// Leave without closing anything: the parent throws this etcd away, and
	// closing 10,000 publishers would only add noise to its logs.
	os.Exit(0)
	return nil
}

// measure registers cfg.n endpoints with cfg.system, verifies them, keeps
// them alive for cfg.window and returns the "done" message.
func measure(ctx context.Context, cfg config, send func(message) error) (message, error) {
	quiet()
	u, err := url.Parse(cfg.etcd)
	if err != nil || u.Host == "" {
		return message{}, fmt.Errorf("-etcd %q: want a URL like http://127.0.0.1:2379", cfg.etcd)
	}
	// The client that counts the keys exists in every system alike, before
	// the baseline, so it is neither timed nor counted in the growth.
	counter, err := newClient(cfg.etcd)
	if err != nil {
		return message{}, err
	}
	prefix := "services/" + service + "/"
	if cfg.system == sysGoZero {
		prefix = service + "/"
	}
	if n, err := count(ctx, counter, prefix); err != nil {
		return message{}, err
	} else if n != 0 {
		return message{}, fmt.Errorf("etcd already holds %d keys under %q: it is not fresh", n, prefix)
	}

	rss0, heap0, g0, err := baseline()
	if err != nil {
		return message{}, err
	}
	cpu0, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}

	start := time.Now()
	switch cfg.system {
	case sysMuster:
		err = runMuster(ctx, cfg, 1)
	case sysMuster64:
		err = runMuster(ctx, cfg, cfg.concurrency)
	case sysEtcdManager:
		err = runEtcdManager(ctx, cfg)
	case sysGoZero:
		err = runGoZero(ctx, cfg, u.Host)
	default:
		err = fmt.Errorf("unknown system %q", cfg.system)
	}
	if err != nil {
		return message{}, err
	}
	n, err := waitCount(ctx, counter, prefix, cfg.n)
	if err != nil {
		return message{}, err
	}
	wall := time.Since(start)
	cpu1, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}

	rss1, heap1, g1, err := baseline()
	if err != nil {
		return message{}, err
	}
	cpuA, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}
	if err := send(message{
		Type: "registered", RegWall: wall, RegCPU: cpu1 - cpu0,
		RSSGrowth: rss1 - rss0, HeapGrowth: heap1 - heap0, Goroutines: g1 - g0,
		KeysAfterReg: n,
	}); err != nil {
		return message{}, err
	}

	winStart := time.Now()
	select {
	case <-time.After(cfg.window):
	case <-ctx.Done():
		return message{}, fmt.Errorf("keepalive window: %w", ctx.Err())
	}
	cpuB, err := benchenv.CPUTime()
	if err != nil {
		return message{}, err
	}
	winWall := time.Since(winStart)
	// The registrations must have survived the window: with a 10 s TTL, a
	// 20 s window without working keepalives loses them.
	nEnd, err := count(ctx, counter, prefix)
	if err != nil {
		return message{}, err
	}
	if nEnd != int64(cfg.n) {
		return message{}, fmt.Errorf("after the %v keepalive window etcd holds %d keys under %q, want %d: keepalives failed", cfg.window, nEnd, prefix, cfg.n)
	}
	runtime.GC()
	rss2, err := benchenv.RSSBytes()
	if err != nil {
		return message{}, err
	}
	return message{
		Type: "done", WindowWall: winWall, WindowCPU: cpuB - cpuA,
		RSSGrowthEnd: rss2 - rss0, KeysAfterWatch: nEnd,
	}, nil
}

// baseline collects garbage and returns the RSS, the heap in use and the
// number of goroutines.
func baseline() (rss, heap int64, goroutines int, err error) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err = benchenv.RSSBytes()
	return rss, int64(ms.HeapInuse), runtime.NumGoroutine(), err
}

// quiet silences the libraries' logs: gRPC's and go-zero's (etcd clients get
// a no-op zap logger in newClient; go-zero's client logs through gRPC's).
func quiet() {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	logx.Disable()
	debug.SetTraceback("all")
}

func newClient(ep string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", ep, err)
	}
	return cli, nil
}

func count(ctx context.Context, cli *clientv3.Client, prefix string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count keys under %q: %w", prefix, err)
	}
	return resp.Count, nil
}

// waitCount returns when etcd holds want keys under prefix. Every system's
// registration calls return only once etcd has the key, so the first count
// normally suffices; the loop guards against a system that writes
// asynchronously.
func waitCount(ctx context.Context, cli *clientv3.Client, prefix string, want int) (int64, error) {
	for {
		n, err := count(ctx, cli, prefix)
		if err != nil {
			return 0, err
		}
		if n == int64(want) {
			return n, nil
		}
		if n > int64(want) {
			return n, fmt.Errorf("etcd holds %d keys under %q, more than the %d registered", n, prefix, want)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return n, fmt.Errorf("waiting for %d keys under %q (have %d): %w", want, prefix, n, ctx.Err())
		}
	}
}

// parallel runs fn(i) for i in [0, n) on workers goroutines and returns the
// first error, after which the workers stop taking new work.
func parallel(ctx context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					cancel(fmt.Errorf("endpoint %d (%s): %w", i, addr(i), err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// runMuster registers the endpoints with one Registrar: one lease for all.
// With workers == 1 it is one Register call holding all N endpoints; else
// workers goroutines call Register with one endpoint each.
func runMuster(ctx context.Context, cfg config, workers int) error {
	cli, err := newClient(cfg.etcd)
	if err != nil {
		return err
	}
	r, err := registry.New(cli, registry.WithTTL(cfg.ttl))
	if err != nil {
		return err
	}
	keep = append(keep, cli, r)
	ep := func(i int) endpoint.Endpoint {
		return endpoint.Endpoint{Service: service, Addr: addr(i)}
	}
	if workers == 1 {
		eps := make([]endpoint.Endpoint, cfg.n)
		for i := range eps {
			eps[i] = ep(i)
		}
		return r.Register(ctx, eps...)
	}
	return parallel(ctx, cfg.n, workers, func(ctx context.Context, i int) error {
		return r.Register(ctx, ep(i))
	})
}

// runEtcdManager registers the endpoints as a user of etcd's naming/endpoints
// Manager does: per endpoint a lease, AddEndpoint under it, and KeepAlive
// with a goroutine draining the responses.
func runEtcdManager(ctx context.Context, cfg config) error {
	cli, err := newClient(cfg.etcd)
	if err != nil {
		return err
	}
	target := "services/" + service
	m, err := endpoints.NewManager(cli, target)
	if err != nil {
		return fmt.Errorf("endpoints.NewManager: %w", err)
	}
	keep = append(keep, cli, m)
	ttl := int64(cfg.ttl / time.Second)
	return parallel(ctx, cfg.n, cfg.concurrency, func(ctx context.Context, i int) error {
		a := addr(i)
		lease, err := cli.Grant(ctx, ttl)
		if err != nil {
			return fmt.Errorf("grant: %w", err)
		}
		if err := m.AddEndpoint(ctx, target+"/"+a, endpoints.Endpoint{Addr: a}, clientv3.WithLease(lease.ID)); err != nil {
			return fmt.Errorf("AddEndpoint: %w", err)
		}
		ch, err := cli.KeepAlive(context.Background(), lease.ID)
		if err != nil {
			return fmt.Errorf("KeepAlive: %w", err)
		}
		go func() {
			for range ch {
			}
		}()
		return nil
	})
}

// runGoZero registers the endpoints as go-zero's zrpc servers do: one
// discov.Publisher per endpoint (key bench.rpc, value host:port) and
// KeepAlive, which grants a lease, puts bench.rpc/<lease id>, keeps the
// lease alive and watches the key. go-zero shares one etcd client per set of
// hosts (discov/internal.Registry).
func runGoZero(ctx context.Context, cfg config, host string) error {
	hosts := []string{host}
	var mu sync.Mutex
	pubs := make([]*discov.Publisher, 0, cfg.n)
	err := parallel(ctx, cfg.n, cfg.concurrency, func(ctx context.Context, i int) error {
		p := discov.NewPublisher(hosts, service, addr(i))
		// KeepAlive takes no context and uses its client's without a
		// deadline; the child's -timeout bounds it.
		if err := p.KeepAlive(); err != nil {
			return fmt.Errorf("Publisher.KeepAlive: %w", err)
		}
		mu.Lock()
		pubs = append(pubs, p)
		mu.Unlock()
		return nil
	})
	keep = append(keep, pubs)
	return err
}
