package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/resolver"
)

// fleet is the four echo backends; the last is the one that misbehaves.
type fleet struct {
	servers []*echo.Server
	index   map[string]int // by address
}

func startFleet() (*fleet, error) {
	f := &fleet{index: map[string]int{}}
	for i := range backends {
		s, err := echo.Start(fmt.Sprintf("b%d", i), "")
		if err != nil {
			f.stop()
			return nil, err
		}
		f.servers = append(f.servers, s)
		f.index[s.Addr] = i
	}
	return f, nil
}

func (f *fleet) stop() {
	for _, s := range f.servers {
		s.Stop()
	}
}

// bad is the index of the backend that misbehaves.
func (f *fleet) bad() int { return len(f.servers) - 1 }

func (f *fleet) endpoints() []endpoint.Endpoint {
	eps := make([]endpoint.Endpoint, len(f.servers))
	for i, s := range f.servers {
		eps[i] = endpoint.Endpoint{Service: "bench", Addr: s.Addr}
	}
	return eps
}

// reset makes every backend healthy: answers after fast, no failures.
func (f *fleet) reset(fast time.Duration) {
	for _, s := range f.servers {
		s.SetDelay(fast)
		s.SetFailEvery(0)
	}
}

// rpc is the outcome of one measured RPC.
type rpc struct {
	lat     time.Duration // from the send until the answer
	lag     time.Duration // from when it was due until the send
	backend int           // index of the backend that got it; -1: none
	code    codes.Code
	after   bool // sent after the midway change
}

// runResult is one policy in one scenario.
type runResult struct {
	policy, scenario string
	rpcs             []rpc
	wall             time.Duration
	err              error
	tries            int           // runs made; the last is kept unless all were disturbed
	maxLag           time.Duration // the worst lag of a send behind its schedule
}

// disturbed reports whether the host stalled the run: a send was more than
// maxLag late. The sender waits for nothing but its schedule, so a late send
// means the process did not get a CPU; RPCs in flight then were stalled too.
func (r runResult) disturbed(maxLag time.Duration) bool { return r.maxLag > maxLag }

// runPolicy dials the fleet with policy, sends cfg.warmup of load, then
// cfg.rpcs measured RPCs. midway, if not nil, is called once, just before
// RPC cfg.rpcs/2 is sent.
func runPolicy(ctx context.Context, cfg config, f *fleet, policy, scenario string, midway func()) runResult {
	res := runResult{policy: policy, scenario: scenario}
	sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, policy)
	cc, err := grpc.NewClient("muster-static:///bench",
		grpc.WithResolvers(resolver.NewStaticBuilder(f.endpoints())),
		grpc.WithDefaultServiceConfig(sc),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		res.err = err
		return res
	}
	defer cc.Close()
	if err := waitReady(ctx, cc); err != nil {
		res.err = fmt.Errorf("%s: %w", policy, err)
		return res
	}

	interval := time.Duration(float64(time.Second) / cfg.rps)
	if warm := int(cfg.warmup / interval); warm > 0 {
		send(ctx, cfg, cc, f, warm, interval, nil)
	}
	start := time.Now()
	res.rpcs = send(ctx, cfg, cc, f, cfg.rpcs, interval, midway)
	res.wall = time.Since(start)
	for _, c := range res.rpcs {
		res.maxLag = max(res.maxLag, c.lag)
	}
	if err := ctx.Err(); err != nil {
		res.err = err
	}
	return res
}

// waitReady connects cc and waits until it is READY.
func waitReady(ctx context.Context, cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			return fmt.Errorf("not READY after 10s (state %v)", s)
		}
	}
	return nil
}

// send sends n RPCs on cc, RPC i due at i*interval from now, each from its
// own goroutine, and waits for all of them.
func send(ctx context.Context, cfg config, cc *grpc.ClientConn, f *fleet, n int, interval time.Duration, midway func()) []rpc {
	out := make([]rpc, n)
	var wg sync.WaitGroup
	start := time.Now()
	after := false
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		if ctx.Err() != nil {
			out = out[:i]
			break
		}
		if midway != nil && i == n/2 {
			midway()
			after = true
		}
		wg.Add(1)
		go func(r *rpc, due time.Time, after bool) {
			defer wg.Done()
			var p peer.Peer
			t0 := time.Now()
			rctx, cancel := context.WithTimeout(ctx, cfg.rpcTimeout)
			_, err := echo.Call(rctx, cc, grpc.Peer(&p))
			cancel()
			*r = rpc{lat: time.Since(t0), lag: t0.Sub(due), backend: -1, code: status.Code(err), after: after}
			if p.Addr != nil {
				if b, ok := f.index[p.Addr.String()]; ok {
					r.backend = b
				}
			}
		}(&out[i], due, after)
	}
	wg.Wait()
	return out
}

// runScenario sets the fleet up for scenario sc and runs policy on it.
func runScenario(ctx context.Context, cfg config, f *fleet, policy, sc string) runResult {
	f.reset(cfg.fast)
	var midway func()
	switch sc {
	case scSlow:
		f.servers[f.bad()].SetDelay(cfg.slow)
	case scMidway:
		midway = func() { f.servers[f.bad()].SetDelay(cfg.slow) }
	case scFailing:
		f.servers[f.bad()].SetFailEvery(cfg.failEvery)
	}
	return runPolicy(ctx, cfg, f, policy, sc, midway)
}

// run runs every scenario with every policy and prints the tables.
func run(ctx context.Context, cfg config) error {
	f, err := startFleet()
	if err != nil {
		return fmt.Errorf("start backends: %w", err)
	}
	defer f.stop()

	printHeader(os.Stdout, cfg)
	var all []runResult
	for _, sc := range cfg.scenarios {
		for _, pol := range cfg.policies {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var best runResult
			for try := 1; try <= cfg.tries; try++ {
				fmt.Fprintf(os.Stderr, "balance: %s with %s (try %d) ...\n", sc, pol, try)
				r := runScenario(ctx, cfg, f, pol, sc)
				if r.err != nil {
					return fmt.Errorf("%s with %s: %w", sc, pol, r.err)
				}
				if try == 1 || r.maxLag < best.maxLag {
					best = r
				}
				best.tries = try
				if !r.disturbed(cfg.maxLag) {
					best = r
					best.tries = try
					break
				}
				fmt.Fprintf(os.Stderr, "balance: %s with %s: disturbed (a send %v late), again\n", sc, pol, r.maxLag.Round(time.Millisecond))
			}
			all = append(all, best)
		}
	}
	f.reset(cfg.fast)
	printTables(os.Stdout, cfg, f, all)
	return nil
}
