package proxy

import (
	"net"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// healthBackend serves gRPC health on a loopback port, reporting SERVING
// for the service name given (so that a Check of that name tells which
// backend answered).
func healthBackend(t *testing.T, name string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

// TestEtcdNamingResolverThroughProxy: etcd's own naming resolver (a
// serializable Get, then a Watch) pointed at the proxy resolves a service
// registered in etcd with naming/endpoints, and follows its changes, also
// after a compaction.
func TestEtcdNamingResolverThroughProxy(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	tp := startProxy(t, upstream(t, m), "")
	ctx := testx.Context(t, 30*time.Second)

	em, err := endpoints.NewManager(direct, "svc/hello")
	if err != nil {
		t.Fatal(err)
	}
	one, two := healthBackend(t, "one"), healthBackend(t, "two")
	if err := em.AddEndpoint(ctx, "svc/hello/one", endpoints.Endpoint{Addr: one}); err != nil {
		t.Fatal(err)
	}

	b, err := resolver.NewBuilder(proxyClient(t, tp.addr))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("etcd:///svc/hello", grpc.WithResolvers(b), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	hc := healthpb.NewHealthClient(cc)
	answers := func(name string) func() bool {
		return func() bool {
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
			return err == nil
		}
	}
	testx.Eventually(t, 10*time.Second, "backend one is reached through etcd:///svc/hello", answers("one"))

	// Replace one by two, then compact: the resolver follows.
	if err := em.AddEndpoint(ctx, "svc/hello/two", endpoints.Endpoint{Addr: two}); err != nil {
		t.Fatal(err)
	}
	if err := em.DeleteEndpoint(ctx, "svc/hello/one"); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "backend two is reached after one left", answers("two"))
	resp, err := direct.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	if err := em.AddEndpoint(ctx, "svc/hello/one", endpoints.Endpoint{Addr: one}); err != nil {
		t.Fatal(err)
	}
	if err := em.DeleteEndpoint(ctx, "svc/hello/two"); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "backend one is reached again after the compaction", answers("one"))
}
