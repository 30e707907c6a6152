package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/grpclog"
	"google.golang.org/grpc/serviceconfig"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver

	"github.com/mustersd/muster/bench/internal/benchenv"
	"github.com/mustersd/muster/proxy"
	"github.com/mustersd/muster/resolver"
	"github.com/mustersd/muster/xds"
)

// recordName is the policy of the client processes. Under xDS the server
// names the policy; the recorder is registered under that name too, so that
// the xDS machinery hands it the endpoints (this process never imports the
// real muster_p2c).
const recordName = "bench_record"

func init() {
	balancer.Register(recordBuilder{name: recordName})
	balancer.Register(recordBuilder{name: string(xds.PolicyP2C)})
}

// book is the process's record of every ClientConn's addresses, and the
// goal the parent set: every ClientConn has (or lacks) one address.
var book = struct {
	sync.Mutex
	addrs   map[*recorder]map[string]bool
	goal    string
	present bool
	met     map[*recorder]bool
	done    chan struct{}
	need    int
}{addrs: map[*recorder]map[string]bool{}}

type recordBuilder struct{ name string }

func (b recordBuilder) Name() string { return b.name }

func (recordBuilder) Build(cc balancer.ClientConn, _ balancer.BuildOptions) balancer.Balancer {
	return &recorder{benchenv.RecordingBase{CC: cc}}
}

type anyConfig struct {
	serviceconfig.LoadBalancingConfig
}

// ParseConfig accepts any configuration: under xDS it gets muster_p2c's.
func (recordBuilder) ParseConfig(json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	return &anyConfig{}, nil
}

type recorder struct {
	benchenv.RecordingBase
}

func (r *recorder) UpdateClientConnState(s balancer.ClientConnState) error {
	set := map[string]bool{}
	for _, e := range s.ResolverState.Endpoints {
		for _, a := range e.Addresses {
			set[a.Addr] = true
		}
	}
	for _, a := range s.ResolverState.Addresses {
		set[a.Addr] = true
	}
	book.Lock()
	book.addrs[r] = set
	check(r)
	book.Unlock()
	r.Connecting()
	return nil
}

// check counts r for the goal if it meets it. book is locked.
func check(r *recorder) {
	if book.done == nil || book.met[r] || book.addrs[r][book.goal] != book.present {
		return
	}
	book.met[r] = true
	if len(book.met) == book.need {
		close(book.done)
		book.done = nil
	}
}

// arm sets the goal and returns a channel closed when every ClientConn
// meets it.
func arm(addr string, present bool, need int) <-chan struct{} {
	book.Lock()
	defer book.Unlock()
	done := make(chan struct{})
	book.goal, book.present, book.met, book.done, book.need = addr, present, map[*recorder]bool{}, done, need
	for r := range book.addrs {
		check(r)
	}
	return done
}

// clientReport is a client process's answer, one JSON line on stdout.
type clientReport struct {
	Ready bool    `json:"ready,omitempty"`
	RSSMB float64 `json:"rss_mb,omitempty"`
	At    int64   `json:"at,omitempty"` // Unix ns when the last ClientConn met the goal
	Error string  `json:"error,omitempty"`
}

// runClient holds cfg.conns ClientConns of one system. It reports "ready"
// once every one has the initial endpoints (the addresses on its first
// stdin line), then answers each "add ADDR" or "del ADDR" line with the time
// its last ClientConn had (or lost) ADDR. It exits when stdin closes.
func runClient(cfg config) error {
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	signal.Ignore(syscall.SIGINT) // the parent stops the fleet
	out := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)

	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	target := ""
	switch cfg.system {
	case sysMuster, sysEtcd, sysProxy:
		cli, err := benchenv.Client(cfg.etcd)
		if err != nil {
			return err
		}
		defer cli.Close()
		opts = append(opts, grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+recordName+`":{}}]}`))
		if cfg.system == sysMuster {
			target = "muster:///" + service
			opts = append(opts, grpc.WithResolvers(resolver.NewBuilder(cli)))
		} else {
			target = "etcd:///services/" + service
			b, err := etcdresolver.NewBuilder(cli)
			if err != nil {
				return fmt.Errorf("etcd naming resolver: %w", err)
			}
			opts = append(opts, grpc.WithResolvers(b))
		}
	case sysXDS:
		// The bootstrap was put in GRPC_XDS_BOOTSTRAP_CONFIG by the parent.
		target = "xds:///" + service
	default:
		return fmt.Errorf("unknown -system %q", cfg.system)
	}

	if !in.Scan() {
		return fmt.Errorf("no initial endpoints on stdin: %v", in.Err())
	}
	initial := strings.Fields(in.Text())
	for range cfg.conns {
		cc, err := grpc.NewClient(target, opts...)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		defer cc.Close()
		cc.Connect()
	}
	// One goal at a time: the initial endpoints are waited for in turn.
	for _, a := range initial {
		select {
		case <-arm(a, true, cfg.conns):
		case <-time.After(cfg.wait):
			out.Encode(clientReport{Error: fmt.Sprintf("initial endpoint %s not seen by all %d ClientConns in %v", a, cfg.conns, cfg.wait)})
			return fmt.Errorf("initial endpoints not seen")
		}
	}
	runtime.GC()
	rss, _ := benchenv.RSSBytes()
	if err := out.Encode(clientReport{Ready: true, RSSMB: float64(rss) / (1 << 20)}); err != nil {
		return err
	}
	if dir := os.Getenv("FLEET_PROFILE_DIR"); dir != "" {
		// A CPU profile of the changes, for `go tool pprof`.
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.cpu.pprof", cfg.system, os.Getpid())))
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 2 || (f[0] != "add" && f[0] != "del") {
			return fmt.Errorf("unexpected command %q", in.Text())
		}
		done := arm(f[1], f[0] == "add", cfg.conns)
		// The parent writes to etcd after every process said it armed.
		if err := out.Encode(clientReport{Ready: true}); err != nil {
			return err
		}
		select {
		case <-done:
			out.Encode(clientReport{At: time.Now().UnixNano()})
		case <-time.After(cfg.wait):
			out.Encode(clientReport{Error: fmt.Sprintf("%s %s not seen by all %d ClientConns in %v", f[0], f[1], cfg.conns, cfg.wait)})
		}
	}
	return nil
}

// runServer runs the xDS server or the proxy in front of the parent's etcd
// and prints its address on stdout; it stops when stdin closes.
func runServer(cfg config) error {
	signal.Ignore(syscall.SIGINT)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var (
		serve func() error
		stop  func()
	)
	switch cfg.role {
	case "xds":
		cli, err := benchenv.Client(cfg.etcd)
		if err != nil {
			return err
		}
		defer cli.Close()
		srv, err := xds.New(cli, xds.WithLogger(log))
		if err != nil {
			return err
		}
		serve, stop = func() error { return srv.Serve(lis) }, func() { srv.Close() }
	case "proxy":
		cli, err := benchenv.Client(cfg.etcd, proxy.DialOptions()...)
		if err != nil {
			return err
		}
		defer cli.Close()
		p, err := proxy.New(cli, proxy.WithLogger(log))
		if err != nil {
			return err
		}
		serve, stop = func() error { return p.Serve(lis) }, func() { p.Close() }
	}
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	fmt.Println(lis.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	select {
	case <-ctx.Done():
		stop()
		return nil
	case err := <-errc:
		return err
	}
}
