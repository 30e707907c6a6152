package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/bench/internal/benchenv"
	"github.com/mustersd/muster/xds"
)

// watcherMetric is etcd's gauge of open watchers.
const watcherMetric = "etcd_debugging_mvcc_watcher_total"

// row is the result of one system and fleet size.
type row struct {
	system           string
	procs, conns     int
	watchers         float64
	etcdCPU          time.Duration
	add, del         []time.Duration
	rssMB            float64 // mean per client process
	err              error
	initial, changes time.Duration
}

func runParent(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	e, err := benchenv.StartEtcd(ctx, os.TempDir())
	if err != nil {
		return err
	}
	defer e.Stop()
	cli, err := benchenv.Client(e.URL)
	if err != nil {
		return err
	}
	defer cli.Close()
	host := strings.TrimPrefix(e.URL, "http://")

	fmt.Printf("fleet benchmark: %s ClientConns per process, processes %v, %d changes each (add, then remove the oldest)\n",
		strconv.Itoa(cfg.conns), cfg.procs, cfg.changes)
	fmt.Printf("host: %s %s/%s, %d CPUs\n\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU())

	var rows []row
	for _, sys := range cfg.systems {
		base, err := settledWatchers(ctx)
		if err != nil {
			return err
		}
		where := host
		var server *proc
		switch sys {
		case sysXDS, sysProxy:
			role := map[string]string{sysXDS: "xds", sysProxy: "proxy"}[sys]
			server, err = startProc(ctx, nil, "-role", role, "-etcd", e.URL)
			if err != nil {
				return err
			}
			if !server.out.Scan() {
				return fmt.Errorf("%s server did not start", role)
			}
			where = strings.TrimSpace(server.out.Text())
		}
		for _, p := range cfg.procs {
			r := runFleet(ctx, cfg, cli, sys, where, p, base)
			rows = append(rows, r)
			if r.err != nil {
				fmt.Fprintf(os.Stderr, "%s, %d processes: %v\n", sys, p, r.err)
			}
			if ctx.Err() != nil {
				break
			}
		}
		if server != nil {
			server.stop()
		}
		if ctx.Err() != nil {
			break
		}
	}
	printRows(rows, cfg)
	for _, r := range rows {
		if r.err != nil {
			return errors.New("a run failed (see above)")
		}
	}
	return nil
}

// addr is the address of the i-th endpoint: distinct, in 127.0.0.0/8, never
// dialled.
func addr(i int) string { return fmt.Sprintf("127.1.%d.%d:9000", (i>>8)&0xff, i&0xff) }

func key(a string) string { return "services/" + service + "/" + a }

func value(a string) string {
	b, _ := json.Marshal(struct{ Addr string }{a})
	return string(b)
}

// runFleet measures one system with procs client processes.
func runFleet(ctx context.Context, cfg config, cli *clientv3.Client, sys, where string, procs int, base float64) (r row) {
	r = row{system: sys, procs: procs, conns: procs * cfg.conns}
	if _, err := cli.Delete(ctx, "services/"+service+"/", clientv3.WithPrefix()); err != nil {
		r.err = err
		return r
	}
	live := []string{addr(0), addr(1)}
	for _, a := range live {
		if _, err := cli.Put(ctx, key(a), value(a)); err != nil {
			r.err = err
			return r
		}
	}
	var env []string
	args := []string{"-role", "client", "-system", sys, "-conns", strconv.Itoa(cfg.conns), "-change-timeout", cfg.wait.String()}
	switch sys {
	case sysXDS:
		bs, err := xds.Bootstrap{Server: where}.JSON()
		if err != nil {
			r.err = err
			return r
		}
		env = []string{"GRPC_XDS_BOOTSTRAP_CONFIG=" + string(bs)}
	default:
		args = append(args, "-etcd", where)
	}
	start := time.Now()
	fleet := make([]*proc, 0, procs)
	defer func() {
		for _, p := range fleet {
			p.stop()
		}
	}()
	for range procs {
		p, err := startProc(ctx, env, args...)
		if err != nil {
			r.err = err
			return r
		}
		fleet = append(fleet, p)
		fmt.Fprintln(p.in, strings.Join(live, " "))
	}
	for _, p := range fleet {
		rep, err := p.report()
		if err != nil {
			r.err = fmt.Errorf("initial endpoints: %w", err)
			return r
		}
		r.rssMB += rep.RSSMB / float64(procs)
	}
	r.initial = time.Since(start)
	w, err := benchenv.Metric(watcherMetric)
	if err != nil {
		r.err = err
		return r
	}
	r.watchers = w - base

	cpu0, _ := benchenv.CPUTime()
	t := time.Now()
	next := len(live)
	for range cfg.changes {
		a := addr(next)
		next++
		d, err := change(ctx, cli, fleet, "add", a)
		if err != nil {
			r.err = err
			return r
		}
		r.add = append(r.add, d)
		old := live[0]
		live = append(live[1:], a)
		if d, err = change(ctx, cli, fleet, "del", old); err != nil {
			r.err = err
			return r
		}
		r.del = append(r.del, d)
	}
	cpu1, _ := benchenv.CPUTime()
	r.etcdCPU, r.changes = cpu1-cpu0, time.Since(t)
	return r
}

// change arms every process for op on a, makes the change in etcd and
// returns the time until the last ClientConn of the last process had it.
func change(ctx context.Context, cli *clientv3.Client, fleet []*proc, op, a string) (time.Duration, error) {
	for _, p := range fleet {
		fmt.Fprintf(p.in, "%s %s\n", op, a)
	}
	for _, p := range fleet {
		if _, err := p.report(); err != nil {
			return 0, err
		}
	}
	t0 := time.Now()
	var err error
	if op == "add" {
		_, err = cli.Put(ctx, key(a), value(a))
	} else {
		_, err = cli.Delete(ctx, key(a))
	}
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", op, a, err)
	}
	var last int64
	for _, p := range fleet {
		rep, err := p.report()
		if err != nil {
			return 0, err
		}
		last = max(last, rep.At)
	}
	return time.Duration(last - t0.UnixNano()), nil
}

// settledWatchers waits until etcd's watcher gauge stops falling (the
// previous system's watchers are gone) and returns it.
func settledWatchers(ctx context.Context) (float64, error) {
	prev := -1.0
	for {
		w, err := benchenv.Metric(watcherMetric)
		if err != nil {
			return 0, err
		}
		if w == prev {
			return w, nil
		}
		prev = w
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// proc is a child process of this binary.
type proc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startProc(ctx context.Context, env []string, args ...string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("own executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 10 * time.Second
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", args, err)
	}
	return &proc{cmd: cmd, in: in, out: bufio.NewScanner(out)}, nil
}

func (p *proc) report() (clientReport, error) {
	var rep clientReport
	if !p.out.Scan() {
		return rep, fmt.Errorf("client process ended: %v", p.out.Err())
	}
	if err := json.Unmarshal(p.out.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("client report %q: %w", p.out.Text(), err)
	}
	if rep.Error != "" {
		return rep, errors.New(rep.Error)
	}
	return rep, nil
}

func (p *proc) stop() {
	p.in.Close()
	p.cmd.Wait()
}

// pct returns the p-th percentile of ds by nearest rank, in ms.
func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}

func printRows(rows []row, cfg config) {
	fmt.Printf("  %-11s %6s %6s %9s %12s %8s %8s %8s %10s %10s %14s\n",
		"system", "procs", "conns", "watchers", "etcd CPU ms", "add p50", "add p99", "add max", "remove p50", "remove p99", "RSS MB/proc")
	for _, r := range rows {
		if r.err != nil {
			fmt.Printf("  %-11s %6d %6d  failed: %v\n", r.system, r.procs, r.conns, r.err)
			continue
		}
		fmt.Printf("  %-11s %6d %6d %9.0f %12.0f %8.2f %8.2f %8.2f %10.2f %10.2f %14.1f\n",
			r.system, r.procs, r.conns, r.watchers, float64(r.etcdCPU.Milliseconds()),
			pct(r.add, 50), pct(r.add, 99), pct(r.add, 100), pct(r.del, 50), pct(r.del, 99), r.rssMB)
	}
	fmt.Printf("\nwatchers: etcd_debugging_mvcc_watcher_total while the fleet held its ClientConns, less its value before the\n")
	fmt.Printf("system's server (if any) started. etcd CPU: the parent's user+sys CPU (etcd's; the parent only writes\n")
	fmt.Printf("%d changes) over the changes. add/remove: from just before the etcd write until the last ClientConn of\n", 2*cfg.changes)
	fmt.Printf("the last process had the change, in ms, over %d changes each; nearest-rank percentiles. RSS: VmRSS of a\n", cfg.changes)
	fmt.Printf("client process after GC with its %d ClientConns resolved, mean over the processes.\n", cfg.conns)
}
