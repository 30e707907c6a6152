// Package benchenv holds what the benchmark programs share: an embedded
// single-node etcd with production timings, its metrics, and readings of
// the process (RSS, CPU time) and of the disk.
package benchenv

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
)

// Etcd is one fresh single-node etcd running in this process.
type Etcd struct {
	etcd *embed.Etcd
	dir  string
	URL  string
	logs *logTail
}

// StartEtcd starts a single-node etcd with a fresh data dir under parent,
// listening on loopback only. It keeps etcd's defaults (fsync on, 100 ms
// heartbeat, 1 s election, 128 ops per txn, snapshot every 10,000 entries)
// and its logs quiet: only warnings and errors are kept, to be shown if the
// start fails.
func StartEtcd(ctx context.Context, parent string) (*Etcd, error) {
	dir, err := os.MkdirTemp(parent, "muster-bench-etcd-*")
	if err != nil {
		return nil, fmt.Errorf("etcd data dir: %w", err)
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[0])}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[1])}

	logs := &logTail{}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.ListenClientHttpUrls = nil
	cfg.ListenMetricsUrls = nil
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logs.logger())
	// Deliberately left at etcd's defaults: UnsafeNoFsync (false), TickMs,
	// ElectionMs, MaxTxnOps, SnapshotCount, QuotaBackendBytes.

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start Etcd etcd: %w\n%s", err, logs)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("Etcd etcd failed: %w\n%s", err, logs)
	case <-time.After(30 * time.Second):
		e.Close()
		os.RemoveAll(dir)
		return nil, fmt.Errorf("Etcd etcd not ready after 30s\n%s", logs)
	case <-ctx.Done():
		e.Close()
		os.RemoveAll(dir)
		return nil, ctx.Err()
	}
	return &Etcd{etcd: e, dir: dir, URL: client.String(), logs: logs}, nil
}

// Stop closes etcd and removes its data dir.
func (m *Etcd) Stop() error {
	done := make(chan struct{})
	go func() {
		m.etcd.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("Etcd etcd did not stop within 30s")
	}
	if err := os.RemoveAll(m.dir); err != nil {
		return fmt.Errorf("remove etcd data dir: %w", err)
	}
	return nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Metric returns the sum of the values of the named gauge or counter in
// prometheus.DefaultGatherer, where the embedded etcd registers its metrics.
func Metric(name string) (float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, fmt.Errorf("gather metrics: %w", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			}
		}
		return sum, nil
	}
	return 0, fmt.Errorf("metric %s not registered", name)
}

// logTail keeps the last entries etcd logged at warn level or above; they
// are printed only when etcd fails.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *logTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, strings.TrimRight(string(p), "\n"))
	if len(t.lines) > 50 {
		t.lines = t.lines[len(t.lines)-50:]
	}
	return len(p), nil
}

func (t *logTail) Sync() error { return nil }

func (t *logTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(etcd logged no warnings)"
	}
	return "etcd's last warnings:\n" + strings.Join(t.lines, "\n")
}

func (t *logTail) logger() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), t, zap.WarnLevel))
}

// Client returns an etcd client of endpoint (a URL or host:port) with a 5s
// dial timeout and extra gRPC dial options, as the benchmark programs'
// processes use it.
func Client(endpoint string, dial ...grpc.DialOption) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, DialOptions: dial})
	if err != nil {
		return nil, fmt.Errorf("etcd client of %s: %w", endpoint, err)
	}
	return cli, nil
}
