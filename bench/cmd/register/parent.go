package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/mustersd/muster/bench/internal/benchenv"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// result is what one system measured.
type result struct {
	system string
	err    error

	regWall    time.Duration // start until the count Get sees all N keys
	rateMin    float64       // slowest and fastest registration rate of
	rateMax    float64       // the -count runs
	runs       int
	regCPU     time.Duration // the child's CPU during registration
	etcdRegCPU time.Duration // etcd's (the parent's) CPU during registration
	rss        int64         // RSS growth of the child after registration
	rssEnd     int64         // ... and after the keepalive window
	heap       int64         // heap in use growth after registration
	goroutines int           // goroutines added by the registrations

	window        time.Duration // the keepalive window's length
	windowCPU     time.Duration // the child's CPU during the window
	etcdWindowCPU time.Duration // etcd's CPU during the window
	renewals      float64       // lease renewals etcd saw during the window
	leases        int           // leases in etcd at the end of the window
	watchers      float64       // etcd watchers at the end of the window
}

const (
	watcherMetric = "etcd_debugging_mvcc_watcher_total"
	renewedMetric = "etcd_debugging_lease_renewed_total"
)

func runParent(ctx context.Context, cfg config) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable to re-run per system: %w", err)
	}
	fmt.Printf("registration benchmark: N=%d, concurrency %d, TTL %v, keepalive window %v\n", cfg.n, cfg.concurrency, cfg.ttl, cfg.window)
	fmt.Printf("host: %s %s/%s, %d CPUs, GOMAXPROCS %d\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Printf("modules: %s\n", moduleVersions())
	fmt.Printf("etcd: embedded single node, fresh per system, fsync on, default timings; data in %s\n", cfg.dir)
	fmt.Printf("disk: %s; before: %s\n\n", benchenv.DiskInfo(cfg.dir), benchenv.FsyncProbe(cfg.dir))

	var results []result
	for _, sys := range cfg.systems {
		if ctx.Err() != nil {
			break
		}
		var runs []result
		for i := range cfg.count {
			if ctx.Err() != nil {
				break
			}
			fmt.Fprintf(os.Stderr, "register: running %s (%d/%d) ...\n", sys, i+1, cfg.count)
			// Only the last run keeps its registrations alive for the
			// window; the others measure registration alone.
			rc := cfg
			if i < cfg.count-1 {
				rc.window = 0
			}
			r := runSystem(ctx, rc, exe, sys)
			if r.err != nil {
				fmt.Fprintf(os.Stderr, "register: %s failed: %v\n", sys, r.err)
				runs = []result{r}
				break
			}
			runs = append(runs, r)
		}
		if len(runs) > 0 {
			results = append(results, median(runs, cfg.n))
		}
	}
	printTables(os.Stdout, cfg, results)
	fmt.Printf("disk after: %s\n", benchenv.FsyncProbe(cfg.dir))
	if err := ctx.Err(); err != nil {
		return err
	}
	var failed []string
	for _, r := range results {
		if r.err != nil {
			failed = append(failed, r.system)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d systems failed: %s", len(failed), len(results), strings.Join(failed, ", "))
	}
	return nil
}

// runSystem starts a fresh etcd, runs one system in a child process against
// it, and samples etcd while the child keeps its registrations alive.
func runSystem(ctx context.Context, cfg config, exe, sys string) (res result) {
	res.system = sys
	fail := func(err error) result {
		res.err = err
		return res
	}
	e, err := benchenv.StartEtcd(ctx, cfg.dir)
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err := e.Stop(); err != nil && res.err == nil {
			res.err = err
		}
	}()
	cli, err := newClient(e.URL)
	if err != nil {
		return fail(err)
	}
	defer cli.Close()

	w0, err := benchenv.Metric(watcherMetric)
	if err != nil {
		return fail(err)
	}
	cpu0, err := benchenv.CPUTime()
	if err != nil {
		return fail(err)
	}

	var left time.Duration = time.Hour
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	cmd := exec.CommandContext(ctx, exe,
		"-system", sys, "-etcd", e.URL,
		"-n", strconv.Itoa(cfg.n), "-concurrency", strconv.Itoa(cfg.concurrency),
		"-keepalive-window", cfg.window.String(), "-ttl", cfg.ttl.String(),
		"-timeout", left.String(),
	)
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

	reg, err := next("registered")
	if err != nil {
		return fail(err)
	}
	cpu1, err := benchenv.CPUTime()
	if err != nil {
		wait()
		return fail(err)
	}
	renew1, err := benchenv.Metric(renewedMetric)
	if err != nil {
		wait()
		return fail(err)
	}
	res.regWall, res.regCPU, res.etcdRegCPU = reg.RegWall, reg.RegCPU, cpu1-cpu0
	res.rss, res.heap, res.goroutines = reg.RSSGrowth, reg.HeapGrowth, reg.Goroutines

	done, err := next("done")
	if err != nil {
		return fail(err)
	}
	cpu2, err := benchenv.CPUTime()
	if err != nil {
		wait()
		return fail(err)
	}
	renew2, err := benchenv.Metric(renewedMetric)
	if err != nil {
		wait()
		return fail(err)
	}
	w2, err := benchenv.Metric(watcherMetric)
	if err != nil {
		wait()
		return fail(err)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	leases, err := cli.Leases(lctx)
	cancel()
	if err != nil {
		wait()
		return fail(fmt.Errorf("list leases: %w", err))
	}
	res.window, res.windowCPU, res.rssEnd = done.WindowWall, done.WindowCPU, done.RSSGrowthEnd
	res.etcdWindowCPU = cpu2 - cpu1
	res.renewals = renew2 - renew1
	res.watchers = w2 - w0
	res.leases = len(leases.Leases)
	if err := wait(); err != nil {
		return fail(err)
	}
	return res
}

func printTables(w io.Writer, cfg config, results []result) {
	mb := func(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
	rate := func(r result) float64 { return float64(cfg.n) / r.regWall.Seconds() }

	// The tables align right; names are padded to read left-aligned.
	isMuster := func(r result) bool { return r.system == sysMuster || r.system == sysMuster64 }
	width := len("system")
	for _, m := range results {
		width = max(width, len(m.system))
		for _, p := range results {
			if isMuster(m) && !isMuster(p) {
				width = max(width, len(m.system+" / "+p.system))
			}
		}
	}
	name := func(s string) string { return fmt.Sprintf("%-*s", width, s) }

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, name("system")+"\tN\treg/s\tRSS MB\tkeepalive CPU s\tetcd CPU s\tleases\twatchers\t")
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(tw, "%s\t%d\tFAILED\t-\t-\t-\t-\t-\t\n", name(r.system), cfg.n)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%d\t%.0f\t\n",
			name(r.system), cfg.n, rate(r), mb(r.rss), sec(r.windowCPU), sec(r.etcdWindowCPU), r.leases, r.watchers)
	}
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
	first := true
	for _, m := range results {
		if m.err != nil || !isMuster(m) {
			continue
		}
		for _, p := range results {
			if p.err != nil || isMuster(p) {
				continue
			}
			if first {
				fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t")
				first = false
			}
			fmt.Fprintf(tw, "%s\t\t%s\t%s\t%s\t%s\t%s\t%s\t\n", name(m.system+" / "+p.system),
				ratio(rate(m), rate(p)), ratio(float64(m.rss), float64(p.rss)),
				ratio(m.windowCPU.Seconds(), p.windowCPU.Seconds()),
				ratio(m.etcdWindowCPU.Seconds(), p.etcdWindowCPU.Seconds()),
				ratio(float64(m.leases), float64(p.leases)), ratio(m.watchers, p.watchers))
		}
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	rangeHdr := ""
	if cfg.count > 1 {
		rangeHdr = fmt.Sprintf("reg/s of %d runs\t", cfg.count)
	}
	fmt.Fprintln(tw, name("system")+"\treg wall s\treg CPU s\tetcd reg CPU s\tRSS end MB\theap MB\tgoroutines\trenewals/s\t"+rangeHdr)
	for _, r := range results {
		if r.err != nil {
			continue
		}
		renewRate := "-"
		if r.window >= time.Second {
			renewRate = fmt.Sprintf("%.1f", r.renewals/r.window.Seconds())
		}
		rng := ""
		if cfg.count > 1 {
			rng = fmt.Sprintf("%.0f..%.0f\t", r.rateMin, r.rateMax)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", name(r.system),
			sec(r.regWall), sec(r.regCPU), sec(r.etcdRegCPU), mb(r.rssEnd), mb(r.heap), r.goroutines, renewRate, rng)
	}
	tw.Flush()
	for _, r := range results {
		if r.err != nil {
			fmt.Fprintf(w, "\n%s FAILED: %v\n", r.system, r.err)
		}
	}
	fmt.Fprintf(w, "\n"+
		"reg/s: N / wall time from the first call until a count Get sees N keys; median of %d runs (RSS and\n"+
		"reg CPU are that run's). RSS MB: growth of the system's own process (VmRSS after GC) holding N\n"+
		"registrations. keepalive CPU s / etcd CPU s: user+sys CPU of that process / of etcd during the %v\n"+
		"window after the last run's registration. leases, watchers: in etcd at the end of that window.\n"+
		"Ratios: muster row / peer row (reg/s: higher is better; the others: lower is better).\n", cfg.count, cfg.window)
}

// median combines the runs of one system: the registration figures (reg/s,
// RSS, CPU, heap, goroutines) of the run with the median registration rate
// (of an even number of runs, the slower of the middle two), with the range
// of rates over all runs, and the keepalive-window figures of the last run,
// the only one with a window. A failed run is returned as it is.
func median(runs []result, n int) result {
	last := runs[len(runs)-1]
	if len(runs) == 1 || last.err != nil {
		last.runs = 1
		return last
	}
	byWall := slices.Clone(runs)
	slices.SortFunc(byWall, func(a, b result) int { return cmp.Compare(b.regWall, a.regWall) })
	m := byWall[(len(byWall)-1)/2]
	m.rateMin = float64(n) / byWall[0].regWall.Seconds()
	m.rateMax = float64(n) / byWall[len(byWall)-1].regWall.Seconds()
	m.runs = len(runs)
	m.window, m.windowCPU, m.etcdWindowCPU = last.window, last.windowCPU, last.etcdWindowCPU
	m.renewals, m.leases, m.watchers, m.rssEnd = last.renewals, last.leases, last.watchers, last.rssEnd
	return m
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
