package muster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/registry"
)

// ErrServerStopped is returned by Start and SetServing once the server is
// shutting down or has shut down.
var ErrServerStopped = errors.New("muster: server stopped")

// Server is a gRPC server that registers itself in etcd once it listens,
// serves the standard grpc.health.v1 service, and leaves etcd before it
// stops (see the package documentation for the shutdown order).
//
// Register the application's services on it (it is a
// grpc.ServiceRegistrar), then call Serve; or Start and, later, Shutdown.
type Server struct {
	cfg    Config
	o      options
	grpc   *grpc.Server
	health *health.Server

	// regMu orders the decisions to register or not: Start's and
	// SetServing's. It is held across their calls to etcd; mu is not.
	regMu sync.Mutex

	mu          sync.Mutex
	state       serverState
	startCancel context.CancelFunc // while starting
	startDone   chan struct{}      // closed when a start attempt ends
	lis         net.Listener
	cli         *clientv3.Client
	ownCli      bool
	reg         *registry.Registrar
	ep          endpoint.Endpoint
	serving     bool
	serveErr    chan error    // the result of grpc.Server.Serve
	done        chan struct{} // closed when Shutdown has finished
	stopErr     error
}

type serverState int

const (
	stateNew serverState = iota
	stateStarting
	stateStarted
	stateStopping
	stateStopped
)

// NewServer makes a server for cfg, which must name the service (Name) and
// the listen address (ListenOn). It registers in the etcd of Etcd.Hosts (or
// of WithEtcdClient); without either it serves unregistered, for clients
// configured with its address (Config.Endpoints). It neither listens nor
// connects yet.
func NewServer(cfg Config, opts ...Option) (*Server, error) {
	o := buildOptions(opts)
	cfg = cfg.WithDefaults()
	if err := cfg.validateServer(); err != nil {
		return nil, fmt.Errorf("muster: server config: %w", err)
	}
	if o.getenv == nil {
		o.getenv = os.Getenv
	}
	s := &Server{
		cfg:     cfg,
		o:       o,
		grpc:    grpc.NewServer(o.serverOpts...),
		health:  health.NewServer(),
		serving: true,
		done:    make(chan struct{}),
	}
	healthpb.RegisterHealthServer(s.grpc, s.health)
	return s, nil
}

// RegisterService registers a service implementation, as
// grpc.Server.RegisterService does; generated RegisterXxxServer functions
// accept the Server. Call it before Start or Serve.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
}

// GRPC returns the underlying gRPC server, e.g. for reflection.Register.
// Stop it only through Shutdown, so that the shutdown order holds.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Health returns the server's health service. Prefer SetServing, which also
// takes the endpoint out of etcd and puts it back; per-service statuses set
// here are served as they are.
func (s *Server) Health() *health.Server { return s.health }

// Start listens, starts serving, and registers the endpoint in etcd, in that
// order, so that no client is sent to an address that does not answer yet.
// It returns once etcd holds the endpoint; if etcd does not answer within
// Etcd.DialTimeout, Start logs it and returns anyway: the server serves, and
// the registration is made as soon as etcd answers. It fails when the
// address cannot be listened on, when etcd rejects the credentials or the
// TLS settings (the error names the Config field to check), or when ctx
// ends first.
func (s *Server) Start(ctx context.Context) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	switch s.state {
	case stateStarting, stateStarted:
		s.mu.Unlock()
		return errors.New("muster: server already started")
	case stateStopping, stateStopped:
		s.mu.Unlock()
		return ErrServerStopped
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.state, s.startCancel, s.startDone = stateStarting, cancel, make(chan struct{})
	s.mu.Unlock()

	err := s.start(ctx)

	s.mu.Lock()
	defer s.mu.Unlock()
	defer close(s.startDone)
	if err != nil {
		s.abortLocked()
		s.state = stateNew
		return err
	}
	s.state = stateStarted
	return nil
}

// start does Start's work. Fields that other methods read are set under mu;
// the calls that may wait for etcd run without it.
func (s *Server) start(ctx context.Context) error {
	log := s.o.logger
	cli, ownCli := s.o.etcd, false
	if cli == nil && len(s.cfg.Etcd.Hosts) > 0 {
		ec := s.cfg.etcdConfig()
		ec.Logger, ec.Registerer = log, s.o.registerer
		c, err := etcdclient.New(ec)
		if err != nil {
			return fmt.Errorf("muster: connect to etcd: %w", err)
		}
		cli, ownCli = c, true
	}
	var reg *registry.Registrar
	if cli != nil {
		var also []registry.Also
		for _, a := range s.cfg.Etcd.Also {
			pa, err := registry.ParseAlso(a)
			if err != nil {
				if ownCli {
					_ = cli.Close()
				}
				return fmt.Errorf("muster: Etcd.Also: %w", err)
			}
			also = append(also, pa)
		}
		r, err := registry.New(cli,
			registry.WithAlso(also...),
			registry.WithTTL(s.cfg.Etcd.TTL),
			registry.WithNamespace(s.cfg.namespace()),
			registry.WithLogger(log),
			registry.WithRegisterer(s.o.registerer))
		if err != nil {
			if ownCli {
				_ = cli.Close()
			}
			return fmt.Errorf("muster: %w", err)
		}
		reg = r
	}
	s.mu.Lock()
	s.cli, s.ownCli, s.reg = cli, ownCli, reg
	s.mu.Unlock()

	lis, err := net.Listen("tcp", s.cfg.ListenOn)
	if err != nil {
		return fmt.Errorf("muster: listen on %s (ListenOn): %w", s.cfg.ListenOn, err)
	}
	host, _, _ := net.SplitHostPort(s.cfg.ListenOn)
	adv, err := advertiseAddr(s.cfg.Advertise, host, lis.Addr().(*net.TCPAddr).Port, s.o.getenv, net.InterfaceAddrs)
	if err != nil {
		_ = lis.Close()
		return fmt.Errorf("muster: advertised address: %w", err)
	}
	ep := endpoint.Endpoint{
		Service: s.cfg.Name,
		Addr:    adv,
		Zone:    s.cfg.Metadata.Zone,
		Version: s.cfg.Metadata.Version,
		Weight:  s.cfg.Metadata.Weight,
		Tags:    s.cfg.Metadata.Tags,
	}.Normalize()
	if err := ep.Validate(); err != nil {
		_ = lis.Close()
		return fmt.Errorf("muster: %w", err)
	}

	s.mu.Lock()
	s.lis, s.ep = lis, ep
	serving := s.serving
	if serving {
		s.setHealth(healthpb.HealthCheckResponse_SERVING)
	} else {
		s.setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	}
	s.serveErr = make(chan error, 1)
	go func(lis net.Listener, done chan<- error) { done <- s.grpc.Serve(lis) }(lis, s.serveErr)
	s.mu.Unlock()
	log.Info("muster: serving", "service", s.cfg.Name, "listen", lis.Addr().String(), "advertise", adv, "serving", serving)

	if reg == nil {
		log.Info("muster: no etcd configured (Etcd.Hosts): serving without registering", "service", s.cfg.Name)
		return nil
	}
	if !serving {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Etcd.DialTimeout)
	defer cancel()
	start := time.Now()
	err = reg.Register(rctx, ep)
	switch {
	case err == nil:
		log.Info("muster: registered", "service", s.cfg.Name, "addr", adv,
			"key", s.key(), "took", time.Since(start).Round(time.Millisecond))
	case ctx.Err() != nil:
		return fmt.Errorf("muster: register %s: %w", s.key(), ctx.Err())
	default:
		// A wrong password or TLS setting will not heal by waiting: fail
		// now, with an error that names the setting. An etcd that is down
		// will come back: serve, and register when it does.
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		perr := etcdclient.Ping(pctx, cli)
		pcancel()
		if errors.Is(perr, etcdclient.ErrAuth) || errors.Is(perr, etcdclient.ErrTLS) {
			return fmt.Errorf("muster: register %s: %w", s.key(), perr)
		}
		cause := reg.Status().LastError
		if perr != nil {
			cause = perr
		}
		if cause == nil {
			cause = err
		}
		log.Error("muster: not registered yet: etcd did not answer; serving anyway, the registration will be made as soon as it answers",
			"service", s.cfg.Name, "addr", adv, "etcd", s.cfg.Etcd.Hosts, "error", cause)
	}
	return nil
}

// abortLocked undoes a failed start.
func (s *Server) abortLocked() {
	if s.reg != nil {
		_ = s.reg.Close()
		s.reg = nil
	}
	if s.serveErr != nil {
		s.grpc.Stop()
		<-s.serveErr
		s.serveErr = nil
	} else if s.lis != nil {
		_ = s.lis.Close()
	}
	s.lis = nil
	if s.ownCli && s.cli != nil {
		_ = s.cli.Close()
	}
	s.cli = nil
}

func (s *Server) key() string { return s.cfg.namespace() + "/" + s.cfg.Name + "/" + s.ep.ID }

// Addr returns the address the server listens on, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lis == nil {
		return nil
	}
	return s.lis.Addr()
}

// Endpoint returns the endpoint the server registers (valid after Start).
func (s *Server) Endpoint() endpoint.Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ep.Clone()
}

// SetServing reports the server SERVING or NOT_SERVING on its health service
// and puts its endpoint into etcd or takes it out accordingly, so that
// clients stop sending to an instance that cannot take traffic (warming a
// cache, losing its database) and come back when it can. It returns when
// etcd holds the change or ctx ends; in the second case the change is still
// made in the background. Before Start it only sets the state Start begins
// with.
func (s *Server) SetServing(ctx context.Context, serving bool) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	switch s.state {
	case stateStopping, stateStopped:
		s.mu.Unlock()
		return ErrServerStopped
	}
	changed := s.serving != serving
	s.serving = serving
	started := s.state == stateStarted
	reg, ep := s.reg, s.ep
	if started {
		if serving {
			s.setHealth(healthpb.HealthCheckResponse_SERVING)
		} else {
			s.setHealth(healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
	s.mu.Unlock()
	if !started {
		return nil
	}
	if changed {
		s.o.logger.Info("muster: serving status changed", "service", s.cfg.Name, "addr", ep.Addr, "serving", serving)
	}
	if reg == nil {
		return nil
	}
	if serving {
		if err := reg.Register(ctx, ep); err != nil {
			return fmt.Errorf("muster: register %s: %w", s.key(), err)
		}
		return nil
	}
	if err := reg.Deregister(ctx, ep); err != nil {
		return fmt.Errorf("muster: deregister %s: %w", s.key(), err)
	}
	return nil
}

func (s *Server) setHealth(st healthpb.HealthCheckResponse_ServingStatus) {
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(s.cfg.Name, st)
}

// Serve starts the server (unless Start was called) and serves until ctx
// ends or, unless WithoutSignals was given, the process receives SIGTERM or
// SIGINT; then it shuts down gracefully (see Shutdown) and returns. A second
// signal during the shutdown ends the process at once. Serve returns nil
// after a graceful shutdown.
func (s *Server) Serve(ctx context.Context) error {
	// Signals are caught from the start: a SIGTERM that arrives while the
	// server registers must shut it down gracefully, not kill it.
	var sigs chan os.Signal
	if !s.o.noSignals {
		sigs = make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
		defer signal.Stop(sigs)
	}
	s.mu.Lock()
	state := s.state
	s.mu.Unlock()
	if state == stateNew {
		if err := s.Start(ctx); err != nil {
			return err
		}
	} else if state != stateStarted {
		return ErrServerStopped
	}

	var serveErr error
	select {
	case sig := <-sigs:
		s.o.logger.Info("muster: shutting down", "service", s.cfg.Name, "signal", sig.String())
	case <-ctx.Done():
		s.o.logger.Info("muster: shutting down", "service", s.cfg.Name, "reason", context.Cause(ctx).Error())
	case serveErr = <-s.serveErr:
		s.serveErr <- serveErr // for Shutdown, which waits for it
		s.o.logger.Error("muster: gRPC server failed; shutting down", "service", s.cfg.Name, "error", serveErr)
	case <-s.done:
		return s.stopErr
	}
	if sigs != nil {
		signal.Stop(sigs) // a second signal now ends the process
	}
	err := s.Shutdown(context.WithoutCancel(ctx))
	if serveErr != nil {
		return fmt.Errorf("muster: serve: %w", serveErr)
	}
	return err
}

// Shutdown takes the server out of service without failing a request, in
// this order, logging each step: report NOT_SERVING on the health service;
// revoke the lease, so that the endpoint leaves etcd; wait
// Shutdown.DrainDelay for every client to drop it; stop accepting RPCs and
// wait for those in flight (GracefulStop) for at most Shutdown.Timeout;
// close what is left (Stop). When ctx ends early the remaining waits are cut
// short. Shutdown is idempotent and safe to call concurrently; it returns an
// error only when RPCs had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.state == stateStarting {
		// Cut the start short; then shut down whatever it got to.
		cancel, done := s.startCancel, s.startDone
		s.mu.Unlock()
		cancel()
		<-done
		s.mu.Lock()
	}
	switch s.state {
	case stateStopping, stateStopped:
		s.mu.Unlock()
		select {
		case <-s.done:
			return s.stopErr
		case <-ctx.Done():
			return ctx.Err()
		}
	case stateNew:
		s.state = stateStopped
		s.mu.Unlock()
		s.grpc.Stop()
		close(s.done)
		return nil
	}
	s.state = stateStopping
	reg, cli, ownCli := s.reg, s.cli, s.ownCli
	s.mu.Unlock()

	log := s.o.logger.With("service", s.cfg.Name, "addr", s.ep.Addr)
	begin := time.Now()

	s.health.Shutdown() // NOT_SERVING now, and ignores later updates
	log.Info("muster: shutdown 1/5: health NOT_SERVING")

	t := time.Now()
	if reg == nil {
		log.Info("muster: shutdown 2/5: not registered (no etcd configured)")
	} else if err := reg.Close(); err != nil {
		log.Warn("muster: shutdown 2/5: revoking the lease failed; the endpoint leaves etcd when the lease expires",
			"ttl", s.cfg.Etcd.TTL, "error", err)
	} else {
		log.Info("muster: shutdown 2/5: lease revoked, endpoint left etcd", "took", time.Since(t).Round(time.Millisecond))
	}

	if d := s.cfg.Shutdown.DrainDelay; d > 0 {
		log.Info("muster: shutdown 3/5: waiting for clients to drop the endpoint", "drain_delay", d)
		timer := time.NewTimer(d)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			log.Warn("muster: shutdown 3/5: drain delay cut short", "error", ctx.Err())
		}
	} else {
		log.Info("muster: shutdown 3/5: no drain delay")
	}

	log.Info("muster: shutdown 4/5: finishing RPCs in flight (GracefulStop)", "timeout", s.cfg.Shutdown.Timeout)
	var stopErr error
	graceful := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(graceful)
	}()
	timer := time.NewTimer(s.cfg.Shutdown.Timeout)
	select {
	case <-graceful:
		timer.Stop()
		log.Info("muster: shutdown 5/5: stopped", "took", time.Since(begin).Round(time.Millisecond))
	case <-timer.C:
		s.grpc.Stop()
		<-graceful
		stopErr = fmt.Errorf("muster: RPCs still running after Shutdown.Timeout (%v) were cut", s.cfg.Shutdown.Timeout)
		log.Warn("muster: shutdown 5/5: stopped; RPCs still running after the timeout were cut", "timeout", s.cfg.Shutdown.Timeout)
	case <-ctx.Done():
		timer.Stop()
		s.grpc.Stop()
		<-graceful
		stopErr = fmt.Errorf("muster: shutdown cut short, RPCs in flight were cut: %w", ctx.Err())
		log.Warn("muster: shutdown 5/5: stopped; shutdown cut short, RPCs in flight were cut", "error", ctx.Err())
	}
	if s.serveErr != nil {
		<-s.serveErr // grpc.Serve has returned
	}
	if ownCli {
		_ = cli.Close()
	}

	s.mu.Lock()
	s.state = stateStopped
	s.stopErr = stopErr
	s.mu.Unlock()
	close(s.done)
	return stopErr
}
