package chaosharness

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/internal/echo"
)

// Backend is a running echo backend registered in etcd by a BackendMaker.
type Backend interface {
	// Addr is the address it serves at and registered.
	Addr() string
	// Shutdown leaves etcd and stops serving, the way the system's servers
	// do when they stop.
	Shutdown(ctx context.Context) error
}

// BackendConfig says what a BackendMaker starts.
type BackendConfig struct {
	Name    string        // the echo service answers with it
	Service string        // the service name to register
	Hosts   []string      // the etcd endpoints: fault proxies
	TTL     time.Duration // the lease TTL
	Log     *slog.Logger  // the backend's own logs
}

// BackendMaker starts backends that register in etcd: through
// muster.NewServer (MusterBackends), or through a peer's registration
// (etcd's endpoints Manager, go-zero's Publisher).
type BackendMaker struct {
	// Name names the kind of backend in reports ("muster"); a child process
	// backend finds its maker by it (HelperMain).
	Name string
	// Prefix is the etcd key prefix the backends register under, and Addr
	// returns the address a key and value under it register ("" to skip
	// the key).
	Prefix string
	Addr   func(key, value []byte) string
	// OwnProxies gives every backend a proxy group of its own, for systems
	// that share one etcd client between all the registrations of a
	// process that use the same etcd endpoints (go-zero): so each backend
	// has its own etcd connections, as a backend in a process of its own
	// does.
	OwnProxies bool
	// Start starts a backend serving echo.New(cfg.Name) on 127.0.0.1 and
	// returns once it is registered (or ctx ends).
	Start func(ctx context.Context, cfg BackendConfig) (Backend, error)
}

// MusterBackends register with muster.NewServer, as an application would:
// the key services/<service>/<addr>, a lease renewed by Muster's registrar,
// and Shutdown's NOT_SERVING, revoke, drain delay and GracefulStop.
var MusterBackends = BackendMaker{
	Name:   "muster",
	Prefix: "services/" + service + "/",
	Addr:   AddrFromKey("services/" + service + "/"),
	Start: func(ctx context.Context, cfg BackendConfig) (Backend, error) {
		srv, err := muster.NewServer(muster.Config{
			Name:     cfg.Service,
			ListenOn: "127.0.0.1:0",
			Etcd:     muster.EtcdConfig{Hosts: cfg.Hosts, TTL: cfg.TTL},
		}, muster.WithoutSignals(), muster.WithLogger(cfg.Log))
		if err != nil {
			return nil, err
		}
		echo.New(cfg.Name).Register(srv)
		if err := srv.Start(ctx); err != nil {
			return nil, err
		}
		return musterBackend{srv}, nil
	},
}

type musterBackend struct{ srv *muster.Server }

func (b musterBackend) Addr() string                       { return b.srv.Endpoint().Addr }
func (b musterBackend) Shutdown(ctx context.Context) error { return b.srv.Shutdown(ctx) }

// AddrFromKey returns an Addr function for keys <prefix><addr>, the layout
// of Muster and of etcd's naming.
func AddrFromKey(prefix string) func(key, value []byte) string {
	return func(key, _ []byte) string { return strings.TrimPrefix(string(key), prefix) }
}

// Service is the service name the scenarios register and resolve.
const Service = service

// system names the run's kind of backends and clients: one name if they
// are the same.
func (p Params) system() string {
	if s := p.servers().Name; s != p.Maker.Name {
		return s + " / " + p.Maker.Name
	}
	return p.Maker.Name
}

// EnvParams returns the suite's parameters: 3 backends, 3 clients of 2
// workers, with MUSTER_CHAOS_TTL (default 10s), MUSTER_CHAOS_BOUND
// (default 2s) and MUSTER_CHAOS_FAULT (default 30s).
func EnvParams(t testing.TB) Params {
	t.Helper()
	return Params{
		TTL:      EnvDuration(t, "MUSTER_CHAOS_TTL", 10*time.Second),
		Bound:    EnvDuration(t, "MUSTER_CHAOS_BOUND", 2*time.Second),
		Fault:    EnvDuration(t, "MUSTER_CHAOS_FAULT", 30*time.Second),
		Backends: 3,
		Clients:  3,
		Workers:  2,
		Maker:    MusterClients,
		Servers:  MusterBackends,
	}
}

// EnvDuration reads a duration from the environment, or returns def.
func EnvDuration(t testing.TB, name string, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}
