// Package echo is a small gRPC service for tests, benchmarks and the demo: it
// answers grpc.testing.TestService/UnaryCall with its own name, so a caller
// can see which backend served it, and can be made slow or failing.
package echo

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// Service implements grpc.testing.TestService's UnaryCall.
type Service struct {
	testpb.UnimplementedTestServiceServer
	name  string
	hits  atomic.Int64
	delay atomic.Int64 // nanoseconds
	fail  atomic.Int64 // fail one call in fail (0: never)
	n     atomic.Int64
}

// New returns a Service that answers with name.
func New(name string) *Service { return &Service{name: name} }

// Name returns the service's name.
func (s *Service) Name() string { return s.name }

// Hits returns the number of calls served.
func (s *Service) Hits() int64 { return s.hits.Load() }

// SetDelay makes every call take at least d.
func (s *Service) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// SetFailEvery makes one call in n fail with Unavailable; 0 turns it off.
func (s *Service) SetFailEvery(n int) { s.fail.Store(int64(n)) }

// Register registers s on gs (a *grpc.Server or a *muster.Server).
func (s *Service) Register(gs grpc.ServiceRegistrar) { testpb.RegisterTestServiceServer(gs, s) }

// UnaryCall answers with the service's name in Hostname.
func (s *Service) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.hits.Add(1)
	if d := time.Duration(s.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f := s.fail.Load(); f > 0 && s.n.Add(1)%f == 0 {
		return nil, status.Error(codes.Unavailable, s.name+": injected failure")
	}
	return &testpb.SimpleResponse{Hostname: s.name}, nil
}

// Call makes one UnaryCall on cc and returns the name of the backend that
// answered.
func Call(ctx context.Context, cc grpc.ClientConnInterface, opts ...grpc.CallOption) (string, error) {
	resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}, opts...)
	if err != nil {
		return "", err
	}
	return resp.GetHostname(), nil
}

// Server is a running gRPC server with a Service and the standard health
// service on a loopback port.
type Server struct {
	*Service
	GRPC   *grpc.Server
	Health *health.Server
	Addr   string
	lis    net.Listener
	done   chan error
	once   sync.Once
}

// Start serves a new Service called name on 127.0.0.1 at a port the OS
// chooses (or at addr if not empty).
func Start(name, addr string, opts ...grpc.ServerOption) (*Server, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Server{Service: New(name), GRPC: grpc.NewServer(opts...), Health: health.NewServer(), Addr: lis.Addr().String(), lis: lis, done: make(chan error, 1)}
	s.Service.Register(s.GRPC)
	healthpb.RegisterHealthServer(s.GRPC, s.Health)
	go func() { s.done <- s.GRPC.Serve(lis) }()
	return s, nil
}

// Stop stops the server at once and waits for Serve to return. It is
// idempotent.
func (s *Server) Stop() {
	s.once.Do(func() {
		s.GRPC.Stop()
		<-s.done
	})
}
