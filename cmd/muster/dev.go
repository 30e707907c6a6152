package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/internal/etcdclient"
)

const (
	// defaultDevListen is where `muster dev` serves etcd's clients: etcd's
	// usual client port, so that every command finds it without flags.
	defaultDevListen = "127.0.0.1:2379"
	// devMemberName is the etcd member name of `muster dev`.
	devMemberName = "muster-dev"
	// devLockFile, in the data directory, is locked while a `muster dev`
	// uses the directory: etcd itself would wait forever for its database.
	devLockFile = "muster-dev.lock"
	// devLogFile, in the data directory, receives etcd's log.
	devLogFile = "etcd.log"
	// devLogRotateSize is the size above which the log is moved aside to
	// etcd.log.1 at start.
	devLogRotateSize = 16 << 20
	// devSlowStart is how long `muster dev` waits for etcd before it says
	// that it is still waiting.
	devSlowStart = 10 * time.Second
)

// devOptions are the flags of `muster dev`.
type devOptions struct {
	dataDir     string
	listen      string
	peerListen  string
	metricsAddr string
	uiAddr      string
	// hooks run beside etcd once it is ready; see devHook.
	hooks []devHook
}

// devServer is a running `muster dev`, as hooks see it.
type devServer struct {
	// etcd is the embedded etcd server.
	etcd *embed.Etcd
	// clientURL is where etcd serves its clients, e.g. http://127.0.0.1:2379.
	clientURL string
	// dataDir is etcd's data directory.
	dataDir string
	// out is where hooks print what the user should know (e.g. the URL of a
	// dashboard).
	out io.Writer
}

// devHook starts something beside the embedded etcd of `muster dev` once
// etcd is ready (a dashboard, a metrics endpoint) and returns the function
// that stops it. Hooks run in order; on Ctrl-C they are stopped in reverse
// order, before etcd. A hook that fails stops `muster dev`.
type devHook func(ctx context.Context, srv *devServer) (stop func(), err error)

func newDevCmd(a *app) *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a single-node etcd for development",
		Long: `Run an embedded single-node etcd for development, until Ctrl-C.

It uses etcd's production timings (100ms heartbeat, 1s election timeout),
fsyncs its writes, compacts history older than an hour, and keeps its data
between runs in --data-dir. By default that is dev.etcd in Muster's
directory of the user cache directory ($XDG_CACHE_HOME/muster/dev.etcd or
~/.cache/muster/dev.etcd on Linux, ~/Library/Caches/muster/dev.etcd on
macOS), so that the one development etcd of the machine, on etcd's usual
port, keeps the same data whichever directory it is started from. Delete
the directory to start afresh.

etcd's own log goes to etcd.log in the data directory; its errors also
appear on stderr.

The peer listener, which etcd needs even alone, defaults to the client
port + 1.

Muster's Prometheus metrics (the endpoints registered in the namespace, as
Muster's discovery sees them, and the Go runtime's) are served at
/metrics on --metrics-addr, by default the client port + 2
(http://127.0.0.1:2381/metrics); 'off' turns them off. etcd serves its own
metrics at /metrics on its client port.

The dashboard (see 'muster ui') is served on --ui-addr, by default
http://127.0.0.1:8700/ (another free port if that one is taken); 'off' turns
it off.`,
		Example: `  muster dev
  muster dev --listen 127.0.0.1:23790 --data-dir ./tmp/etcd`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			return a.dev(cmd.Context(), o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "etcd's data directory, kept between runs (default <user cache dir>/muster/dev.etcd)")
	f.StringVar(&o.listen, "listen", defaultDevListen, "host:port to serve etcd's clients on")
	f.StringVar(&o.peerListen, "peer-listen", "", "host:port of etcd's peer listener (default the --listen port + 1)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "host:port to serve Prometheus metrics on at /metrics, or 'off' (default the --listen port + 2)")
	f.StringVar(&o.uiAddr, "ui-addr", defaultUIAddr, "host:port to serve the dashboard on, or 'off'")
	return cmd
}

// defaultDevDataDir returns <user cache dir>/muster/dev.etcd, or
// ./muster-dev.etcd when there is no user cache directory.
func defaultDevDataDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "muster", "dev.etcd")
	}
	return "muster-dev.etcd"
}

// devAddrs are the checked addresses of `muster dev`.
type devAddrs struct {
	listen, peer          string // host:port to listen on
	advertise, advertPeer string // host:port to advertise
	metrics               string // host:port of /metrics; empty for none
}

// resolveAddrs checks --listen and --peer-listen and fills in the defaults.
func (o devOptions) resolveAddrs() (devAddrs, error) {
	host, port, err := parseListen("--listen", o.listen)
	if err != nil {
		return devAddrs{}, err
	}
	var d devAddrs
	d.listen = net.JoinHostPort(host, strconv.Itoa(port))
	d.advertise = net.JoinHostPort(advertiseHost(host), strconv.Itoa(port))
	if o.peerListen == "" {
		if port == 65535 {
			return devAddrs{}, usageErrorf("--listen port 65535 leaves no port for the peer listener; set --peer-listen")
		}
		d.peer = net.JoinHostPort(host, strconv.Itoa(port+1))
		d.advertPeer = net.JoinHostPort(advertiseHost(host), strconv.Itoa(port+1))
	} else {
		phost, pport, err := parseListen("--peer-listen", o.peerListen)
		if err != nil {
			return devAddrs{}, err
		}
		d.peer = net.JoinHostPort(phost, strconv.Itoa(pport))
		d.advertPeer = net.JoinHostPort(advertiseHost(phost), strconv.Itoa(pport))
	}
	if d.peer == d.listen {
		return devAddrs{}, usageErrorf("--peer-listen %s: the same address as --listen", d.peer)
	}
	switch o.metricsAddr {
	case metricsOff:
	case "":
		if port >= 65534 {
			return devAddrs{}, usageErrorf("--listen port %d leaves no port for the metrics listener; set --metrics-addr", port)
		}
		d.metrics = net.JoinHostPort(host, strconv.Itoa(port+2))
	default:
		mhost, mport, err := parseListen("--metrics-addr", o.metricsAddr)
		if err != nil {
			return devAddrs{}, err
		}
		d.metrics = net.JoinHostPort(mhost, strconv.Itoa(mport))
	}
	if d.metrics == d.listen || d.metrics == d.peer {
		return devAddrs{}, usageErrorf("--metrics-addr %s: the same address as --listen or --peer-listen", d.metrics)
	}
	return d, nil
}

// parseListen parses host:port (an "http://" in front is accepted) with a
// host and a port in 1..65535.
func parseListen(flag, s string) (host string, port int, err error) {
	hp := strings.TrimPrefix(s, "http://")
	host, ps, err := net.SplitHostPort(hp)
	if err == nil && host == "" {
		err = errors.New("empty host")
	}
	if err == nil {
		port, err = strconv.Atoi(ps)
		if err == nil && (port < 1 || port > 65535) {
			err = errors.New("port out of range 1..65535")
		}
	}
	if err != nil {
		return "", 0, usageErrorf("%s %q: want host:port, e.g. 127.0.0.1:2379", flag, s)
	}
	return host, port, nil
}

// advertiseHost returns the host clients should dial to reach a listener on
// host: loopback for a wildcard address.
func advertiseHost(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			return "127.0.0.1"
		}
		return "::1"
	}
	return host
}

// dev runs the embedded etcd until ctx ends.
func (a *app) dev(ctx context.Context, o devOptions) error {
	addrs, err := o.resolveAddrs()
	if err != nil {
		return err
	}
	if o.uiAddr != uiOff {
		if _, _, err := parseUIAddr("--ui-addr", o.uiAddr); err != nil {
			return err
		}
	}
	dir := o.dataDir
	if dir == "" {
		dir = defaultDevDataDir()
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	devErr := func(format string, args ...any) error {
		return &exitError{code: exitFailure, prefix: "muster dev", err: fmt.Errorf(format, args...)}
	}

	// Check the ports before the data directory, so that the usual mistake,
	// a second `muster dev`, gets the message about the port.
	for _, l := range []struct{ flag, addr string }{{"--listen", addrs.listen}, {"--peer-listen", addrs.peer}, {"--metrics-addr", addrs.metrics}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return devErr("%s", listenError(l.flag, l.addr, err))
		}
		ln.Close()
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return devErr("data directory: %v", err)
	}
	lock, err := fileutil.TryLockFile(filepath.Join(dir, devLockFile), os.O_WRONLY|os.O_CREATE, 0o600)
	if errors.Is(err, fileutil.ErrLocked) {
		return devErr("%s is in use by another muster dev; stop it, or use --data-dir to pick another directory", dir)
	}
	if err != nil {
		return devErr("locking the data directory: %v", err)
	}
	defer lock.Close()

	logPath := filepath.Join(dir, devLogFile)
	lg, stderrLevel, closeLog, err := devLogger(logPath, a.stderr, a.level <= slog.LevelDebug)
	if err != nil {
		return devErr("etcd log: %v", err)
	}
	defer closeLog()

	cfg := devConfig(dir, addrs, lg)
	start := time.Now()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "listen" {
			flag, addr := "--listen", addrs.listen
			if oe.Addr != nil && oe.Addr.String() == addrs.peer {
				flag, addr = "--peer-listen", addrs.peer
			}
			return devErr("%s", listenError(flag, addr, err))
		}
		return devErr("starting etcd: %v (see %s)", err, logPath)
	}
	closeEtcd := func() {
		// etcd logs the closing of its listeners as errors.
		stderrLevel.SetLevel(zapcore.FatalLevel)
		e.Close()
	}
	stopEtcd := func() {
		fmt.Fprintln(a.stdout, "muster dev: stopping etcd")
		closeEtcd()
		fmt.Fprintln(a.stdout, "muster dev: stopped")
	}

	if err := waitEtcdReady(ctx, e, func() {
		fmt.Fprintf(a.stderr, "muster dev: etcd is not ready after %v; still waiting (see %s)\n", devSlowStart, logPath)
	}); err != nil {
		if ctx.Err() != nil {
			stopEtcd()
			return nil
		}
		closeEtcd()
		return devErr("%v (see %s)", err, logPath)
	}
	took := time.Since(start)

	srv := &devServer{etcd: e, clientURL: "http://" + addrs.advertise, dataDir: dir, out: a.stdout}
	fmt.Fprintf(a.stdout, "muster dev: etcd ready at %s (data in %s) in %v\n", srv.clientURL, dir, took.Round(time.Millisecond))
	printDevHelp(a.stdout, addrs.advertise, logPath)

	hooks := o.hooks
	if o.uiAddr != uiOff {
		// The default address falls back to a free port: a second dev, or
		// a 'muster ui', may hold it.
		hooks = append([]devHook{a.devUI(o.uiAddr, o.uiAddr == defaultUIAddr)}, hooks...)
	}
	if addrs.metrics != "" {
		hooks = append([]devHook{a.devMetrics(addrs.metrics)}, hooks...)
	}
	stops, err := startHooks(ctx, hooks, srv)
	if err != nil {
		closeEtcd()
		return failure(err)
	}
	fmt.Fprintln(a.stdout, "Ctrl-C to stop.")

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-e.Err():
		runErr = devErr("etcd failed: %v (see %s)", err, logPath)
	case <-e.Server.StopNotify():
		runErr = devErr("etcd stopped (see %s)", logPath)
	}
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	if runErr != nil {
		closeEtcd()
		return runErr
	}
	stopEtcd()
	return nil
}

// devMetrics returns the hook that serves Muster's metrics at addr: the Go
// runtime's and the process's, and those of a discovery watch of the whole
// namespace (muster_discovery_endpoints{prefix="services/"} is the number
// of endpoints registered).
func (a *app) devMetrics(addr string) devHook {
	return func(_ context.Context, srv *devServer) (func(), error) {
		reg := newMetricsRegistry()
		cli, err := etcdclient.New(etcdclient.Config{Endpoints: []string{srv.clientURL}, DialTimeout: a.global.dialTimeout})
		if err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		sub, err := discovery.SubscribeAll(cli,
			discovery.WithNamespace(a.global.namespace),
			discovery.WithLogger(a.logger),
			discovery.WithRegisterer(reg))
		if err != nil {
			_ = cli.Close()
			return nil, fmt.Errorf("metrics: %w", err)
		}
		ms, err := serveMetrics("--metrics-addr", addr, reg)
		if err != nil {
			sub.Close()
			_ = cli.Close()
			return nil, err
		}
		fmt.Fprintf(srv.out, "  metrics: %s (etcd's own: %s/metrics)\n\n", ms.url, srv.clientURL)
		return func() {
			ms.close()
			sub.Close()
			_ = cli.Close()
		}, nil
	}
}

// waitEtcdReady waits until e is ready to serve its clients, calling slow
// once if that takes longer than devSlowStart. It returns an error if etcd
// fails or stops first, and ctx's error if ctx ends first; it does not close
// e.
func waitEtcdReady(ctx context.Context, e *embed.Etcd, slow func()) error {
	timer := time.NewTimer(devSlowStart)
	defer timer.Stop()
	for {
		select {
		case <-e.Server.ReadyNotify():
			return nil
		case <-timer.C:
			slow()
		case err := <-e.Err():
			return fmt.Errorf("etcd failed to start: %w", err)
		case <-e.Server.StopNotify():
			return errors.New("etcd stopped while starting")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startHooks runs hooks in order and returns their stop functions. If one
// fails, those started are stopped and its error is returned.
func startHooks(ctx context.Context, hooks []devHook, srv *devServer) ([]func(), error) {
	var stops []func()
	for _, h := range hooks {
		stop, err := h(ctx, srv)
		if err != nil {
			for i := len(stops) - 1; i >= 0; i-- {
				stops[i]()
			}
			return nil, err
		}
		stops = append(stops, stop)
	}
	return stops, nil
}

// listenError explains a failure to listen on addr.
func listenError(flag, addr string, err error) string {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Sprintf("%s is in use; is another etcd running? use %s to pick another address", addr, flag)
	}
	return fmt.Sprintf("cannot listen on %s (%s): %v", addr, flag, err)
}

// devConfig returns the configuration of the embedded etcd: etcd's defaults
// (production timings, fsync), one member on the given addresses, periodic
// compaction, lg as logger.
func devConfig(dir string, addrs devAddrs, lg *zap.Logger) *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = devMemberName
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: addrs.listen}}
	cfg.AdvertiseClientUrls = []url.URL{{Scheme: "http", Host: addrs.advertise}}
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: addrs.peer}}
	cfg.AdvertisePeerUrls = []url.URL{{Scheme: "http", Host: addrs.advertPeer}}
	cfg.InitialCluster = devMemberName + "=http://" + addrs.advertPeer
	cfg.InitialClusterToken = devMemberName
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.ListenMetricsUrls = nil
	// Keep an hour of history: enough for watchers to catch up, and the
	// database of a long-lived development etcd does not grow forever.
	cfg.AutoCompactionMode = embed.CompactorModePeriodic
	cfg.AutoCompactionRetention = "1h"
	cfg.Logger = "zap"
	cfg.LogLevel = "info"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	return cfg
}

// devLogger returns a logger that writes etcd's log to the file at path
// (info and above, debug with debug set) and its errors also to stderr, the
// level of stderr, to be raised when etcd stops, and the function that
// closes the file. A file larger than devLogRotateSize is first moved to
// path.1.
func devLogger(path string, stderr io.Writer, debug bool) (*zap.Logger, zap.AtomicLevel, func(), error) {
	if fi, err := os.Stat(path); err == nil && fi.Size() > devLogRotateSize {
		_ = os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, zap.AtomicLevel{}, nil, err
	}
	stderrLevel := zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	fileLevel := zapcore.InfoLevel
	if debug {
		fileLevel = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	con := zap.NewDevelopmentEncoderConfig()
	con.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	con.CallerKey, con.StacktraceKey = "", ""
	con.NameKey = ""
	core := zapcore.NewTee(
		zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(f), fileLevel),
		zapcore.NewCore(zapcore.NewConsoleEncoder(con), zapcore.AddSync(stderr), stderrLevel),
	)
	lg := zap.New(core, zap.AddCaller())
	return lg, stderrLevel, func() { _ = lg.Sync(); _ = f.Close() }, nil
}

// printDevHelp tells the user how to use the etcd at addr.
func printDevHelp(w io.Writer, addr, logPath string) {
	flag := ""
	if addr != defaultEndpoints {
		flag = " --endpoints " + addr
	}
	fmt.Fprintf(w, `
  From another terminal:
    muster register order.rpc 127.0.0.1:8080 --zone eu-1a%[1]s
    muster ls%[1]s
`, flag)
	if flag != "" {
		fmt.Fprintf(w, "  (or export MUSTER_ENDPOINTS=%s and drop --endpoints)\n", addr)
	}
	fmt.Fprintf(w, `    etcdctl --endpoints %s get --prefix services/

  etcd's log: %s

`, addr, logPath)
}
