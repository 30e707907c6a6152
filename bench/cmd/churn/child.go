package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/serviceconfig"

	"github.com/mustersd/muster/bench/internal/benchenv"
	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/resolver"
)

// recordName is the policy of the child's ClientConns: it records the
// resolver's addresses in its slot and never connects.
const recordName = "churn_record"

func init() { balancer.Register(recordBuilder{}) }

// slots holds, per ClientConn, the sorted addresses of its last resolver
// state. A ClientConn finds its slot through its balancer config.
var (
	slots   []atomic.Pointer[[]string]
	updates atomic.Int64
)

type recordConfig struct {
	serviceconfig.LoadBalancingConfig
	Slot int `json:"slot"`
}

type recordBuilder struct{}

func (recordBuilder) Name() string { return recordName }

func (recordBuilder) Build(cc balancer.ClientConn, _ balancer.BuildOptions) balancer.Balancer {
	return &recorder{benchenv.RecordingBase{CC: cc}}
}

func (recordBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	var c recordConfig
	if err := json.Unmarshal(js, &c); err != nil {
		return nil, fmt.Errorf("%s config: %w", recordName, err)
	}
	if c.Slot < 0 || c.Slot >= len(slots) {
		return nil, fmt.Errorf("%s config: slot %d out of range", recordName, c.Slot)
	}
	return &c, nil
}

type recorder struct {
	benchenv.RecordingBase
}

func (r *recorder) UpdateClientConnState(s balancer.ClientConnState) error {
	cfg, ok := s.BalancerConfig.(*recordConfig)
	if !ok {
		return errors.New("no slot in the balancer config")
	}
	var addrs []string
	for _, e := range s.ResolverState.Endpoints {
		for _, a := range e.Addresses {
			addrs = append(addrs, a.Addr)
		}
	}
	slices.Sort(addrs)
	slots[cfg.Slot].Store(&addrs)
	updates.Add(1)
	r.Connecting()
	return nil
}

// runChild holds the ClientConns and answers the parent's check requests,
// one per line on stdin, with a report on stdout.
func runChild(cfg config) error {
	slots = make([]atomic.Pointer[[]string], cfg.resolvers)
	clis := make([]*clientv3.Client, cfg.etcdClients)
	for i := range clis {
		cli, err := benchenv.Client(cfg.etcd)
		if err != nil {
			return err
		}
		defer cli.Close()
		clis[i] = cli
	}
	service := make([]string, cfg.resolvers)
	for i := range cfg.resolvers {
		service[i] = serviceName(i % cfg.services)
		cli := clis[(i/cfg.services)%len(clis)]
		sc := fmt.Sprintf(`{"loadBalancingConfig":[{%q:{"slot":%d}}]}`, recordName, i)
		cc, err := grpc.NewClient("muster:///"+service[i],
			grpc.WithResolvers(resolver.NewBuilder(cli)),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultServiceConfig(sc))
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		defer cc.Close()
		cc.Connect()
	}

	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		phase := strings.TrimSpace(in.Text())
		rep := check(clis[0], service, cfg.checkWait)
		rep.Phase = phase
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rep.HeapMB = float64(ms.HeapAlloc) / (1 << 20)
		rep.Goroutines = runtime.NumGoroutine()
		if rss, err := benchenv.RSSBytes(); err == nil {
			rep.RSSMB = float64(rss) / (1 << 20)
		}
		rep.Updates = updates.Load()
		if err := out.Encode(rep); err != nil {
			return err
		}
	}
	return in.Err()
}

// check reads every service from etcd and waits until every ClientConn holds
// exactly its service's addresses, or until wait has passed.
func check(cli *clientv3.Client, service []string, wait time.Duration) report {
	start := time.Now()
	rep := report{Resolvers: len(service)}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	want, n, err := etcdContents(ctx, cli)
	if err != nil {
		rep.Mismatch = err.Error()
		return rep
	}
	rep.Endpoints = n
	for {
		rep.Equal, rep.Mismatch = 0, ""
		for i, svc := range service {
			got := slots[i].Load()
			if got != nil && slices.Equal(*got, want[svc]) {
				rep.Equal++
			} else if rep.Mismatch == "" {
				have := -1
				if got != nil {
					have = len(*got)
				}
				rep.Mismatch = fmt.Sprintf("ClientConn %d (%s) holds %d addresses, etcd %d", i, svc, have, len(want[svc]))
			}
		}
		if rep.Equal == len(service) || ctx.Err() != nil {
			rep.Converged = float64(time.Since(start).Microseconds()) / 1000
			return rep
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// etcdContents returns the sorted addresses of every service under Muster's
// namespace, and their number.
func etcdContents(ctx context.Context, cli *clientv3.Client) (map[string][]string, int, error) {
	resp, err := cli.Get(ctx, keyfmt.NamespacePrefix(keyfmt.DefaultNamespace), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("read etcd: %w", err)
	}
	want := map[string][]string{}
	for _, kv := range resp.Kvs {
		svc, id, ok := keyfmt.SplitKey(keyfmt.DefaultNamespace, string(kv.Key))
		if !ok {
			continue
		}
		e, err := keyfmt.Native.Decode(svc, id, kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("key %s: %w", kv.Key, err)
		}
		want[svc] = append(want[svc], e.Addr)
	}
	for _, a := range want {
		slices.Sort(a)
	}
	return want, len(resp.Kvs), nil
}
