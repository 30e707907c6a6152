// Package itest holds what the interop tests share: echo backends, gRPC
// clients, and waits with deadlines.
package itest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/testx"
)

// ServiceConfig is the service config of the tests' clients: that of a
// Muster client (muster.ServiceConfig: client-side health checking) with
// gRPC's round_robin policy instead of the default muster_p2c, so that a
// few calls reach every backend of a small set.
var ServiceConfig = muster.ServiceConfig(muster.Config{Balancer: "round_robin"})

// Context returns a context that ends after d or with the test.
func Context(t testing.TB, d time.Duration) context.Context { return testx.Context(t, d) }

// Eventually polls cond until it holds, failing the test after d.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testx.Eventually(t, d, what, cond)
}

// Backends starts n echo gRPC servers on 127.0.0.1, each answering with its
// name: prefix0, prefix1, ... They stop when the test ends.
func Backends(t testing.TB, prefix string, n int) []*echo.Server {
	t.Helper()
	out := make([]*echo.Server, n)
	for i := range out {
		out[i] = Backend(t, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

// Backend starts one echo gRPC server on 127.0.0.1 answering with name. It
// stops when the test ends.
func Backend(t testing.TB, name string) *echo.Server {
	t.Helper()
	s, err := echo.Start(name, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Dial returns a plaintext ClientConn to target with ServiceConfig (unless
// opts say otherwise), closed when the test ends.
func Dial(t testing.TB, target string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(ServiceConfig),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// reached makes n calls and returns the sorted names of the backends that
// answered.
func reached(cc grpc.ClientConnInterface, n int) ([]string, error) {
	seen := map[string]bool{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		name, err := echo.Call(ctx, cc, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return nil, err
		}
		seen[name] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// WaitReached waits until calls on cc reach exactly the backends named
// want, twice in a row (20 calls each: every backend of a small set under
// round_robin), failing the test after 15s.
func WaitReached(t testing.TB, cc grpc.ClientConnInterface, want ...string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	deadline := time.Now().Add(15 * time.Second)
	var got []string
	var err error
	for time.Now().Before(deadline) {
		if got, err = reached(cc, 20); err == nil && slices.Equal(got, want) {
			if got, err = reached(cc, 20); err == nil && slices.Equal(got, want) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("calls reach %v (err %v), want exactly %v", got, err, want)
}

// Keys returns the keys and values under prefix.
func Keys(t testing.TB, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := cli.Get(Context(t, 5*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}
