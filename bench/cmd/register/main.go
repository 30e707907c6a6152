// Command register is the registration benchmark: it registers N endpoints
// in one embedded etcd with Muster's registry, with etcd's own
// naming/endpoints Manager, and with go-zero's discov Publisher, and reports
// for each the registration rate, the memory it takes to hold the
// registrations, the CPU it spends keeping them alive, and the leases and
// watchers it costs etcd.
//
// The parent process runs the embedded etcd (a fresh one per system, with
// fsync on and production timings) and starts one child process of this
// same binary per system (-system=NAME), so that the memory and CPU measured
// belong to that system alone. All traffic stays on 127.0.0.1.
//
// Usage:
//
//	cd bench && go run ./cmd/register [-n 10000] [-keepalive-window 20s] [-count 3] [-systems muster,muster-64,etcd-endpoints,go-zero] [-timeout 5m]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The systems, in the order they run.
const (
	sysMuster      = "muster"         // one Registrar, one Register call with all N endpoints
	sysMuster64    = "muster-64"      // one Registrar, Register calls of 1 endpoint from -concurrency goroutines
	sysEtcdManager = "etcd-endpoints" // etcd's naming/endpoints Manager: a lease, AddEndpoint and KeepAlive per endpoint
	sysGoZero      = "go-zero"        // go-zero's discov.Publisher per endpoint: a lease, a put, KeepAlive and a watch each
)

var allSystems = []string{sysMuster, sysMuster64, sysEtcdManager, sysGoZero}

// service is the service every endpoint belongs to.
const service = "bench.rpc"

type config struct {
	n           int
	count       int
	concurrency int
	window      time.Duration
	ttl         time.Duration
	timeout     time.Duration
	systems     []string
	dir         string

	// Set in a child process only.
	system string
	etcd   string
}

func main() {
	var (
		cfg     config
		systems string
	)
	flag.IntVar(&cfg.n, "n", 10000, "number of endpoints each system registers")
	flag.IntVar(&cfg.count, "count", 3, "registration runs per system, each on a fresh etcd; the tables show the run with the median reg/s, and the keepalive window of the last run")
	flag.IntVar(&cfg.concurrency, "concurrency", 64, "goroutines registering concurrently (muster-64, etcd-endpoints, go-zero)")
	flag.DurationVar(&cfg.window, "keepalive-window", 20*time.Second, "how long to measure the CPU spent keeping the registrations alive")
	flag.DurationVar(&cfg.ttl, "ttl", 10*time.Second, "lease TTL for Muster and etcd-endpoints (go-zero's is fixed at discov.TimeToLive, 10s)")
	flag.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "bound on the whole run; children are killed when it passes")
	flag.StringVar(&systems, "systems", strings.Join(allSystems, ","), "comma-separated systems to run, in order: "+strings.Join(allSystems, ", "))
	flag.StringVar(&cfg.dir, "dir", os.TempDir(), "directory under which each embedded etcd gets a fresh data dir (its disk is what fsync hits)")
	flag.StringVar(&cfg.system, "system", "", "internal: run one system as a child process against -etcd")
	flag.StringVar(&cfg.etcd, "etcd", "", "internal: client URL of the parent's etcd")
	flag.Parse()

	// go-zero's core/proc (imported by discov) catches SIGINT and SIGTERM in
	// its init to run a graceful shutdown and re-raise the signal 5.5 s
	// later. This program handles its own signals: the parent stops its
	// children and etcd, and children are killed by the parent.
	signal.Reset(os.Interrupt, syscall.SIGTERM)

	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %q", flag.Args())
	}
	if err := cfg.validate(systems); err != nil {
		fatalf("%v", err)
	}

	if cfg.system != "" {
		if err := runChild(cfg); err != nil {
			fatalf("%s: %v", cfg.system, err)
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

func (c *config) validate(systems string) error {
	if c.n < 1 {
		return fmt.Errorf("-n %d: want at least 1", c.n)
	}
	if c.n > 1<<24-2 {
		return fmt.Errorf("-n %d: at most %d endpoints have distinct 127.0.0.0/8 addresses", c.n, 1<<24-2)
	}
	if c.count < 1 {
		return fmt.Errorf("-count %d: want at least 1", c.count)
	}
	if c.concurrency < 1 {
		return fmt.Errorf("-concurrency %d: want at least 1", c.concurrency)
	}
	if c.window < 0 {
		return fmt.Errorf("-keepalive-window %v: want 0 or more", c.window)
	}
	if c.ttl < 2*time.Second || c.ttl%time.Second != 0 {
		return fmt.Errorf("-ttl %v: want a whole number of seconds, at least 2s", c.ttl)
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
	}
	return nil
}

// addr returns the address of endpoint i: distinct for every i below 2^24-1,
// inside 127.0.0.0/8. The addresses are only written to etcd, never dialled.
func addr(i int) string {
	j := i + 1
	return fmt.Sprintf("127.%d.%d.%d:%d", j>>16&0xff, j>>8&0xff, j&0xff, 9000)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "register: "+format+"\n", args...)
	os.Exit(1)
}
