package gokit_test

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	kitendpoint "github.com/go-kit/kit/endpoint"
	"github.com/go-kit/kit/sd"
	"github.com/go-kit/kit/sd/etcdv3"
	"github.com/go-kit/kit/sd/lb"
	kitlog "github.com/go-kit/log"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
)

// go-kit leaves no goroutine behind once its etcd clients are closed (see
// closeKitClient); nothing beyond etcdtest's list is ignored.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// backends starts n echo gRPC servers on 127.0.0.1, named b0, b1, ...
func backends(t *testing.T, n int) []*echo.Server {
	t.Helper()
	out := make([]*echo.Server, n)
	for i := range out {
		s, err := echo.Start(fmt.Sprintf("b%d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		out[i] = s
	}
	return out
}

// factory returns a go-kit sd.Factory: the instance string is a gRPC
// server's host:port, the endpoint makes one echo call on it and answers
// with the name of the backend that served it. go-kit's Endpointer closes
// the endpoints of instances that leave, but not those it still holds when
// it is closed: the cleanup closes every connection the factory made.
func factory(t *testing.T) sd.Factory {
	var mu sync.Mutex
	var conns []*grpc.ClientConn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, cc := range conns {
			_ = cc.Close() // those closed already return an error
		}
	})
	return func(instance string) (kitendpoint.Endpoint, io.Closer, error) {
		cc, err := grpc.NewClient("passthrough:///"+instance, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, nil, err
		}
		mu.Lock()
		conns = append(conns, cc)
		mu.Unlock()
		return func(ctx context.Context, _ any) (any, error) { return echo.Call(ctx, cc) }, cc, nil
	}
}

// balanced builds the usual go-kit client stack on inst: an Endpointer with
// factory, round robin, and retries.
func balanced(t *testing.T, inst sd.Instancer) kitendpoint.Endpoint {
	t.Helper()
	e := sd.NewEndpointer(inst, factory(t), kitlog.NewNopLogger())
	t.Cleanup(e.Close)
	return lb.Retry(3, 2*time.Second, lb.NewRoundRobin(e))
}

// reached makes n calls and returns the sorted backends that answered.
func reached(call kitendpoint.Endpoint, n int) ([]string, error) {
	seen := map[string]bool{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		resp, err := call(ctx, nil)
		cancel()
		if err != nil {
			return nil, err
		}
		seen[resp.(string)] = true
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out, nil
}

// waitReached waits until calls reach exactly want (none: every call fails
// for want of endpoints), twice in a row.
func waitReached(t *testing.T, call kitendpoint.Endpoint, want ...string) {
	t.Helper()
	slices.Sort(want)
	deadline := time.Now().Add(15 * time.Second)
	var got []string
	var err error
	for time.Now().Before(deadline) {
		// Round robin over up to four endpoints reaches all in 20 calls.
		if got, err = reached(call, 20); err == nil && slices.Equal(got, want) || err != nil && len(want) == 0 {
			if got, err = reached(call, 20); err == nil && slices.Equal(got, want) || err != nil && len(want) == 0 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("calls reach %v (err %v), want exactly %v", got, err, want)
}

// events collects the Events an Instancer sends to one channel, reading
// the channel until the test ends, as go-kit requires of a registered
// channel.
type events struct {
	mu   sync.Mutex
	all  []sd.Event
	more chan struct{}
}

func collect(t *testing.T, inst sd.Instancer) *events {
	ev := &events{more: make(chan struct{}, 1)}
	ch := make(chan sd.Event)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range ch {
			ev.mu.Lock()
			ev.all = append(ev.all, e)
			ev.mu.Unlock()
			select {
			case ev.more <- struct{}{}:
			default:
			}
		}
	}()
	inst.Register(ch)
	t.Cleanup(func() {
		inst.Deregister(ch)
		close(ch)
		<-done
	})
	return ev
}

// wait returns the index of the first event from index from on that
// satisfies cond, failing the test after d.
func (ev *events) wait(t *testing.T, from int, d time.Duration, what string, cond func(sd.Event) bool) int {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		ev.mu.Lock()
		for i := from; i < len(ev.all); i++ {
			if cond(ev.all[i]) {
				ev.mu.Unlock()
				return i
			}
		}
		from = len(ev.all)
		ev.mu.Unlock()
		select {
		case <-ev.more:
		case <-timer.C:
			ev.mu.Lock()
			defer ev.mu.Unlock()
			t.Fatalf("after %v, no event with %s; events: %+v", d, what, ev.all)
		}
	}
}

func (ev *events) list() []sd.Event {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return slices.Clone(ev.all)
}

func instancesAre(want ...string) func(sd.Event) bool {
	slices.Sort(want)
	return func(e sd.Event) bool { return e.Err == nil && slices.Equal(e.Instances, want) }
}

// kitClient returns go-kit's own etcdv3 client on etcd. go-kit's Client has
// no Close (its etcd client lives until the process ends); the cleanup
// cancels its context and closes the etcd client underneath (closeKitClient),
// so that the test ends without its goroutines.
func kitClient(t *testing.T, m *etcdtest.Member) etcdv3.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := etcdv3.NewClient(ctx, m.Endpoints(), etcdv3.ClientOptions{DialTimeout: 5 * time.Second})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		closeKitClient(t, c)
	})
	return c
}

// closeKitClient closes the *clientv3.Client inside go-kit's etcdv3 client
// (its unexported field cli), which go-kit offers no way to close.
func closeKitClient(t *testing.T, c etcdv3.Client) {
	v := reflect.ValueOf(c)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		t.Fatalf("go-kit's etcdv3 client is a %T, not a pointer to a struct: update closeKitClient", c)
	}
	f := v.Elem().FieldByName("cli")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*clientv3.Client]() {
		t.Fatalf("go-kit's etcdv3 client %T has no field cli *clientv3.Client: update closeKitClient", c)
	}
	cli := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*clientv3.Client)
	_ = cli.Close()
}
