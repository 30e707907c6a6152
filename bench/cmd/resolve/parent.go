package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/mustersd/muster/bench/internal/benchenv"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// result is what one system measured with N ClientConns.
type result struct {
	system string
	n      int
	err    error

	add, first, del, put []time.Duration
	cpu                  time.Duration // the child's CPU during the changes

	initWall   time.Duration // ClientConns created until all resolved the initial set
	heap       int64         // live heap growth for the N ClientConns
	rss        int64         // RSS growth for the N ClientConns
	goroutines int           // goroutines added
	watchers   float64       // etcd watchers added while the child held its ClientConns
	streams    float64       // etcd watch streams added
}

const (
	watcherMetric = "etcd_debugging_mvcc_watcher_total"
	streamMetric  = "etcd_debugging_mvcc_watch_stream_total"
)

func runParent(ctx context.Context, cfg config) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable to re-run per system: %w", err)
	}
	ns := make([]string, len(cfg.ns))
	for i, n := range cfg.ns {
		ns[i] = strconv.Itoa(n)
	}
	fmt.Printf("resolution benchmark: N = %s ClientConns, %d changes each (add one endpoint, then remove the oldest), gap %v\n", strings.Join(ns, ", "), cfg.changes, cfg.gap)
	fmt.Printf("host: %s %s/%s, %d CPUs, GOMAXPROCS %d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Printf("modules: %s\n", moduleVersions())
	fmt.Printf("etcd: one embedded single node for the whole run, fsync on, default timings; data in %s\n", cfg.dir)
	fmt.Printf("disk: %s; %s\n\n", benchenv.DiskInfo(cfg.dir), benchenv.FsyncProbe(cfg.dir))

	e, err := benchenv.StartEtcd(ctx, cfg.dir)
	if err != nil {
		return err
	}
	defer func() {
		if err := e.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "resolve: %v\n", err)
		}
	}()
	cli, err := newClient(e.URL)
	if err != nil {
		return err
	}
	defer cli.Close()
	if err := warmUp(ctx, cli); err != nil {
		return err
	}
	base, err := benchenv.Metric(watcherMetric)
	if err != nil {
		return err
	}

	var results []result
	for _, sys := range cfg.systems {
		for _, n := range cfg.ns {
			if ctx.Err() != nil {
				break
			}
			fmt.Fprintf(os.Stderr, "resolve: running %s with N=%d ...\n", sys, n)
			r := runSystem(ctx, cfg, exe, e.URL, cli, base, sys, n)
			if r.err != nil {
				fmt.Fprintf(os.Stderr, "resolve: %s N=%d failed: %v\n", sys, n, r.err)
			}
			results = append(results, r)
		}
	}
	printTables(os.Stdout, cfg, results)
	if err := ctx.Err(); err != nil {
		return err
	}
	var failed []string
	for _, r := range results {
		if r.err != nil {
			failed = append(failed, fmt.Sprintf("%s N=%d", r.system, r.n))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d runs failed: %s", len(failed), len(results), strings.Join(failed, ", "))
	}
	return nil
}

// warmUp writes and deletes a scratch key a few hundred times, so that the
// first system measured does not pay for a cold etcd (WAL and bbolt pages
// not yet allocated, caches empty).
func warmUp(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for i := range 200 {
		if _, err := cli.Put(ctx, "bench-warm-up", strconv.Itoa(i)); err != nil {
			return fmt.Errorf("warm etcd up: %w", err)
		}
	}
	if _, err := cli.Delete(ctx, "bench-warm-up"); err != nil {
		return fmt.Errorf("warm etcd up: %w", err)
	}
	return nil
}

// runSystem clears the service's keys, waits for the watchers of earlier
// children to be gone, and runs sys with n ClientConns in a child process;
// it reads etcd's watcher gauges while the child holds its ClientConns.
func runSystem(ctx context.Context, cfg config, exe, etcdURL string, cli *clientv3.Client, base float64, sys string, n int) (res result) {
	res.system, res.n = sys, n
	fail := func(err error) result {
		res.err = err
		return res
	}
	for _, p := range []string{"services/" + service + "/", service + "/"} {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Delete(dctx, p, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return fail(fmt.Errorf("clear %q: %w", p, err))
		}
	}
	// etcd drops a child's watchers when its connections close; wait for
	// that, so that each child starts from the same count.
	deadline := time.Now().Add(10 * time.Second)
	for {
		w, err := benchenv.Metric(watcherMetric)
		if err != nil {
			return fail(err)
		}
		if w <= base || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	w0, err := benchenv.Metric(watcherMetric)
	if err != nil {
		return fail(err)
	}
	s0, err := benchenv.Metric(streamMetric)
	if err != nil {
		return fail(err)
	}

	var left time.Duration = time.Hour
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	args := []string{
		"-system", sys, "-etcd", etcdURL, "-conns", strconv.Itoa(n),
		"-changes", strconv.Itoa(cfg.changes), "-gap", cfg.gap.String(),
		"-change-timeout", cfg.wait.String(), "-timeout", left.String(),
	}
	if cfg.profile != "" {
		args = append(args, "-profile", cfg.profile)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr // keep stdout for the tables
	cmd.WaitDelay = 10 * time.Second
	pr, pw, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("pipe to child: %w", err))
	}
	defer pr.Close()
	cmd.ExtraFiles = []*os.File{pw} // fd 3 in the child
	stdin, err := cmd.StdinPipe()
	if err != nil {
		pw.Close()
		return fail(fmt.Errorf("child stdin: %w", err))
	}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fail(fmt.Errorf("start child: %w", err))
	}
	pw.Close()
	wait := func() error {
		stdin.Close() // tells the child to exit
		if err := cmd.Wait(); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("child: %w (%v)", ctx.Err(), err)
			}
			return fmt.Errorf("child: %w", err)
		}
		return nil
	}
	dec := json.NewDecoder(pr)
	next := func(want string) (message, error) {
		var m message
		if err := dec.Decode(&m); err != nil {
			werr := wait()
			if errors.Is(err, io.EOF) {
				err = errors.New("child exited without reporting")
			}
			return m, fmt.Errorf("waiting for %q: %w; %v", want, err, werr)
		}
		if m.Type == "error" {
			wait()
			return m, errors.New(m.Error)
		}
		if m.Type != want {
			wait()
			return m, fmt.Errorf("child sent %q, want %q", m.Type, want)
		}
		return m, nil
	}

	ready, err := next("ready")
	if err != nil {
		return fail(err)
	}
	w1, err := benchenv.Metric(watcherMetric)
	if err != nil {
		wait()
		return fail(err)
	}
	s1, err := benchenv.Metric(streamMetric)
	if err != nil {
		wait()
		return fail(err)
	}
	res.initWall, res.heap, res.rss, res.goroutines = ready.InitWall, ready.HeapGrowth, ready.RSSGrowth, ready.Goroutines
	res.watchers, res.streams = w1-w0, s1-s0
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		wait()
		return fail(fmt.Errorf("tell the child to go on: %w", err))
	}

	done, err := next("done")
	if err != nil {
		return fail(err)
	}
	res.add, res.first, res.del, res.put, res.cpu = done.Add, done.First, done.Del, done.Put, done.CPU
	if err := wait(); err != nil {
		return fail(err)
	}
	return res
}

// quantile returns the q-quantile of ds, interpolating linearly between the
// two nearest samples (so that with 50 samples p99 lies between the largest
// two, not on the largest).
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	f := pos - float64(lo)
	return s[lo] + time.Duration(f*float64(s[hi]-s[lo]))
}

func printTables(w io.Writer, cfg config, results []result) {
	mb := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }

	width := len("muster / go-zero")
	for _, r := range results {
		width = max(width, len(r.system), len(sysMuster+" / "+r.system))
	}
	name := func(s string) string { return fmt.Sprintf("%-*s", width, s) }

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, name("system")+"\tN\tp50 ms\tp99 ms\tmax ms\theap MB\tRSS MB\twatchers\t")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%d\tFAILED\t-\t-\t-\t-\t-\t\n", name(r.system), r.n)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%.0f\t\n", name(r.system), r.n,
			ms(quantile(r.add, 0.5)), ms(quantile(r.add, 0.99)), ms(quantile(r.add, 1)),
			mb(r.heap), mb(r.rss), r.watchers)
	}
	tw.Flush()

	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		switch q := a / b; {
		case q >= 100:
			return fmt.Sprintf("%.0fx", q)
		case q >= 10:
			return fmt.Sprintf("%.1fx", q)
		case q >= 0.1 || q == 0:
			return fmt.Sprintf("%.2fx", q)
		default:
			return fmt.Sprintf("%.2gx", q)
		}
	}
	find := func(sys string, n int) (result, bool) {
		for _, r := range results {
			if r.system == sys && r.n == n && r.err == nil {
				return r, true
			}
		}
		return result{}, false
	}
	var rows []string
	for _, n := range cfg.ns {
		m, ok := find(sysMuster, n)
		if !ok {
			continue
		}
		for _, sys := range cfg.systems {
			if sys == sysMuster {
				continue
			}
			p, ok := find(sys, n)
			if !ok {
				continue
			}
			rows = append(rows, fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name(sysMuster+" / "+sys), n,
				ratio(float64(quantile(m.add, 0.5)), float64(quantile(p.add, 0.5))),
				ratio(float64(quantile(m.add, 0.99)), float64(quantile(p.add, 0.99))),
				ratio(float64(quantile(m.add, 1)), float64(quantile(p.add, 1))),
				ratio(float64(m.heap), float64(p.heap)), ratio(float64(m.rss), float64(p.rss)),
				ratio(m.watchers, p.watchers)))
		}
	}
	if len(rows) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, name("ratio")+"\tN\tp50\tp99\tmax\theap\tRSS\twatchers\t")
		for _, r := range rows {
			fmt.Fprint(tw, r)
		}
		tw.Flush()
	}

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, name("system")+"\tN\tfirst p50 ms\tput p50 ms\tremove p50 ms\tremove p99 ms\tinit ms\tgoroutines\tstreams\tCPU ms/change\t")
	for _, r := range results {
		if r.err != nil {
			continue
		}
		changes := max(len(r.add), 1)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%.0f\t%s\t\n", name(r.system), r.n,
			ms(quantile(r.first, 0.5)), ms(quantile(r.put, 0.5)), ms(quantile(r.del, 0.5)), ms(quantile(r.del, 0.99)),
			ms(r.initWall), r.goroutines, r.streams, ms(r.cpu/time.Duration(changes)))
	}
	tw.Flush()
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(w, "\n%s N=%d FAILED: %v\n", r.system, r.n, r.err)
		}
	}
	fmt.Fprintf(w, "\n"+
		"p50/p99/max: of %d additions, from just before the Put until the last of the N ClientConns' balancers\n"+
		"got the new address (p99 interpolated between the two largest). heap MB / RSS MB: growth of the live\n"+
		"heap (HeapAlloc after GC) / of VmRSS, from before the system's etcd client until all N ClientConns\n"+
		"resolved. watchers / streams: etcd_debugging_mvcc_watcher_total / _watch_stream_total added while the\n"+
		"child held its N ClientConns. remove: from just before the Delete until no ClientConn had the address.\n"+
		"put: the Put call alone (etcd's commit, fsync included). init: from the first grpc.NewClient until all\n"+
		"N resolved. CPU ms/change: the child's user+sys CPU over the changes (an add and a remove each).\n"+
		"Ratios: muster row / peer row; lower is better.\n", cfg.changes)
}

// moduleVersions lists the versions of the modules under test, as built.
func moduleVersions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build info)"
	}
	want := []string{"go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/client/v3", "github.com/zeromicro/go-zero", "google.golang.org/grpc"}
	var out []string
	for _, d := range bi.Deps {
		if slices.Contains(want, d.Path) {
			v := d.Version
			if d.Replace != nil {
				v += " => " + d.Replace.Path + " " + d.Replace.Version
			}
			out = append(out, d.Path+" "+v)
		}
	}
	return strings.Join(out, ", ")
}
