package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Test-only raft timings; production defaults (100ms heartbeat, 1000ms
// election timeout) are left alone.
//
// A member of a multi-member cluster uses a 50ms heartbeat and a 500ms
// (10-tick) election timeout: failover takes well under a second, while a
// loaded 2-core machine under -race does not stall heartbeats long enough to
// cause spurious elections. A lone member cannot lose leadership, so it uses
// 10ms/100ms: a fresh or restarted single member waits a random 1-10 ticks
// for its first election, which is the bulk of its start-up time.
const (
	clusterTickMs     = 50
	clusterElectionMs = 500
	singleTickMs      = 10
	singleElectionMs  = 100
)

const (
	host = "127.0.0.1"

	// readyTimeout bounds how long a start or restart may take before the
	// test fails.
	readyTimeout = 30 * time.Second
	// maxStartAttempts bounds how many times a start is retried with fresh
	// ports after a bind failure.
	maxStartAttempts = 5
	// restartBindRetry bounds how long Restart retries binding its
	// (fixed) ports while another process holds one of them.
	restartBindRetry = 5 * time.Second

	clientDialTimeout = 2 * time.Second
	pollInterval      = 10 * time.Millisecond

	// minBcryptCost is bcrypt.MinCost, the cheapest password hashing etcd
	// accepts; WithAuth uses it so that authentication takes microseconds.
	minBcryptCost = 4
)

// Option customises members started by Single or Cluster.
type Option func(*options)

type options struct {
	configFns      []func(*embed.Config)
	tls            bool
	clientCertAuth bool
	authUser       string
	authPassword   string
	auth           bool
}

// WithConfig registers fn to adjust each member's embed.Config right before
// the member is started (and again before every Restart). fn runs after the
// package has filled in its defaults (name, data dir, 127.0.0.1 URLs, fast
// timings, silenced logging), so it can override any of them, e.g. switch on
// TLS (ClientTLSInfo or ClientAutoTLS plus "https" client URL schemes) or
// auto-compaction. Changing URL hosts or ports is not supported; the
// initial cluster is derived from the advertised peer URL scheme after fn
// runs. To see etcd's logs set cfg.ZapLoggerBuilder, e.g. to
// embed.NewZapLoggerBuilder(zap.NewExample()).
func WithConfig(fn func(*embed.Config)) Option {
	return func(o *options) { o.configFns = append(o.configFns, fn) }
}

// WithTLS serves the members' client URLs over TLS ("https"), with
// certificates from NewTLSFiles generated for the group (see Member.TLS and
// Group.TLS). Endpoints then returns "https://127.0.0.1:PORT" addresses,
// and Client returns clients that trust the generated CA (and present the
// generated client certificate). Peer traffic stays plain. Client
// certificates are not required unless WithClientCertAuth is given too.
func WithTLS() Option {
	return func(o *options) { o.tls = true }
}

// WithClientCertAuth is WithTLS, and the members also require a client
// certificate signed by the generated CA (etcd's --client-cert-auth).
// Clients from Client present TLSFiles.ClientCert.
func WithClientCertAuth() Option {
	return func(o *options) { o.tls, o.clientCertAuth = true, true }
}

// WithAuth turns on etcd authentication once the members have started for
// the first time. If user is "root", the root user gets password;
// otherwise root gets a random password and user is created with password
// and granted the root role (full access). Clients from Client then
// authenticate as user; note that they do so when they are created, so the
// member (or, for a group, a quorum) must be running at that time. Auth
// state lives in the data directory, so it survives Restart. An empty user
// or password fails the start. etcd's bcrypt cost is lowered to its
// minimum to keep authentication fast.
func WithAuth(user, password string) Option {
	return func(o *options) { o.auth, o.authUser, o.authPassword = true, user, password }
}

func buildOptions(opts []Option) *options {
	o := &options{}
	for _, opt := range opts {
		opt(o)
	}
	return o
}

// Member is one embedded etcd server. It keeps its name, data directory and
// client/peer ports for its whole life, so it can be stopped and restarted.
// Its methods are safe for concurrent use.
type Member struct {
	t          testing.TB
	name       string
	dir        string
	clientPort int
	peerPort   int
	group      *Group
	opts       *options
	logs       *logRing

	opMu sync.Mutex // serialises Stop and Restart

	mu     sync.Mutex  // guards the fields below
	etcd   *embed.Etcd // nil while stopped
	cut    *rpcCutter  // ends etcd's client RPCs on Stop
	last   *embed.Etcd // most recently stopped instance
	id     types.ID    // raft member ID, stable across restarts
	tlsCfg *tls.Config // client TLS config; nil for plain http
}

// Single starts one embedded etcd member listening on 127.0.0.1 with its
// data in a t.TempDir() directory, and waits until it serves a linearizable
// Get. The member is stopped by t.Cleanup. Failures call t.Fatal with
// etcd's recent warnings and errors.
func Single(t testing.TB, opts ...Option) *Member {
	t.Helper()
	return startGroup(t, 1, buildOptions(opts)).members[0]
}

// Name returns the member's etcd name.
func (m *Member) Name() string { return m.name }

// DataDir returns the member's data directory.
func (m *Member) DataDir() string { return m.dir }

// Endpoints returns the member's client address, ready for
// clientv3.Config.Endpoints: "127.0.0.1:PORT", or "https://127.0.0.1:PORT"
// when the member serves TLS (WithTLS, or TLS switched on through
// WithConfig). It does not change across restarts.
func (m *Member) Endpoints() []string {
	return []string{m.endpoint()}
}

// endpoint is the member's client URL as Endpoints reports it.
func (m *Member) endpoint() string {
	m.mu.Lock()
	secure := m.tlsCfg != nil
	m.mu.Unlock()
	if secure {
		return "https://" + m.clientAddr()
	}
	return m.clientAddr()
}

// TLS returns the certificate files of a member started WithTLS (or
// WithClientCertAuth), shared by all members of its group; without TLS it
// returns the zero TLSFiles.
func (m *Member) TLS() TLSFiles { return m.group.TLS() }

// Auth is Group.Auth of the member's group: the user and password given to
// WithAuth and the root user's password, or empty strings without WithAuth.
func (m *Member) Auth() (user, password, rootPassword string) { return m.group.Auth() }

func (m *Member) clientAddr() string { return net.JoinHostPort(host, strconv.Itoa(m.clientPort)) }
func (m *Member) peerAddr() string   { return net.JoinHostPort(host, strconv.Itoa(m.peerPort)) }

// Running reports whether the member is started (between a successful start
// or Restart and the next Stop).
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd != nil
}

// Server returns the running embedded server for advanced tests, or nil
// while the member is stopped. The value changes on every Restart.
func (m *Member) Server() *embed.Etcd {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd
}

// Client returns a new client connected to this member only. It uses a short
// dial timeout, a no-op logger and fast reconnects, and is closed by
// t.Cleanup. It keeps working across Stop/Restart of the member (requests
// fail while it is stopped). It uses TLS and authenticates as needed for
// members started WithTLS or WithAuth.
func (m *Member) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	m.mu.Lock()
	tc := m.tlsCfg
	m.mu.Unlock()
	return newClient(t, m.Endpoints(), tc, m.group.user, m.group.password)
}

func newClient(t testing.TB, endpoints []string, tc *tls.Config, user, password string) *clientv3.Client {
	t.Helper()
	cfg := clientConfig(endpoints, tc)
	cfg.Username, cfg.Password = user, password
	c, err := clientv3.New(cfg)
	if err != nil {
		t.Fatalf("etcdtest: creating client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// clientConfig is the configuration of the clients this package creates: a
// short dial timeout, no logging, and reconnect attempts starting after
// 50ms (growing to at most 1s) instead of gRPC's default 1s-120s, so clients
// find a restarted member quickly.
func clientConfig(endpoints []string, tc *tls.Config) clientv3.Config {
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: clientDialTimeout,
		Logger:      zap.NewNop(),
		TLS:         tc,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  50 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   time.Second,
			},
			MinConnectTimeout: clientDialTimeout,
		})},
	}
}

// Stop shuts the member down: its client and peer ports stop accepting,
// open client streams (watches, lease keep-alives) are cut, and its
// goroutines end. A leader hands leadership to a running peer first, as
// etcd does on shutdown, so a new leader usually exists right after Stop
// returns. Stopping a stopped member does nothing. Stop typically takes a
// few milliseconds (about 50ms for a leader).
func (m *Member) Stop() {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.stopLocked()
}

func (m *Member) stopLocked() {
	m.mu.Lock()
	e, cut := m.etcd, m.cut
	m.etcd, m.cut = nil, nil
	if e != nil {
		m.last = e
	}
	m.mu.Unlock()
	if e == nil {
		return
	}

	if e.Server != nil && e.Server.Leader() == e.Server.MemberID() && m.group != nil {
		var stopped []types.ID
		for _, o := range m.group.members {
			if o != m && !o.Running() {
				if id := o.memberID(); id != 0 {
					stopped = append(stopped, id)
				}
			}
		}
		waitInactive(e.Server, stopped, 2*time.Second)
	}

	// While e closes, keep closing the other members' idle connections to
	// it, so that its peer server does not wait for them (see
	// peerconns.go).
	done := make(chan struct{})
	var wg sync.WaitGroup
	if m.group != nil && len(m.group.members) > 1 {
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				for _, o := range m.group.members {
					if oe := o.Server(); oe != nil && o != m {
						closePeerIdleConns(oe.Server)
					}
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		})
	}
	cut.cut() // see rpccut.go
	if e.Server != nil {
		select {
		case <-e.Server.ReadyNotify():
		default:
			// Close first waits for the client servers, which only
			// start once the server is ready (it has joined and
			// published itself, which needs a quorum). Stopping the
			// raft server first makes them give up at once.
			e.Server.HardStop()
		}
	}
	e.Close()
	close(done)
	wg.Wait()
	if e.Server != nil {
		<-e.Server.StopNotify()
		closePeerIdleConns(e.Server)
	}
}

// Restart starts the member again with the same name, data directory and
// client/peer ports and waits until it serves a linearizable Get; a running
// member is stopped first. In a cluster the member rejoins and catches up,
// which needs a quorum (counting this member) to be running; to bring back
// a cluster that lost quorum use Group.Restart. Failures call t.Fatal on
// the testing.TB the member was created with, so Restart must be called
// from that test's goroutine.
func (m *Member) Restart() {
	m.t.Helper()
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.stopLocked()
	if err := m.startRetryBind(); err != nil {
		m.t.Fatalf("etcdtest: restarting %s: %v\n%s", m.name, err, m.describe())
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := m.waitReady(ctx); err != nil {
		desc := m.describe()
		m.stopLocked()
		m.t.Fatalf("etcdtest: restarting %s: %v\n%s", m.name, err, desc)
	}
}

// startRetryBind starts the member on its fixed ports, retrying for a while
// if another process holds one of them. Callers hold opMu.
func (m *Member) startRetryBind() error {
	deadline := time.Now().Add(restartBindRetry)
	for {
		err := m.start()
		if err == nil || !isAddrInUse(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// config builds the member's embed.Config.
func (m *Member) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir

	peer := url.URL{Scheme: "http", Host: m.peerAddr()}
	client := url.URL{Scheme: "http", Host: m.clientAddr()}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenClientHttpUrls = nil
	cfg.ListenMetricsUrls = nil
	cfg.EnableGRPCGateway = false
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.InitialClusterToken = m.group.token

	if len(m.group.members) == 1 {
		cfg.TickMs, cfg.ElectionMs = singleTickMs, singleElectionMs
	} else {
		cfg.TickMs, cfg.ElectionMs = clusterTickMs, clusterElectionMs
	}
	cfg.UnsafeNoFsync = true
	cfg.AutoCompactionRetention = "0"

	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(m.logs.logger())

	if f := m.group.tlsFiles; f != nil {
		for _, us := range [][]url.URL{cfg.ListenClientUrls, cfg.AdvertiseClientUrls} {
			for i := range us {
				us[i].Scheme = "https"
			}
		}
		// etcd requires and verifies client certificates as soon as
		// TrustedCAFile is set (transport.TLSInfo.ServerConfig), so the CA
		// is only given with WithClientCertAuth.
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key}
		if m.opts.clientCertAuth {
			cfg.ClientTLSInfo.TrustedCAFile = f.CA
			cfg.ClientTLSInfo.ClientCertAuth = true
		}
	}
	if m.opts.auth {
		cfg.BcryptCost = minBcryptCost
	}

	for _, fn := range m.opts.configFns {
		fn(cfg)
	}

	scheme := "http"
	if len(cfg.AdvertisePeerUrls) > 0 {
		scheme = cfg.AdvertisePeerUrls[0].Scheme
	}
	var ic []string
	for _, o := range m.group.members {
		ic = append(ic, fmt.Sprintf("%s=%s://%s", o.name, scheme, o.peerAddr()))
	}
	cfg.InitialCluster = strings.Join(ic, ",")
	return cfg
}

// start launches the server without waiting for it. Callers hold opMu (or
// own the member exclusively).
func (m *Member) start() error {
	cfg := m.config()
	cut := newRPCCutter()
	cfg.GRPCAdditionalServerOptions = append(cfg.GRPCAdditionalServerOptions, cut.serverOptions()...)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		cut.cut()
		return err
	}
	tc, err := m.group.clientTLS(e.Config())
	if err != nil {
		cut.cut()
		e.Close()
		return err
	}
	m.mu.Lock()
	m.etcd = e
	m.cut = cut
	m.id = e.Server.MemberID()
	m.tlsCfg = tc
	m.mu.Unlock()
	return nil
}

// memberID returns the member's raft ID (0 before the first start).
func (m *Member) memberID() types.ID {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id
}

// clientTLS returns the client TLS config matching the server's client
// URLs: nil for plain http; with the group's TLSFiles (WithTLS), trusting
// its CA and presenting its client certificate; otherwise built from
// ClientTLSInfo (which ClientAutoTLS fills with a self-signed certificate;
// without a trusted CA the server certificate is not verified).
func (g *Group) clientTLS(cfg embed.Config) (*tls.Config, error) {
	if len(cfg.AdvertiseClientUrls) == 0 || cfg.AdvertiseClientUrls[0].Scheme != "https" {
		return nil, nil
	}
	info := cfg.ClientTLSInfo
	if f := g.tlsFiles; f != nil && info.CertFile == f.Cert {
		tc, err := f.clientConfig()
		if err != nil {
			return nil, fmt.Errorf("building client TLS config: %w", err)
		}
		return tc, nil
	}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("building client TLS config: %w", err)
	}
	if info.TrustedCAFile == "" {
		tc.InsecureSkipVerify = true
	}
	return tc, nil
}

// waitReady waits for the started server to report ready and to answer a
// linearizable Get through its client port.
func (m *Member) waitReady(ctx context.Context) error {
	m.mu.Lock()
	e, tc := m.etcd, m.tlsCfg
	m.mu.Unlock()
	if e == nil {
		return errors.New("not running")
	}
	select {
	case <-e.Server.ReadyNotify():
	case err, ok := <-e.Err():
		if !ok {
			return errors.New("server exited before it was ready")
		}
		return fmt.Errorf("server error before ready: %w", err)
	case <-e.Server.StopNotify():
		return errors.New("server stopped before it was ready")
	case <-ctx.Done():
		return fmt.Errorf("server not ready after %v", readyTimeout)
	}

	// With WithAuth the client authenticates when it is created, which can
	// fail while the member is still settling, so creating it is retried
	// too.
	cfg := clientConfig(m.Endpoints(), tc)
	cfg.Username, cfg.Password = m.group.user, m.group.password
	cfg.Context = ctx
	var c *clientv3.Client
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	var err error
	for {
		if c == nil {
			if c, err = clientv3.New(cfg); err != nil {
				c = nil
				err = fmt.Errorf("creating client: %w", err)
			}
		}
		if c != nil {
			gctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err = c.Get(gctx, "etcdtest/ready")
			cancel()
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server ready but Get via %s still failing after %v: %w", m.endpoint(), readyTimeout, err)
		case <-time.After(pollInterval):
		}
	}
}

// describe summarises the member for failure messages.
func (m *Member) describe() string {
	return fmt.Sprintf("--- member %s: client %s peer %s dir %s; recent etcd warnings/errors:\n%s",
		m.name, m.clientAddr(), m.peerAddr(), m.dir, m.logs.String())
}
