// Package etcdclient builds etcd clients the way Muster wants them: a short
// gRPC reconnect backoff (so that registrations and watches are back within
// about a second of etcd's return, where gRPC's default backoff takes up to
// 120s), keepalives that notice a dead member, TLS and authentication.
//
// New and Ping turn etcd's and gRPC's failures (which often come out as a
// bare "context deadline exceeded") into one-line errors that name the
// endpoints, the cause and the setting to check; see Error, ErrAuth, ErrTLS
// and ErrUnreachable.
package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config says how to reach etcd.
type Config struct {
	// Endpoints are the etcd members, "host:port" or "https://host:port".
	Endpoints []string
	// Username and Password enable etcd authentication when Username is set.
	Username, Password string
	// CACert is a PEM file of the CA that signed etcd's certificate. Setting
	// it, or Cert and Key, turns TLS on.
	CACert string
	// Cert and Key are the client's PEM certificate and key, for etcd's
	// client certificate authentication.
	Cert, Key string
	// InsecureSkipVerify turns off the verification of etcd's certificate.
	InsecureSkipVerify bool
	// DialTimeout bounds the first connection. Default 5s.
	DialTimeout time.Duration
	// Logger, if set, receives the changes New's member health monitor
	// makes to the client's endpoints. Nil: they are not logged.
	Logger *slog.Logger
	// Registerer, if set, receives the member health monitor's metrics:
	// muster_etcd_endpoint_exclusions_total{endpoint} and
	// muster_etcd_endpoint_excluded{endpoint}. Nil: none.
	Registerer prometheus.Registerer
}

// ReconnectBackoff is the gRPC reconnect backoff of Muster's etcd clients:
// from 100ms up to 1s, instead of gRPC's default of up to 120s.
var ReconnectBackoff = backoff.Config{
	BaseDelay:  100 * time.Millisecond,
	Multiplier: 1.6,
	Jitter:     0.2,
	MaxDelay:   time.Second,
}

// DialOptions returns the gRPC dial options Muster adds to an etcd client's
// configuration. Users who build their own clientv3.Config should append
// them to its DialOptions.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           ReconnectBackoff,
		MinConnectTimeout: 2 * time.Second,
	})}
}

// ClientConfig turns c into a clientv3.Config.
func (c Config) ClientConfig() (clientv3.Config, error) {
	if len(c.Endpoints) == 0 {
		return clientv3.Config{}, errors.New("etcd: no endpoints")
	}
	eps := make([]string, 0, len(c.Endpoints))
	for _, e := range c.Endpoints {
		if e = strings.TrimSpace(e); e == "" {
			return clientv3.Config{}, errors.New("etcd: empty endpoint")
		}
		eps = append(eps, e)
	}
	dt := c.DialTimeout
	if dt == 0 {
		dt = 5 * time.Second
	}
	cfg := clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          dt,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Username:             c.Username,
		Password:             c.Password,
		DialOptions:          DialOptions(),
		Logger:               zap.NewNop(),
	}
	if c.Password != "" && c.Username == "" {
		return clientv3.Config{}, errors.New("etcd: password given without a user")
	}
	tc, err := c.tlsConfig()
	if err != nil {
		return clientv3.Config{}, err
	}
	cfg.TLS = tc
	return cfg, nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CACert == "" && c.Cert == "" && c.Key == "" && !c.InsecureSkipVerify {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CACert != "" {
		pem, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcd: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd: CA certificate %s: no PEM certificate in it", c.CACert)
		}
		tc.RootCAs = pool
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, errors.New("etcd: client certificate and key must be given together")
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("etcd: client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// New connects to etcd. Without a user it does not wait for a member to
// answer; use Ping to check that etcd is there. With a user (Username and
// Password), clientv3 authenticates right away, within DialTimeout, and New
// fails if that fails; its error is then an *Error as Ping returns (see
// ErrAuth, ErrTLS, ErrUnreachable), which names the cause instead of
// clientv3's bare "context deadline exceeded". Finding that cause can take
// up to DialTimeout more.
//
// With 2 or more endpoints, the client gets a member health monitor for as
// long as it is open: it checks every endpoint's gRPC health about twice a
// second on a connection of its own (with the client's TLS settings), and
// an endpoint that fails 2 checks in a row (800ms each) while another one
// answers is taken out of the client's endpoints (cli.SetEndpoints), and
// the client's connections to it are closed, so that its watches and
// lease keepalives fail over to the other members within about 2s of a
// member's partition, instead of when gRPC's keepalive gives up (13s). It
// is put back after 2 good checks in a row. If no endpoint answers, the
// client keeps them all. The monitor stops changing the endpoints if
// something else changes them (clientv3's Sync or AutoSyncInterval).
func New(c Config) (*clientv3.Client, error) {
	cfg, err := c.ClientConfig()
	if err != nil {
		return nil, err
	}
	var tracker *connTracker
	if len(cfg.Endpoints) >= 2 {
		tracker = newConnTracker()
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(tracker.dial))
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, explainNew(c, cfg, err)
	}
	info := clientInfo{tls: cfg.TLS, user: c.Username}
	if tracker != nil {
		log := c.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		met, merr := newMonitorMetrics(c.Registerer)
		if merr != nil {
			cli.Close()
			return nil, fmt.Errorf("etcd %s: health monitor: %w", strings.Join(cfg.Endpoints, ","), merr)
		}
		if info.mon, err = startMonitor(cli, tracker, log, met); err != nil {
			cli.Close()
			return nil, fmt.Errorf("etcd %s: health monitor: %w", strings.Join(cfg.Endpoints, ","), err)
		}
	}
	register(cli, info)
	return cli, nil
}

// explainNew turns clientv3.New's error into a clear one. clientv3.New only
// talks to etcd to authenticate, and then waits for a connection until
// DialTimeout, so a connection or TLS problem comes out as "context
// deadline exceeded": a client without credentials (which clientv3.New
// makes without talking to etcd) is pinged to find the real cause.
func explainNew(c Config, cfg clientv3.Config, err error) error {
	eps := cfg.Endpoints
	if e := authError(eps, c.Username, rpctypes.Error(err)); e != nil {
		return e
	}
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded && status.Code(err) != codes.Unavailable {
		return fmt.Errorf("etcd %s: %w", strings.Join(eps, ","), err)
	}
	plain := cfg
	plain.Username, plain.Password = "", ""
	cli, perr := clientv3.New(plain)
	if perr != nil {
		return fmt.Errorf("etcd %s: %w", strings.Join(eps, ","), err)
	}
	defer cli.Close()
	register(cli, clientInfo{tls: cfg.TLS, user: c.Username})
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	var e *Error
	if perr = Ping(ctx, cli); errors.As(perr, &e) && (e.Kind == ErrTLS || e.Kind == ErrUnreachable) {
		return perr
	}
	// etcd is reachable, but authentication did not finish in time
	// (it needs a raft round trip, so a quorum of members).
	return newError(forAll(eps, ErrUnreachable, err,
		fmt.Sprintf("etcd at %s did not authenticate user %q within %v: %s (is a majority of the etcd members up?)",
			epsMark, c.Username, cfg.DialTimeout, causeText(err))))
}
