package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/ui"
)

const (
	// demoService is the service the demo's backends register.
	demoService = "demo.echo"
	// demoRPCTimeout is the default of --timeout.
	demoRPCTimeout = 2 * time.Second
	// demoWorkers is the number of goroutines that pace the load.
	demoWorkers = 4
	// demoFirstRequestWait is how long the rolling restart waits for a
	// replacement to serve its first request before it moves on anyway.
	demoFirstRequestWait = 10 * time.Second
	// demoMaxBackends bounds --backends.
	demoMaxBackends = 20
)

// demoOptions are the flags of `muster demo`.
type demoOptions struct {
	duration    time.Duration
	backends    int
	rps         int
	timeout     time.Duration
	latency     time.Duration
	drainDelay  time.Duration
	healthCheck bool
	balancer    string
	metricsAddr string
	uiAddr      string
	static      bool
}

func newDemoCmd(a *app) *cobra.Command {
	o := demoOptions{healthCheck: true}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Show a rolling restart under load, on an embedded etcd",
		Long: `Show Muster's main job on a throwaway embedded etcd: servers register,
a client finds them and balances over them, and a rolling restart under
steady load fails no request.

The demo starts an etcd on a free port of 127.0.0.1 (data in a temporary
directory, removed at the end; a 'muster dev' on 2379 is not disturbed),
--backends echo servers of the service demo.echo (muster.NewServer), and a
client (muster.NewClient) that sends --rps requests a second between them.
Once a second it prints, per backend, the requests of the last second and
in total, the failed ones and the latency of the last second.

After a warm-up of a quarter of --duration it restarts every backend, one
at a time: the backend shuts down in Muster's order (NOT_SERVING on its
health service, lease revoked so its key leaves etcd, --drain-delay, then
GracefulStop), a replacement starts on a new port, and once the replacement
has served a request the next backend follows. The demo runs for
--duration, and longer if the restart needs it: it ends at least a quarter
of --duration after the last replacement took its first request.

The dashboard (see 'muster ui') shows the backends come and go, with live
charts of each backend's requests a second, errors and p50/p99 latency; its
URL is printed at the start (--ui-addr, by default http://127.0.0.1:8700/,
or another free port if that one is taken; not with --static).

It ends with a summary; the exit code is 0 if no request failed, 1
otherwise. Ctrl-C ends it early, with the summary. The global etcd flags
do not apply: the demo runs its own etcd.

To see what each step of the shutdown buys, turn steps off: with
--drain-delay -1 --health-check=false only gRPC's GracefulStop and the key
leaving etcd remain; --latency keeps requests in flight while a backend
stops.`,
		Example: `  muster demo
  muster demo --backends 5 --rps 1000 --duration 30s
  muster demo --drain-delay -1 --health-check=false --latency 50ms`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			logger := a.logger
			if !cmd.Flags().Changed("log-level") {
				// The components' info logs would drown the table; their
				// warnings and errors still show.
				logger = slog.New(minLevelHandler{h: a.logger.Handler(), min: slog.LevelWarn})
			}
			return a.demo(cmd.Context(), o, logger)
		}),
	}
	f := cmd.Flags()
	f.DurationVar(&o.duration, "duration", 20*time.Second, "how long to run: a quarter warm-up, the rolling restart, and at least a quarter after it")
	f.IntVar(&o.backends, "backends", 3, fmt.Sprintf("number of backends, 2..%d", demoMaxBackends))
	f.IntVar(&o.rps, "rps", 200, "requests per second, in total")
	f.DurationVar(&o.timeout, "timeout", demoRPCTimeout, "timeout of each request")
	f.DurationVar(&o.latency, "latency", 0, "how long each backend takes to answer, so that requests are in flight when it stops; less than half --timeout")
	o.drainDelay = muster.DefaultDrainDelay
	f.Var((*drainDelayValue)(&o.drainDelay), "drain-delay", "how long a stopping backend keeps serving after its key left etcd (Shutdown.DrainDelay); 0 or -1: none")
	f.BoolVar(&o.healthCheck, "health-check", true, "client-side health checking, as muster.NewClient does; false: the same balancer without it, so that only the key leaving etcd takes a stopping backend out of rotation")
	f.StringVar(&o.balancer, "balancer", muster.DefaultBalancer, "the client's load-balancing policy: muster_p2c, muster_weighted, round_robin or pick_first")
	f.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:0", "host:port to serve Prometheus metrics on at /metrics, or 'off'")
	f.StringVar(&o.uiAddr, "ui-addr", defaultUIAddr, "host:port to serve the dashboard on, or 'off'")
	f.BoolVar(&o.static, "static", false, "without etcd: the client gets the backends' addresses as a fixed list (Config.Endpoints), and each replacement comes back on its predecessor's address")
	return cmd
}

// drainDelayValue is the value of --drain-delay: a duration, or a bare 0 or
// negative number for none.
type drainDelayValue time.Duration

func (v *drainDelayValue) String() string { return time.Duration(*v).String() }
func (v *drainDelayValue) Type() string   { return "duration" }

func (v *drainDelayValue) Set(s string) error {
	if n, err := strconv.Atoi(s); err == nil && n <= 0 {
		*v = -1
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as 500ms, or -1 for none")
	}
	*v = drainDelayValue(d)
	return nil
}

// validate checks the flags.
func (o demoOptions) validate() error {
	switch {
	case o.duration < time.Second:
		return usageErrorf("--duration %v: want at least 1s", o.duration)
	case o.backends < 2 || o.backends > demoMaxBackends:
		return usageErrorf("--backends %d: want 2..%d (a backend stops before its replacement starts, so one alone would leave none)", o.backends, demoMaxBackends)
	case o.rps < 1 || o.rps > 100000:
		return usageErrorf("--rps %d: want 1..100000", o.rps)
	case o.timeout <= 0:
		return usageErrorf("--timeout %v: want more than 0", o.timeout)
	case o.latency < 0 || o.latency >= o.timeout/2:
		return usageErrorf("--latency %v: want 0 or more and less than half --timeout (%v)", o.latency, o.timeout)
	}
	if o.uiAddr != uiOff {
		if _, _, err := parseUIAddr("--ui-addr", o.uiAddr); err != nil {
			return err
		}
	}
	if err := (muster.Config{Balancer: o.balancer}).Validate(); err != nil {
		return usageErrorf("--balancer %q: want muster_p2c, muster_weighted, round_robin or pick_first", o.balancer)
	}
	if o.metricsAddr != metricsOff {
		if _, port, err := net.SplitHostPort(o.metricsAddr); err != nil {
			return usageErrorf("--metrics-addr %q: want host:port, e.g. 127.0.0.1:0, or off", o.metricsAddr)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return usageErrorf("--metrics-addr %q: port out of range 0..65535", o.metricsAddr)
		}
	}
	return nil
}

// warmup is how long the load runs before the rolling restart, and at least
// how long it runs after it.
func (o demoOptions) warmup() time.Duration { return o.duration / 4 }

// pause is the time between the restarts of two backends, so that the table
// shows each replacement taking its share.
func (o demoOptions) pause() time.Duration { return min(o.duration/20, time.Second) }

// drainConfig is the Shutdown.DrainDelay of the flag: a negative value,
// which Muster reads as none, for 0 too (Muster reads 0 as the default).
func (o demoOptions) drainConfig() time.Duration {
	if o.drainDelay <= 0 {
		return -1
	}
	return o.drainDelay
}

// describe says how clients balance and backends leave, for the summary.
func (o demoOptions) describe() string {
	drain := "no drain delay"
	if o.drainDelay > 0 {
		drain = "drain delay " + o.drainDelay.String()
	}
	hc := "health checking on"
	if !o.healthCheck {
		hc = "health checking off"
	}
	if o.static {
		hc += ", static endpoints, no etcd"
	}
	return o.balancer + ", " + drain + ", " + hc
}

// clientOptions returns the options of the demo's client beyond logger and
// metrics: without health checking, the service config of muster.NewClient
// (muster.ServiceConfig) minus its healthCheckConfig.
func (o demoOptions) clientOptions(cfg muster.Config) ([]muster.Option, error) {
	if o.healthCheck {
		return nil, nil
	}
	var sc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(muster.ServiceConfig(cfg)), &sc); err != nil {
		return nil, fmt.Errorf("service config: %w", err)
	}
	delete(sc, "healthCheckConfig")
	js, err := json.Marshal(sc)
	if err != nil {
		return nil, fmt.Errorf("service config: %w", err)
	}
	return []muster.Option{muster.WithDialOptions(grpc.WithDefaultServiceConfig(string(js)))}, nil
}

// demo runs the demo until it has run its course or ctx ends. logger
// receives the components' logs.
func (a *app) demo(ctx context.Context, o demoOptions, logger *slog.Logger) error {
	if err := o.validate(); err != nil {
		return err
	}
	demoErr := func(format string, args ...any) error {
		return &exitError{code: exitFailure, prefix: "muster demo", err: fmt.Errorf(format, args...)}
	}
	out := &demoPrinter{w: a.stdout}

	var etcdAddr string
	if !o.static {
		addr, dir, stopEtcd, err := a.startDemoEtcd(ctx)
		if err != nil {
			return demoErr("%v", err)
		}
		defer stopEtcd()
		if ctx.Err() != nil {
			return nil
		}
		etcdAddr = addr
		out.printf("demo: etcd ready at http://%s (embedded; data in %s, removed at the end)\n", etcdAddr, dir)
	} else {
		out.printf("demo: no etcd: the client is given the backends' addresses (Config.Endpoints)\n")
	}

	reg := newMetricsRegistry()
	stats := newDemoStats(reg)
	if o.metricsAddr != metricsOff {
		ms, err := serveMetrics("--metrics-addr", o.metricsAddr, reg)
		if err != nil {
			return err
		}
		defer ms.close()
		out.printf("demo: metrics at %s\n", ms.url)
	}
	if o.uiAddr != uiOff && !o.static {
		cli, err := etcdclient.New(etcdclient.Config{Endpoints: []string{etcdAddr}, DialTimeout: a.global.dialTimeout})
		if err != nil {
			return demoErr("dashboard: %v", err)
		}
		defer cli.Close()
		us, err := a.serveUI(cli, "--ui-addr", o.uiAddr, o.uiAddr == defaultUIAddr, reg, ui.WithStats(demoUIStats{stats}))
		if err != nil {
			return err
		}
		defer us.close()
		out.printf("demo: dashboard at %s\n", us.url)
	}

	d := &demoRun{
		o:       o,
		out:     out,
		stats:   stats,
		logger:  logger,
		reg:     reg,
		etcd:    etcdAddr,
		servers: map[string]*muster.Server{},
		slots:   map[int]string{},
	}
	defer d.stopServers()
	for i := range o.backends {
		if _, err := d.startBackend(ctx, i+1, 1); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return demoErr("%v", err)
		}
	}

	ccfg := muster.Config{Name: demoService, Balancer: o.balancer, Etcd: muster.EtcdConfig{Hosts: []string{etcdAddr}}}
	if o.static {
		ccfg.Etcd.Hosts = nil
		for i := range o.backends {
			ccfg.Endpoints = append(ccfg.Endpoints, d.slots[i+1])
		}
	}
	copts, err := o.clientOptions(ccfg)
	if err != nil {
		return demoErr("%v", err)
	}
	copts = append(copts, muster.WithLogger(logger), muster.WithRegisterer(reg))
	cc, err := muster.NewClient(ccfg, copts...)
	if err != nil {
		return demoErr("%v", err)
	}
	defer cc.Close()

	out.printf("demo: %d backends of %s, a client sending %d requests/s; rolling restart after %v (%s)\n\n",
		o.backends, demoService, o.rps, o.warmup(), o.describe())

	// The load, the restart and the table run until the end, which is
	// --duration after the start, or a warm-up after the restart.
	begin := time.Now()
	out.setStart(begin)
	loadCtx, stopLoad := context.WithCancel(context.Background())
	loadDone := runLoad(loadCtx, cc, o.rps, o.timeout, stats.record)
	restartCtx, stopRestart := context.WithCancel(context.Background())
	restartDone := make(chan struct{})
	go func() {
		defer close(restartDone)
		d.rollingRestart(restartCtx, begin)
	}()

	interrupted := false
	tick := time.NewTicker(time.Second)
	end := begin.Add(o.duration)
	restarted := false
	lastTable := begin
loop:
	for {
		select {
		case <-ctx.Done():
			interrupted = true
			break loop
		case <-restartDone:
			restartDone = nil
			restarted = true
			end = later(end, time.Now().Add(o.warmup()))
		case <-tick.C:
			// The time of the table is now, not the tick's: a process that
			// was starved prints late ticks late.
			now := time.Now()
			out.table(now.Sub(begin), now.Sub(lastTable), stats.rotate())
			lastTable = now
			if restarted && !now.Before(end) {
				break loop
			}
		}
	}
	tick.Stop()
	// Stop the load first and let the requests in flight finish, so that
	// none is cut by what follows.
	stopLoad()
	loadDone()
	took := time.Since(begin)
	stopRestart()
	if restartDone != nil {
		<-restartDone
	}
	// The backends and etcd stop after the summary (deferred), quietly.
	out.mute()
	sum := stats.summary()

	if sum.failed > 0 {
		out.printf("\ndemo: %s of %s requests failed:\n", thousands(sum.failed), thousands(sum.requests))
		const maxKinds = 10
		for i, f := range sum.failures {
			if i == maxKinds {
				out.printf("  ... and %d more kinds of failure\n", len(sum.failures)-maxKinds)
				break
			}
			out.printf("  %6s  %-7s %s\n", thousands(f.count), f.backend, f.err)
		}
	}
	state := ""
	if interrupted {
		state = "interrupted: "
	}
	restartedText := fmt.Sprintf("%d backends restarted one at a time", d.restartedCount())
	if n := d.restartedCount(); n < o.backends {
		restartedText = fmt.Sprintf("%d of %d backends restarted one at a time", n, o.backends)
	}
	out.printf("\ndemo: %s%s requests in %.1fs, %s failed; %s (%s); p50 %s p99 %s\n",
		state, thousands(sum.requests), took.Seconds(), thousands(sum.failed), restartedText, o.describe(),
		formatLatency(sum.p50, sum.ok > 0), formatLatency(sum.p99, sum.ok > 0))
	if sum.failed > 0 {
		return demoErr("%s of %s requests failed", thousands(sum.failed), thousands(sum.requests))
	}
	return nil
}

// later returns the later of t and u.
func later(t, u time.Time) time.Time {
	if u.After(t) {
		return u
	}
	return t
}

// startDemoEtcd starts an embedded etcd on free ports of 127.0.0.1, in a new
// temporary directory, and waits until it is ready. stop closes it and
// removes the directory. If ctx ends while etcd starts, it returns with
// etcd closed and stop doing nothing more.
func (a *app) startDemoEtcd(ctx context.Context) (addr, dir string, stop func(), err error) {
	dir, err = os.MkdirTemp("", "muster-demo-")
	if err != nil {
		return "", "", nil, fmt.Errorf("data directory: %w", err)
	}
	removeDir := func() { _ = os.RemoveAll(dir) }
	logPath := filepath.Join(dir, devLogFile)
	lg, stderrLevel, closeLog, err := devLogger(logPath, a.stderr, a.level <= slog.LevelDebug)
	if err != nil {
		removeDir()
		return "", "", nil, fmt.Errorf("etcd log: %w", err)
	}
	// etcd advertises the client address it is given: pick the port first,
	// so that its member list (shown on the dashboard) names a real one.
	const free = "127.0.0.1:0"
	client := free
	if l, err := net.Listen("tcp", free); err == nil {
		client = l.Addr().String()
		l.Close()
	}
	cfg := devConfig(dir, devAddrs{listen: client, peer: free, advertise: client, advertPeer: free}, lg)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		closeLog()
		removeDir()
		return "", "", nil, fmt.Errorf("starting etcd: %w", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stderrLevel.SetLevel(zapcore.FatalLevel) // etcd logs the closing of its listeners as errors
			e.Close()
			closeLog()
			removeDir()
		})
	}
	if err := waitEtcdReady(ctx, e, func() {
		fmt.Fprintf(a.stderr, "muster demo: etcd is not ready after %v; still waiting\n", devSlowStart)
	}); err != nil {
		stop()
		if ctx.Err() != nil {
			return "", dir, func() {}, nil
		}
		return "", "", nil, err
	}
	return e.Clients[0].Addr().String(), dir, stop, nil
}

// demoRun is a running demo: its backends and what they share.
type demoRun struct {
	o      demoOptions
	out    *demoPrinter
	stats  *demoStats
	logger *slog.Logger
	reg    prometheus.Registerer
	etcd   string

	mu        sync.Mutex
	servers   map[string]*muster.Server // running, by label
	slots     map[int]string            // the address of each slot's first backend
	restarted int
}

// backendLabel names the gen-th instance of backend slot: b1, then b1#2.
func backendLabel(slot, gen int) string {
	if gen == 1 {
		return "b" + strconv.Itoa(slot)
	}
	return fmt.Sprintf("b%d#%d", slot, gen)
}

// startBackend starts the echo server of slot and generation gen and
// returns its label once it is registered in etcd.
func (d *demoRun) startBackend(ctx context.Context, slot, gen int) (string, error) {
	label := backendLabel(slot, gen)
	cfg := muster.Config{
		Name:     demoService,
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: []string{d.etcd}},
		Shutdown: muster.ShutdownConfig{DrainDelay: d.o.drainConfig()},
	}
	if d.o.static {
		cfg.Etcd.Hosts = nil // serve unregistered
		d.mu.Lock()
		if addr, ok := d.slots[slot]; ok {
			cfg.ListenOn = addr // the client's list knows only this address
		}
		d.mu.Unlock()
	}
	// The backend's log of its shutdown steps becomes the demo's events.
	lg := slog.New(stepHandler{next: d.logger.Handler(), event: func(step string) {
		d.out.event("%-5s %s", label, step)
	}})
	srv, err := muster.NewServer(cfg, muster.WithoutSignals(), muster.WithLogger(lg), muster.WithRegisterer(d.reg))
	if err != nil {
		return "", fmt.Errorf("backend %s: %w", label, err)
	}
	svc := echo.New(label)
	svc.SetDelay(d.o.latency)
	svc.Register(srv)
	if err := srv.Start(ctx); err != nil {
		return "", fmt.Errorf("backend %s: %w", label, err)
	}
	addr := srv.Addr().String()
	d.stats.addBackend(label, addr, slot, gen)
	d.mu.Lock()
	d.servers[label] = srv
	if _, ok := d.slots[slot]; !ok {
		d.slots[slot] = addr
	}
	d.mu.Unlock()
	return label, nil
}

// rollingRestart waits for the warm-up, then restarts every backend in
// turn: it shuts the backend down, starts its replacement, and waits until
// the replacement has served a request. When ctx ends it stops, but it
// lets a shutdown in progress finish in order.
func (d *demoRun) rollingRestart(ctx context.Context, begin time.Time) {
	if !sleepCtx(ctx, time.Until(begin.Add(d.o.warmup()))) {
		return
	}
	d.out.event("rolling restart: %d backends, one at a time", d.o.backends)
	for slot := 1; slot <= d.o.backends; slot++ {
		old := backendLabel(slot, 1)
		d.mu.Lock()
		srv := d.servers[old]
		d.mu.Unlock()
		d.out.event("%-5s leaving", old)
		d.stats.setState(old, "leaving")
		err := srv.Shutdown(context.WithoutCancel(ctx))
		d.stats.setState(old, "stopped")
		d.mu.Lock()
		delete(d.servers, old)
		d.mu.Unlock()
		if err != nil {
			d.out.event("%-5s shutdown: %v", old, err)
		}
		if ctx.Err() != nil {
			return
		}

		label, err := d.startBackend(ctx, slot, 2)
		if err != nil {
			if ctx.Err() == nil {
				d.out.event("%s", err)
			}
			return
		}
		joined := time.Now()
		if d.o.static {
			d.out.event("%-5s joined at %s (its predecessor's address, in the client's list)", label, d.stats.addr(label))
		} else {
			d.out.event("%-5s joined at %s (registered in etcd)", label, d.stats.addr(label))
		}
		if d.waitServed(ctx, label) {
			d.out.event("%-5s took its first request %s after joining", label, formatLatency(time.Since(joined), true))
		} else if ctx.Err() == nil {
			d.out.event("%-5s got no request within %v; moving on", label, demoFirstRequestWait)
		}
		d.mu.Lock()
		d.restarted++
		d.mu.Unlock()
		if slot < d.o.backends && !sleepCtx(ctx, d.o.pause()) {
			return
		}
	}
	d.out.event("rolling restart done")
}

// waitServed waits until backend label has served a request, for at most
// demoFirstRequestWait.
func (d *demoRun) waitServed(ctx context.Context, label string) bool {
	deadline := time.Now().Add(demoFirstRequestWait)
	for !d.stats.served(label) {
		if time.Now().After(deadline) || !sleepCtx(ctx, 2*time.Millisecond) {
			return false
		}
	}
	return true
}

func (d *demoRun) restartedCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restarted
}

// stopServers shuts the running backends down, all at once.
func (d *demoRun) stopServers() {
	d.mu.Lock()
	servers := slices.Collect(func(yield func(*muster.Server) bool) {
		for _, s := range d.servers {
			if !yield(s) {
				return
			}
		}
	})
	clear(d.servers)
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Go(func() { _ = s.Shutdown(context.Background()) })
	}
	wg.Wait()
}

// sleepCtx sleeps for d and reports whether ctx is still alive.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// runLoad sends rps requests a second on cc, each with timeout, until ctx
// ends, open-loop: each
// of demoWorkers goroutines starts the requests that are due on every tick
// of its ticker, each in its own goroutine, whether or not the earlier ones
// have returned. record receives the outcome of each. The returned function
// waits until the load has stopped and every request has returned.
func runLoad(ctx context.Context, cc grpc.ClientConnInterface, rps int, timeout time.Duration, record func(addr, backend string, d time.Duration, err error)) (wait func()) {
	var wg sync.WaitGroup
	call := func() {
		defer wg.Done()
		rctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var p peer.Peer
		start := time.Now()
		name, err := echo.Call(rctx, cc, grpc.Peer(&p))
		d := time.Since(start)
		addr := ""
		if p.Addr != nil {
			addr = p.Addr.String()
		}
		record(addr, name, d, err)
	}
	workers := min(demoWorkers, rps)
	var pacers sync.WaitGroup
	for i := range workers {
		rate := float64(rps / workers)
		if i < rps%workers {
			rate++
		}
		interval := max(time.Duration(float64(time.Second)/rate), time.Millisecond)
		pacers.Go(func() {
			// Stagger the workers across one interval.
			if !sleepCtx(ctx, interval*time.Duration(i)/time.Duration(workers)) {
				return
			}
			start := time.Now()
			sent := 0
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				due := int(time.Since(start).Seconds()*rate) + 1 - sent
				for range due {
					sent++
					wg.Add(1)
					go call()
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	return func() {
		pacers.Wait()
		wg.Wait()
	}
}

// stepHandler turns a backend's log records of its shutdown steps
// ("muster: shutdown 2/5: lease revoked, ...") into events of the demo, and
// passes every record on to next if next takes its level.
type stepHandler struct {
	next  slog.Handler
	event func(step string)
}

func (h stepHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h stepHandler) Handle(ctx context.Context, r slog.Record) error {
	if step, ok := strings.CutPrefix(r.Message, "muster: shutdown "); ok {
		var details []string
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "took", "drain_delay", "error":
				details = append(details, strings.ReplaceAll(a.Key, "_", " ")+" "+a.Value.String())
			}
			return true
		})
		if len(details) > 0 {
			step += " (" + strings.Join(details, ", ") + ")"
		}
		h.event(step)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h stepHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return stepHandler{next: h.next.WithAttrs(attrs), event: h.event}
}

func (h stepHandler) WithGroup(name string) slog.Handler {
	return stepHandler{next: h.next.WithGroup(name), event: h.event}
}

// minLevelHandler passes to h the records of level min and above.
type minLevelHandler struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}

func (m minLevelHandler) Handle(ctx context.Context, r slog.Record) error { return m.h.Handle(ctx, r) }

func (m minLevelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevelHandler{h: m.h.WithAttrs(attrs), min: m.min}
}

func (m minLevelHandler) WithGroup(name string) slog.Handler {
	return minLevelHandler{h: m.h.WithGroup(name), min: m.min}
}

// demoPrinter writes the demo's output, one line or block at a time.
type demoPrinter struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	muted bool // events are dropped
}

func (p *demoPrinter) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

func (p *demoPrinter) setStart(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.start = t
}

// mute drops the events from now on (those of the final shutdown).
func (p *demoPrinter) mute() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.muted = true
}

// event prints one line, after the time since the start.
func (p *demoPrinter) event(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.muted {
		return
	}
	var at time.Duration
	if !p.start.IsZero() {
		at = time.Since(p.start)
	}
	fmt.Fprintf(p.w, "%6.2fs  %s\n", at.Seconds(), fmt.Sprintf(format, args...))
}

// table prints the block of the window that ended at, which lasted window
// (a second, unless the process was starved).
func (p *demoPrinter) table(at, window time.Duration, rows []demoRow) {
	secs := max(window.Seconds(), 0.001)
	var b strings.Builder
	fmt.Fprintf(&b, "%6.0fs  %-7s %-21s %-8s %6s %8s %6s %8s %8s\n", at.Round(time.Second).Seconds(),
		"backend", "address", "state", "req/s", "total", "errors", "p50", "p99")
	for _, r := range rows {
		addr, state := r.addr, r.state
		if r.label == "all" {
			addr, state = "", ""
		}
		fmt.Fprintf(&b, "         %-7s %-21s %-8s %6s %8s %6s %8s %8s\n", r.label, addr, state,
			thousands(int64(math.Round(float64(r.window)/secs))), thousands(r.total), thousands(r.errors),
			formatLatency(r.p50, r.ok > 0), formatLatency(r.p99, r.ok > 0))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	io.WriteString(p.w, b.String())
}

// formatLatency prints d with two or three significant digits; "-" when ok
// is false (no data).
func formatLatency(d time.Duration, ok bool) string {
	if !ok {
		return "-"
	}
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms < 1:
		return strconv.FormatFloat(ms, 'f', 2, 64) + "ms"
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	default:
		return strconv.FormatFloat(ms/1000, 'f', 2, 64) + "s"
	}
}

// thousands prints n with commas between groups of three digits.
func thousands[T ~int | ~int64](n T) string {
	s := strconv.FormatInt(int64(n), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// errorText is a failed request's error in one short line: its gRPC code
// and message.
func errorText(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String() + ": " + s.Message()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "DeadlineExceeded: " + err.Error()
	}
	return err.Error()
}
