// Command balance is the load-balancing benchmark: it sends the same
// open-loop load through one gRPC ClientConn per policy — gRPC's round_robin
// and least_request_experimental, go-zero's p2c_ewma, Muster's muster_p2c
// and muster_weighted — to four echo backends on 127.0.0.1, and reports the
// latency percentiles, the errors and the share of RPCs each policy sends
// to the one backend that misbehaves.
//
// Scenarios, each run for every policy in -rounds rounds (see run):
//
//   - healthy: the four backends answer after -fast (1ms). The p99 of the
//     round_robin and muster_p2c runs pooled is the baseline the other
//     scenarios' p99s are divided by.
//   - slow: one backend (b3) answers after -slow (10ms) from the start.
//   - midway: b3 is as fast as the others until half of a round's RPCs
//     have been sent, then answers after -slow; its share counts the RPCs
//     sent after the change.
//   - failing: b3 answers Unavailable to every -fail-every'th call (2: half
//     of them), at the same speed as the others.
//
// The load is open loop: RPC i is due at start + i/-rps and is sent from its
// own goroutine then, whatever earlier RPCs are doing. Each run starts with
// -warmup of the same load, not measured. The ClientConns use Muster's
// static resolver (muster-static:///bench), which gives gRPC both Endpoints
// (read by the endpointsharding policies) and Addresses (read by go-zero's
// base-balancer policy), and a default service config that selects the
// policy; no health checking, no retries.
//
// Usage:
//
//	cd bench && go run ./cmd/balance [-rps 400] [-rpcs 4000] [-scenarios healthy,slow,midway,failing] [-policies ...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/zeromicro/go-zero/core/logx"
	_ "github.com/zeromicro/go-zero/zrpc" // registers go-zero's "p2c_ewma"
	_ "google.golang.org/grpc/balancer/leastrequest"
	"google.golang.org/grpc/balancer/roundrobin"

	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/balancer/weighted"
)

// The policies, in the order they run.
const (
	polRR       = roundrobin.Name
	polLR       = "least_request_experimental"
	polGoZero   = "p2c_ewma"
	polP2C      = p2c.Name
	polWeighted = weighted.Name
)

var allPolicies = []string{polRR, polLR, polGoZero, polP2C, polWeighted}

// baselinePolicies are the healthy runs whose pooled p99 is the baseline.
var baselinePolicies = []string{polRR, polP2C}

// The scenarios, in the order they run.
const (
	scHealthy = "healthy"
	scSlow    = "slow"
	scMidway  = "midway"
	scFailing = "failing"
)

var allScenarios = []string{scHealthy, scSlow, scMidway, scFailing}

// backends is the number of echo backends; the last one misbehaves.
const backends = 4

type config struct {
	rps        float64
	rpcs       int
	warmup     time.Duration
	fast       time.Duration
	slow       time.Duration
	failEvery  int
	rpcTimeout time.Duration
	policies   []string
	scenarios  []string
	cpuprofile string
	tries      int
	rounds     int
	maxLag     time.Duration
}

func main() {
	var (
		cfg       config
		policies  string
		scenarios string
	)
	flag.Float64Var(&cfg.rps, "rps", 400, "RPCs per second, sent on a fixed schedule whatever the answers do")
	flag.IntVar(&cfg.rpcs, "rpcs", 4000, "measured RPCs per policy and scenario, over all rounds")
	flag.IntVar(&cfg.rounds, "rounds", 4, "runs of each policy per scenario, interleaved with the other policies' (see run)")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "load sent before the measured RPCs of each run, not measured")
	flag.DurationVar(&cfg.fast, "fast", time.Millisecond, "how long a healthy backend takes to answer")
	flag.DurationVar(&cfg.slow, "slow", 10*time.Millisecond, "how long the slow backend takes to answer (slow and midway)")
	flag.IntVar(&cfg.failEvery, "fail-every", 2, "the failing backend answers Unavailable to one call in this many (failing)")
	flag.DurationVar(&cfg.rpcTimeout, "rpc-timeout", 2*time.Second, "deadline of each RPC")
	flag.StringVar(&policies, "policies", strings.Join(allPolicies, ","), "comma-separated policies, in order")
	flag.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios, in order: "+strings.Join(allScenarios, ", "))
	flag.IntVar(&cfg.tries, "tries", 4, "runs of a policy and scenario at most, while the host disturbs them (see -max-lag)")
	flag.DurationVar(&cfg.maxLag, "max-lag", 10*time.Millisecond, "a run in which a send is more than this late behind its schedule was disturbed by the host, and is run again")
	flag.StringVar(&cfg.cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()

	// go-zero's core/proc (imported by zrpc) catches SIGINT and SIGTERM in
	// its init to run a graceful shutdown; this program handles its own.
	signal.Reset(os.Interrupt, syscall.SIGTERM)
	// go-zero's p2c logs its statistics once a minute.
	logx.Disable()

	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %q", flag.Args())
	}
	if err := cfg.validate(policies, scenarios); err != nil {
		fatalf("%v", err)
	}
	if cfg.cpuprofile != "" {
		f, err := os.Create(cfg.cpuprofile)
		if err != nil {
			fatalf("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf("%v", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		pprof.StopCPUProfile()
		fatalf("%v", err)
	}
}

// perRound is the measured RPCs of one run: -rpcs split over -rounds.
func (c *config) perRound() int { return c.rpcs / c.rounds }

func (c *config) validate(policies, scenarios string) error {
	if !(c.rps > 0 && c.rps <= 100000) {
		return fmt.Errorf("-rps %v: want more than 0 and at most 100000", c.rps)
	}
	if c.rpcs < 100 {
		return fmt.Errorf("-rpcs %d: want at least 100", c.rpcs)
	}
	if c.rpcs > 1<<22 {
		return fmt.Errorf("-rpcs %d: want at most %d", c.rpcs, 1<<22)
	}
	if c.warmup < 0 {
		return fmt.Errorf("-warmup %v: want 0 or more", c.warmup)
	}
	if c.fast < 0 || c.slow < 0 {
		return errors.New("-fast and -slow: want 0 or more")
	}
	if c.failEvery < 1 {
		return fmt.Errorf("-fail-every %d: want at least 1", c.failEvery)
	}
	if c.rpcTimeout <= 0 {
		return fmt.Errorf("-rpc-timeout %v: want more than 0", c.rpcTimeout)
	}
	if c.rounds < 1 || c.rpcs/c.rounds < 100 {
		return fmt.Errorf("-rounds %d: want at least 1 and at least 100 RPCs (-rpcs %d) per round", c.rounds, c.rpcs)
	}
	if c.tries < 1 {
		return fmt.Errorf("-tries %d: want at least 1", c.tries)
	}
	if c.maxLag <= 0 {
		return fmt.Errorf("-max-lag %v: want more than 0", c.maxLag)
	}
	var err error
	if c.policies, err = list("-policies", policies, allPolicies); err != nil {
		return err
	}
	if c.scenarios, err = list("-scenarios", scenarios, allScenarios); err != nil {
		return err
	}
	return nil
}

func list(flagName, s string, known []string) ([]string, error) {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if !slices.Contains(known, v) {
			return nil, fmt.Errorf("%s: unknown %q (known: %s)", flagName, v, strings.Join(known, ", "))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: empty", flagName)
	}
	return out, nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "balance: "+format+"\n", args...)
	os.Exit(1)
}
