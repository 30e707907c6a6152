// Package lbtest holds what the balancing policies' tests share: echo
// backends registered in a real etcd, a client that dials them through the
// Muster resolver with a given policy, and counting where RPCs land.
package lbtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

// Service is the service name the backends register.
const Service = "lb.rpc"

// Backend is an echo server and the endpoint it is registered as.
type Backend struct {
	*echo.Server
	Endpoint endpoint.Endpoint
}

// StartBackends starts n echo servers named b0..b(n-1) and registers them
// through reg with the metadata meta(i) gives (nil: none). They stop when
// the test ends.
func StartBackends(t *testing.T, reg *registry.Registrar, n int, meta func(i int, e *endpoint.Endpoint)) []*Backend {
	t.Helper()
	var bs []*Backend
	for i := range n {
		s, err := echo.Start(fmt.Sprintf("b%d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		e := endpoint.Endpoint{Service: Service, Addr: s.Addr}
		if meta != nil {
			meta(i, &e)
		}
		bs = append(bs, &Backend{Server: s, Endpoint: e})
	}
	if reg != nil {
		eps := make([]endpoint.Endpoint, len(bs))
		for i, b := range bs {
			eps[i] = b.Endpoint
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := reg.Register(ctx, eps...); err != nil {
			t.Fatal(err)
		}
	}
	return bs
}

// Registrar returns a registrar on cli, closed when the test ends.
func Registrar(t *testing.T, cli *clientv3.Client) *registry.Registrar {
	t.Helper()
	r, err := registry.New(cli, registry.WithTTL(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Dial returns a client of Service through the Muster resolver on cli,
// with the service config sc; it is closed when the test ends.
func Dial(t *testing.T, cli *clientv3.Client, sc string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("muster:///"+Service,
		grpc.WithResolvers(resolver.NewBuilder(cli)),
		grpc.WithDefaultServiceConfig(sc),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Spread makes n RPCs on cc, from four goroutines, and counts them by the
// backend that answered. A failed RPC fails the test.
func Spread(t *testing.T, cc *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	const workers = 4
	results := make(chan map[string]int, workers)
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			got := map[string]int{}
			for i := w; i < n; i += workers {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				name, err := echo.Call(ctx, cc)
				cancel()
				if err != nil {
					errs <- err
					results <- got
					return
				}
				got[name]++
			}
			results <- got
		}()
	}
	total := map[string]int{}
	for range workers {
		for k, v := range <-results {
			total[k] += v
		}
	}
	select {
	case err := <-errs:
		t.Fatalf("RPC failed: %v", err)
	default:
	}
	return total
}

// WaitAll waits until RPCs on cc have reached every one of names.
func WaitAll(t *testing.T, cc *grpc.ClientConn, names ...string) {
	t.Helper()
	seen := map[string]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for {
		for n, c := range Spread(t, cc, 20) {
			seen[n] = c > 0 || seen[n]
		}
		all := true
		for _, n := range names {
			all = all && seen[n]
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 15s, RPCs reached %v, want all of %v", seen, names)
		}
	}
}
