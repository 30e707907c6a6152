package pick

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeromicro/go-zero/core/logx"
	_ "github.com/zeromicro/go-zero/zrpc" // registers go-zero's "p2c_ewma"
	"google.golang.org/grpc/balancer"
	_ "google.golang.org/grpc/balancer/leastrequest" // registers "least_request_experimental"
	"google.golang.org/grpc/balancer/roundrobin"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	grpcresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/balancer/weighted"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/resolver"
)

// policies are measured in this order.
var policies = []string{
	roundrobin.Name,
	"least_request_experimental",
	"p2c_ewma", // go-zero
	p2c.Name,
	weighted.Name,
}

// sizes are the numbers of READY endpoints.
var sizes = []int{2, 10, 100}

func init() {
	// go-zero's p2c logs its statistics once a minute from Done.
	logx.Disable()
}

// TestMain prints, when benchmarks run, what the numbers depend on besides
// the code: the host, its clock source (muster_p2c and p2c_ewma read the
// clock in every Pick and Done) and how busy it was.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		fmt.Printf("host: %s %s/%s, %d CPUs, GOMAXPROCS %d; clocksource %s; load average %s\n",
			runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0),
			firstLine("/sys/devices/system/clocksource/clocksource0/current_clocksource"), loadAvg())
	}
	os.Exit(m.Run())
}

func firstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}

func loadAvg() string {
	f := strings.Fields(firstLine("/proc/loadavg"))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

var pickInfo = balancer.PickInfo{
	FullMethodName: "/grpc.testing.TestService/UnaryCall",
	Ctx:            context.Background(),
}

// BenchmarkPickDone is one Pick and its Done, from one goroutine.
func BenchmarkPickDone(b *testing.B) {
	for _, name := range policies {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/n=%d", name, n), func(b *testing.B) {
				p := readyPicker(b, name, n)
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					pickDone(b, p)
				}
			})
		}
	}
}

// BenchmarkPickDoneParallel is the same from GOMAXPROCS goroutines at once,
// on one picker, as the RPCs of one ClientConn are.
func BenchmarkPickDoneParallel(b *testing.B) {
	for _, name := range policies {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/n=%d", name, n), func(b *testing.B) {
				p := readyPicker(b, name, n)
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						pickDone(b, p)
					}
				})
			})
		}
	}
}

var sink time.Duration

// BenchmarkClock is two reads of the monotonic clock, as muster_p2c makes
// per RPC (time.Since(epoch) in Pick and in Done): the floor under any
// policy that times its RPCs, set by the host's clock source. go-zero's
// p2c_ewma reads it three times.
func BenchmarkClock(b *testing.B) {
	epoch := time.Now()
	for b.Loop() {
		sink += time.Since(epoch)
		sink += time.Since(epoch)
	}
}

func pickDone(b *testing.B, p balancer.Picker) {
	res, err := p.Pick(pickInfo)
	if err != nil {
		b.Fatal(err)
	}
	if res.Done != nil {
		res.Done(balancer.DoneInfo{})
	}
}

// TestPickers checks what the benchmarks rely on: every policy publishes a
// READY picker that reaches every endpoint.
func TestPickers(t *testing.T) {
	for _, name := range policies {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("%s/n=%d", name, n), func(t *testing.T) {
				p := readyPicker(t, name, n)
				seen := map[balancer.SubConn]bool{}
				for range 200 * n {
					res, err := p.Pick(pickInfo)
					if err != nil {
						t.Fatal(err)
					}
					seen[res.SubConn] = true
					if res.Done != nil {
						res.Done(balancer.DoneInfo{})
					}
				}
				if len(seen) != n {
					t.Errorf("%d picks reached %d of %d endpoints", 200*n, len(seen), n)
				}
			})
		}
	}
}

// readyPicker builds policy name on a fake ClientConn with n endpoints,
// brings them all READY and returns the policy's last picker.
func readyPicker(tb testing.TB, name string, n int) balancer.Picker {
	tb.Helper()
	bb := balancer.Get(name)
	if bb == nil {
		tb.Fatalf("policy %q is not registered", name)
	}
	var cfg serviceconfig.LoadBalancingConfig
	if cp, ok := bb.(balancer.ConfigParser); ok {
		var err error
		if cfg, err = cp.ParseConfig(json.RawMessage(`{}`)); err != nil {
			tb.Fatalf("%s: ParseConfig: %v", name, err)
		}
	}
	cc := &fakeCC{}
	bal := bb.Build(cc, balancer.BuildOptions{})
	tb.Cleanup(bal.Close)

	eps := make([]endpoint.Endpoint, n)
	for i := range eps {
		eps[i] = endpoint.Endpoint{Service: "bench", Addr: fmt.Sprintf("127.0.%d.%d:9000", (i+1)>>8, (i+1)&0xff)}.Normalize()
	}
	err := bal.UpdateClientConnState(balancer.ClientConnState{
		ResolverState:  resolver.State(discovery.Snapshot{Revision: 1, Endpoints: eps}),
		BalancerConfig: cfg,
	})
	if err != nil {
		tb.Fatalf("%s: UpdateClientConnState: %v", name, err)
	}
	cc.drain()

	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.subConns != n {
		tb.Fatalf("%s: %d SubConns for %d endpoints", name, cc.subConns, n)
	}
	if cc.state.ConnectivityState != connectivity.Ready || cc.state.Picker == nil {
		tb.Fatalf("%s: last state %v, want READY", name, cc.state.ConnectivityState)
	}
	return cc.state.Picker
}

// fakeCC is a balancer.ClientConn whose SubConns become READY, and healthy,
// as soon as they are asked to connect. Their state changes are queued and
// delivered by drain, outside the policy's calls into the ClientConn, as
// gRPC delivers them from its serializer (pick_first holds its lock while it
// calls Connect and RegisterHealthListener).
type fakeCC struct {
	balancer.ClientConn // nil; satisfies the enforced embedding

	mu       sync.Mutex
	queue    []func()
	subConns int
	state    balancer.State
}

func (cc *fakeCC) NewSubConn(addrs []grpcresolver.Address, opts balancer.NewSubConnOptions) (balancer.SubConn, error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.subConns++
	return &fakeSC{cc: cc, addrs: addrs, listener: opts.StateListener}, nil
}

func (cc *fakeCC) RemoveSubConn(sc balancer.SubConn) { sc.Shutdown() }

func (cc *fakeCC) UpdateAddresses(balancer.SubConn, []grpcresolver.Address) {}

func (cc *fakeCC) UpdateState(s balancer.State) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.state = s
}

func (cc *fakeCC) ResolveNow(grpcresolver.ResolveNowOptions) {}

func (cc *fakeCC) Target() string { return "muster-static:///bench" }

func (cc *fakeCC) MetricsRecorder() estats.MetricsRecorder {
	return estats.UnimplementedMetricsRecorder{}
}

func (cc *fakeCC) enqueue(f func()) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.queue = append(cc.queue, f)
}

// drain delivers queued state changes, and those they cause, until none is
// left.
func (cc *fakeCC) drain() {
	for {
		cc.mu.Lock()
		q := cc.queue
		cc.queue = nil
		cc.mu.Unlock()
		if len(q) == 0 {
			return
		}
		for _, f := range q {
			f()
		}
	}
}

type fakeSC struct {
	balancer.SubConn // nil; satisfies the enforced embedding

	cc       *fakeCC
	addrs    []grpcresolver.Address
	listener func(balancer.SubConnState)

	mu        sync.Mutex
	connected bool
	shutdown  bool
}

func (sc *fakeSC) String() string { return "fakeSC(" + sc.addrs[0].Addr + ")" }

func (sc *fakeSC) Connect() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.connected || sc.shutdown {
		return
	}
	sc.connected = true
	sc.cc.enqueue(func() {
		sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Connecting})
		sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Ready})
	})
}

func (sc *fakeSC) RegisterHealthListener(f func(balancer.SubConnState)) {
	sc.cc.enqueue(func() { f(balancer.SubConnState{ConnectivityState: connectivity.Ready}) })
}

func (sc *fakeSC) Shutdown() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.shutdown {
		return
	}
	sc.shutdown = true
	sc.cc.enqueue(func() { sc.listener(balancer.SubConnState{ConnectivityState: connectivity.Shutdown}) })
}

func (sc *fakeSC) UpdateAddresses(addrs []grpcresolver.Address) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.addrs = addrs
}

func (sc *fakeSC) GetOrBuildProducer(balancer.ProducerBuilder) (balancer.Producer, func()) {
	return nil, func() {}
}
