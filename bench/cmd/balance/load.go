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
	runs             int           // runs made, over all rounds, reruns of disturbed ones included
	maxLag           time.Duration // the worst lag of a send behind its schedule, in the runs kept
}

// disturbed reports whether the host stalled the run: a send was more than
// maxLag late. The sender waits for nothing but its schedule, so a late send
// means the process did not get a CPU; RPCs in flight then were stalled too.
func (r runResult) disturbed(maxLag time.Duration) bool { return r.maxLag > maxLag }

// runPolicy dials the fleet with policy, sends cfg.warmup of load, then n
// measured RPCs. midway, if not nil, is called once, just before RPC n/2 is
// sent.
func runPolicy(ctx context.Context, cfg config, f *fleet, policy, scenario string, n int, midway func()) runResult {
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
	res.rpcs = send(ctx, cfg, cc, f, n, interval, midway)
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

// runScenario sets the fleet up for scenario sc and runs policy on it, n
// measured RPCs.
func runScenario(ctx context.Context, cfg config, f *fleet, policy, sc string, n int) runResult {
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
	return runPolicy(ctx, cfg, f, policy, sc, n, midway)
}

// run runs every scenario with every policy and prints the tables.
//
// A scenario's RPCs for each policy are split into cfg.rounds runs. Each
// round runs every policy once, one after the other, starting one policy
// further along the list than the round before; a policy's rows pool its
// rounds. Whatever the host does during a scenario (a stall, another
// process's burst) thus falls on every policy alike, rather than on the one
// that happened to run then.
func run(ctx context.Context, cfg config) error {
	f, err := startFleet()
	if err != nil {
		return fmt.Errorf("start backends: %w", err)
	}
	defer f.stop()

	printHeader(os.Stdout, cfg)
	var all []runResult
	for _, sc := range cfg.scenarios {
		pooled := make([]runResult, len(cfg.policies))
		for i, pol := range cfg.policies {
			pooled[i] = runResult{policy: pol, scenario: sc}
		}
		for round := range cfg.rounds {
			for k := range cfg.policies {
				i := (k + round) % len(cfg.policies)
				r, err := runTries(ctx, cfg, f, cfg.policies[i], sc, round)
				if err != nil {
					return err
				}
				p := &pooled[i]
				p.rpcs = append(p.rpcs, r.rpcs...)
				p.wall += r.wall
				p.runs += r.runs
				p.maxLag = max(p.maxLag, r.maxLag)
			}
		}
		all = append(all, pooled...)
	}
	f.reset(cfg.fast)
	printTables(os.Stdout, cfg, f, all)
	return nil
}

// runTries runs one round of policy in scenario sc, again while the host
// disturbs it, up to cfg.tries times; it keeps the first undisturbed run,
// or else the least disturbed one.
func runTries(ctx context.Context, cfg config, f *fleet, pol, sc string, round int) (runResult, error) {
	var best runResult
	for try := 1; try <= cfg.tries; try++ {
		if err := ctx.Err(); err != nil {
			return best, err
		}
		fmt.Fprintf(os.Stderr, "balance: %s with %s, round %d of %d (try %d) ...\n", sc, pol, round+1, cfg.rounds, try)
		r := runScenario(ctx, cfg, f, pol, sc, cfg.perRound())
		if r.err != nil {
			return best, fmt.Errorf("%s with %s: %w", sc, pol, r.err)
		}
		if !r.disturbed(cfg.maxLag) {
			r.runs = try
			return r, nil
		}
		if try == 1 || r.maxLag < best.maxLag {
			best = r
		}
		best.runs = try
		fmt.Fprintf(os.Stderr, "balance: %s with %s: disturbed (a send %v late), again\n", sc, pol, r.maxLag.Round(time.Millisecond))
	}
	return best, nil
}
