package kratos_test

import (
	"context"
	"io"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2"
	klog "github.com/go-kratos/kratos/v2/log"
	"github.com/go-kratos/kratos/v2/registry"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	mk "github.com/mustersd/muster/contrib/kratos"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// Nothing is ignored beyond etcdtest's (empty) list: Kratos's apps,
// servers, clients and resolvers end all their goroutines once stopped and
// closed. (Kratos's App.Run calls signal.Notify and never signal.Stop; the
// runtime's signal goroutine that leaves is one goleak never reports.)
func TestMain(m *testing.M) {
	klog.SetLogger(klog.NewStdLogger(io.Discard)) // Kratos logs through a global logger
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context { return testx.Context(t, d) }

// newRegistry returns a Registry on cli, closed when the test ends.
func newRegistry(t *testing.T, cli *clientv3.Client, opts ...mk.Option) *mk.Registry {
	t.Helper()
	r, err := mk.New(cli, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// app is a running Kratos application: Kratos's gRPC server on 127.0.0.1
// serving the echo service, which answers with the app's ID.
type app struct {
	*kratos.App
	srv  *kgrpc.Server
	done chan error
}

// startApp runs a Kratos application with ID id, named service, that
// registers through r, and waits until r's registrar holds it in etcd. It
// stops when the test ends.
func startApp(t *testing.T, r registry.Registrar, service, id string, opts ...kratos.Option) *app {
	t.Helper()
	srv := kgrpc.NewServer(kgrpc.Address("127.0.0.1:0"))
	echo.New(id).Register(srv)
	a := &app{srv: srv, done: make(chan error, 1)}
	a.App = kratos.New(append([]kratos.Option{
		kratos.ID(id), kratos.Name(service), kratos.Version("v1.0.0"),
		kratos.Server(srv), kratos.Registrar(r), kratos.RegistrarTimeout(5 * time.Second),
	}, opts...)...)
	go func() { a.done <- a.Run() }()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop stops the application gracefully (Kratos deregisters it, then stops
// its servers) and waits for Run to return. It is idempotent.
func (a *app) stop(t *testing.T) {
	t.Helper()
	select {
	case <-a.done:
		a.done <- nil // for the next call
		return
	default:
	}
	if err := a.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	select {
	case err := <-a.done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
		a.done <- nil
	case <-time.After(15 * time.Second):
		t.Fatal("Kratos app did not stop")
	}
}

// dial is a Kratos gRPC client of discovery:///service resolving through d,
// closed when the test ends.
func dial(t *testing.T, d registry.Discovery, service string) *grpc.ClientConn {
	t.Helper()
	conn, err := kgrpc.DialInsecure(ctxT(t, 5*time.Second), kgrpc.WithEndpoint("discovery:///"+service), kgrpc.WithDiscovery(d),
		kgrpc.WithPrintDiscoveryDebugLog(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// reached makes n calls and returns the sorted IDs of the apps that
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

// waitReached waits until calls reach exactly want, twice in a row.
func waitReached(t *testing.T, cc grpc.ClientConnInterface, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	var err error
	deadline := time.Now().Add(15 * time.Second)
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

// keys returns the keys and values under prefix.
func keys(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := cli.Get(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

// waitKeys waits until the keys under prefix are exactly want.
func waitKeys(t *testing.T, cli *clientv3.Client, prefix string, want ...string) {
	t.Helper()
	slices.Sort(want)
	var got []string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got = slices.Sorted(maps.Keys(keys(t, cli, prefix)))
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("keys under %s: %v, want %v", prefix, got, want)
		}
	}
}
