// Command resolve is the resolution benchmark: it runs N gRPC ClientConns of
// one service in one process with three resolvers in turn — Muster's
// (muster:///bench.rpc), etcd's own naming resolver (etcd:///services/bench.rpc)
// and go-zero's discov resolver (discov://127.0.0.1:PORT/bench.rpc) — and
// reports for each how long an endpoint added in etcd takes to reach all N
// ClientConns, the memory the N ClientConns take, and the watchers they cost
// etcd.
//
// The parent process runs one embedded etcd (fsync on, production timings,
// 127.0.0.1 only) and starts one child process of this same binary per
// system and N (-system=NAME -conns=N), so that the memory measured belongs
// to that system and N alone. A child reports on file descriptor 3 and waits
// on its stdin for the parent's go-ahead, so that the parent can read etcd's
// watcher gauge while the child holds its N ClientConns.
//
// Usage:
//
//	cd bench && go run ./cmd/resolve [-n 1,100,1000] [-changes 50] [-systems muster,etcd,go-zero] [-timeout 10m]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The systems, in the order they run.
const (
	sysMuster = "muster"  // muster:///bench.rpc through resolver.NewBuilder(cli)
	sysEtcd   = "etcd"    // etcd:///services/bench.rpc through client/v3/naming/resolver.NewBuilder(cli)
	sysGoZero = "go-zero" // discov://127.0.0.1:PORT/bench.rpc through go-zero's zrpc/resolver
)

var allSystems = []string{sysMuster, sysEtcd, sysGoZero}

// service is the service every ClientConn resolves.
const service = "bench.rpc"

// initialEndpoints are registered before the ClientConns are created; the
// changes then add one endpoint and remove the oldest, so the set stays at
// initialEndpoints or one more. go-zero's resolver hands gRPC a random
// subset of 32 endpoints: a set that stayed small is seen whole by every
// system.
const initialEndpoints = 2

type config struct {
	ns      []int
	changes int
	gap     time.Duration
	wait    time.Duration
	timeout time.Duration
	systems []string
	dir     string
	profile string

	// Set in a child process only.
	system string
	etcd   string
	conns  int
}

func main() {
	var (
		cfg     config
		ns      string
		systems string
	)
	flag.StringVar(&ns, "n", "1,100,1000", "comma-separated numbers of ClientConns per run")
	flag.IntVar(&cfg.changes, "changes", 50, "endpoint additions (each followed by a removal) measured per system and N")
	flag.DurationVar(&cfg.gap, "gap", 20*time.Millisecond, "pause after every change has reached all ClientConns, before the next")
	flag.DurationVar(&cfg.wait, "change-timeout", 30*time.Second, "how long one change may take to reach all ClientConns before the run fails")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "bound on the whole run; children are killed when it passes")
	flag.StringVar(&systems, "systems", strings.Join(allSystems, ","), "comma-separated systems to run, in order: "+strings.Join(allSystems, ", "))
	flag.StringVar(&cfg.dir, "dir", os.TempDir(), "directory under which the embedded etcd gets a fresh data dir")
	flag.StringVar(&cfg.profile, "profile", "", "directory where each child writes profiles of its changes: <system>-<N>.cpu.pprof, and <system>-<N>.allocs.pprof with base <system>-<N>.allocs-base.pprof (go tool pprof -diff_base)")
	flag.StringVar(&cfg.system, "system", "", "internal: run one system as a child process against -etcd")
	flag.StringVar(&cfg.etcd, "etcd", "", "internal: client URL of the parent's etcd")
	flag.IntVar(&cfg.conns, "conns", 0, "internal: ClientConns of the child process")
	flag.Parse()

	// go-zero's core/proc (imported by discov) catches SIGINT and SIGTERM in
	// its init to run a graceful shutdown and re-raise the signal 5.5 s
	// later. This program handles its own signals: the parent stops its
	// children and etcd, and children are killed by the parent.
	signal.Reset(os.Interrupt, syscall.SIGTERM)

	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %q", flag.Args())
	}
	if err := cfg.validate(ns, systems); err != nil {
		fatalf("%v", err)
	}

	if cfg.system != "" {
		if err := runChild(cfg); err != nil {
			fatalf("%s N=%d: %v", cfg.system, cfg.conns, err)
		}
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runParent(ctx, cfg); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (the whole run is bounded by -timeout %v)", err, cfg.timeout)
		}
		fatalf("%v", err)
	}
}

func (c *config) validate(ns, systems string) error {
	for s := range strings.SplitSeq(ns, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100000 {
			return fmt.Errorf("-n: %q is not a number of ClientConns in 1..100000", s)
		}
		c.ns = append(c.ns, n)
	}
	if len(c.ns) == 0 {
		return errors.New("-n: no N to run")
	}
	if c.changes < 1 {
		return fmt.Errorf("-changes %d: want at least 1", c.changes)
	}
	if c.changes > 1<<20 {
		return fmt.Errorf("-changes %d: want at most %d", c.changes, 1<<20)
	}
	if c.gap < 0 {
		return fmt.Errorf("-gap %v: want 0 or more", c.gap)
	}
	if c.wait <= 0 {
		return fmt.Errorf("-change-timeout %v: want more than 0", c.wait)
	}
	if c.timeout <= 0 {
		return fmt.Errorf("-timeout %v: want more than 0", c.timeout)
	}
	for s := range strings.SplitSeq(systems, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !slices.Contains(allSystems, s) {
			return fmt.Errorf("-systems: unknown system %q (known: %s)", s, strings.Join(allSystems, ", "))
		}
		c.systems = append(c.systems, s)
	}
	if len(c.systems) == 0 {
		return errors.New("-systems: no system to run")
	}
	if c.system != "" {
		if !slices.Contains(allSystems, c.system) {
			return fmt.Errorf("-system: unknown system %q", c.system)
		}
		if c.etcd == "" {
			return errors.New("-system needs -etcd")
		}
		if c.conns < 1 {
			return errors.New("-system needs -conns of at least 1")
		}
	}
	return nil
}

// addr returns the address of endpoint i: distinct for every i below 2^24-1,
// inside 127.0.0.0/8. The addresses are only written to etcd and handed to
// the ClientConns' balancer, which never dials them.
func addr(i int) string {
	j := i + 1
	return fmt.Sprintf("127.%d.%d.%d:%d", j>>16&0xff, j>>8&0xff, j&0xff, 9000)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "resolve: "+format+"\n", args...)
	os.Exit(1)
}
