package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
)

func printHeader(w io.Writer, cfg config) {
	fmt.Fprintf(w, "load-balancing benchmark: %d echo backends on 127.0.0.1, open loop at %.0f RPC/s, %d measured RPCs per policy and scenario\n",
		backends, cfg.rps, cfg.rpcs)
	fmt.Fprintf(w, "in %d rounds of %d RPCs after %v of warm-up each; a round runs every policy once, starting one further along the list each time\n",
		cfg.rounds, cfg.perRound(), cfg.warmup)
	fmt.Fprintf(w, "host: %s %s/%s, %d CPUs, GOMAXPROCS %d; load average %s at the start\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), loadAvg())
	fmt.Fprintf(w, "modules: %s\n", moduleVersions())
	fmt.Fprintf(w, "backends: b0..b3 answer after %v; slow: b3 after %v; midway: b3 after %v from RPC %d of each round on; failing: b3 answers Unavailable to 1 call in %d\n\n",
		cfg.fast, cfg.slow, cfg.slow, cfg.perRound()/2, cfg.failEvery)
}

// stats summarises one run.
type stats struct {
	n, errs            int
	p50, p99, p999, mx time.Duration
	p99After           time.Duration // midway: the RPCs sent after the change
	toBad, routed      int           // RPCs that reached the bad backend / any backend (midway: after the change)
	badErrs            int           // errors answered by the bad backend
	tail, tailBad      int           // RPCs at or above the p99, and those of them that b3 served
	lag99              time.Duration // sender lag
	codes              map[codes.Code]int
	disturbed          bool // every try of the run was disturbed by the host
}

func summarise(r runResult, bad int) stats {
	s := stats{n: len(r.rpcs), codes: map[codes.Code]int{}}
	lat := make([]time.Duration, 0, len(r.rpcs))
	var latAfter, lag []time.Duration
	for _, c := range r.rpcs {
		lat = append(lat, c.lat)
		lag = append(lag, c.lag)
		if c.after {
			latAfter = append(latAfter, c.lat)
		}
		if c.code != codes.OK {
			s.errs++
			s.codes[c.code]++
			if c.backend == bad {
				s.badErrs++
			}
		}
		if r.scenario == scMidway && !c.after {
			continue
		}
		if c.backend >= 0 {
			s.routed++
			if c.backend == bad {
				s.toBad++
			}
		}
	}
	slices.Sort(lat)
	slices.Sort(latAfter)
	slices.Sort(lag)
	s.p50, s.p99, s.p999 = quantile(lat, 0.50), quantile(lat, 0.99), quantile(lat, 0.999)
	for _, c := range r.rpcs {
		if c.lat >= s.p99 {
			s.tail++
			if c.backend == bad {
				s.tailBad++
			}
		}
	}
	if len(lat) > 0 {
		s.mx = lat[len(lat)-1]
	}
	s.p99After = quantile(latAfter, 0.99)
	s.lag99 = quantile(lag, 0.99)
	return s
}

// quantile is the nearest-rank quantile q of sorted values.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// baseline is the p99 of the healthy runs of baselinePolicies, pooled,
// leaving out a run the host disturbed every time; 0 when none is left.
func baseline(all []runResult, maxLag time.Duration) (time.Duration, []string) {
	var lat []time.Duration
	var used []string
	for _, r := range all {
		if r.scenario == scHealthy && slices.Contains(baselinePolicies, r.policy) && !r.disturbed(maxLag) {
			used = append(used, r.policy)
			for _, c := range r.rpcs {
				lat = append(lat, c.lat)
			}
		}
	}
	slices.Sort(lat)
	return quantile(lat, 0.99), used
}

func printTables(w io.Writer, cfg config, f *fleet, all []runResult) {
	base, used := baseline(all, cfg.maxLag)
	if base > 0 {
		fmt.Fprintf(w, "baseline: p99 of the healthy runs of %s pooled = %s ms\n\n", strings.Join(used, " and "), ms(base))
	} else {
		fmt.Fprintf(w, "baseline: none (no undisturbed healthy run of round_robin or muster_p2c)\n\n")
	}
	ratio := func(d time.Duration) string {
		if base == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", float64(d)/float64(base))
	}

	sums := map[string]map[string]stats{}
	for _, sc := range cfg.scenarios {
		sums[sc] = map[string]stats{}
		var runs []runResult
		for _, r := range all {
			if r.scenario == sc {
				runs = append(runs, r)
			}
		}
		if len(runs) == 0 {
			continue
		}
		fmt.Fprintf(w, "scenario %s: %s\n", sc, describe(cfg, sc))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		head := fmt.Sprintf("%-26s", "policy") + "\tRPCs\terrors\terr %\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\tto b3\tb3 in tail\tp99/base\t"
		if sc == scMidway {
			head += "p99 after ms\t"
		}
		head += "lag max ms\truns\t"
		fmt.Fprintln(tw, head)
		for _, r := range runs {
			s := summarise(r, f.bad())
			s.disturbed = r.disturbed(cfg.maxLag)
			sums[sc][r.policy] = s
			share := "-"
			if s.routed > 0 {
				share = fmt.Sprintf("%.1f%%", 100*float64(s.toBad)/float64(s.routed))
			}
			line := fmt.Sprintf("%-26s\t%d\t%d\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t", r.policy, s.n, s.errs, 100*float64(s.errs)/float64(max(1, s.n)),
				ms(s.p50), ms(s.p99), ms(s.p999), ms(s.mx), share, fmt.Sprintf("%d/%d", s.tailBad, s.tail), ratio(s.p99))
			if sc == scMidway {
				line += ms(s.p99After) + "\t"
			}
			runs := fmt.Sprint(r.runs)
			if r.disturbed(cfg.maxLag) {
				runs += "!"
			}
			line += ms(r.maxLag) + "\t" + runs + "\t"
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
		for _, r := range runs {
			s := sums[sc][r.policy]
			if s.errs > 0 {
				var parts []string
				for c, k := range s.codes {
					parts = append(parts, fmt.Sprintf("%v %d", c, k))
				}
				slices.Sort(parts)
				fmt.Fprintf(w, "  %s errors: %s (%d of them answered by b3)\n", r.policy, strings.Join(parts, ", "), s.badErrs)
			}
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "Latency: from the send until the answer, failed RPCs included; percentiles by nearest rank.\n"+
		"to b3: share of the RPCs that reached a backend which reached b3 (midway: of those sent after b3 turned slow).\n"+
		"b3 in tail: of the RPCs at or above the p99, those b3 served; the rest of the tail is the other backends' and the host's.\n"+
		"p99/base: the run's p99 over the baseline. p99 after: midway, the p99 of the RPCs sent after b3 turned slow.\n"+
		"lag max: how late the latest send was behind its schedule, i.e. the longest stall of this process by the host\n"+
		"(it stalls the RPCs in flight too). runs: runs made, one per round plus reruns: a run with a send more than %v\n"+
		"late was disturbed and made again, up to %d times; ! marks a row with a round whose every run was disturbed\n"+
		"(the least disturbed is kept).\n",
		cfg.maxLag, cfg.tries)
	fmt.Fprintf(w, "load average %s at the end\n", loadAvg())

	printTargets(w, cfg, sums, base)
}

// printTargets checks the targets for muster_p2c: in the slow and
// midway scenarios, p99 within 1.3x of the healthy baseline and no worse
// than any peer's (round_robin, least_request_experimental, p2c_ewma).
func printTargets(w io.Writer, cfg config, sums map[string]map[string]stats, base time.Duration) {
	peers := []string{polRR, polLR, polGoZero}
	header := false
	for _, sc := range []string{scSlow, scMidway} {
		s, ok := sums[sc][polP2C]
		if !ok || base == 0 {
			continue
		}
		if !header {
			fmt.Fprintf(w, "\ntargets for muster_p2c (p99 <= 1.3x baseline, and <= every peer's p99 in the same scenario):\n")
			header = true
		}
		r := float64(s.p99) / float64(base)
		verdict := "met"
		if r > 1.3 {
			verdict = "MISSED"
		}
		var worse []string
		best, bestName := time.Duration(math.MaxInt64), ""
		for _, p := range peers {
			ps, ok := sums[sc][p]
			if !ok {
				continue
			}
			if ps.p99 < best {
				best, bestName = ps.p99, p
			}
			if ps.p99 < s.p99 {
				worse = append(worse, fmt.Sprintf("%s %s ms", p, ms(ps.p99)))
			}
		}
		peerVerdict := "met"
		if len(worse) > 0 {
			peerVerdict = "MISSED (better: " + strings.Join(worse, ", ") + ")"
		}
		bestText := ""
		if bestName != "" {
			bestText = fmt.Sprintf("; best peer %s %s ms", bestName, ms(best))
		}
		note := ""
		var disturbed []string
		for _, p := range append([]string{polP2C}, peers...) {
			if sums[sc][p].disturbed {
				disturbed = append(disturbed, p)
			}
		}
		if len(disturbed) > 0 {
			note = " (inconclusive: the runs of " + strings.Join(disturbed, ", ") + " were disturbed)"
		}
		fmt.Fprintf(w, "  %-8s p99 %s ms = %.2fx baseline: %s; vs peers: %s%s%s\n", sc, ms(s.p99), r, verdict, peerVerdict, bestText, note)
	}
}

func describe(cfg config, sc string) string {
	switch sc {
	case scHealthy:
		return fmt.Sprintf("all four backends answer after %v", cfg.fast)
	case scSlow:
		return fmt.Sprintf("b3 answers after %v, the others after %v", cfg.slow, cfg.fast)
	case scMidway:
		return fmt.Sprintf("all answer after %v; from RPC %d of each round's %d on, b3 answers after %v", cfg.fast, cfg.perRound()/2, cfg.perRound(), cfg.slow)
	case scFailing:
		return fmt.Sprintf("b3 answers Unavailable to 1 call in %d; all answer after %v", cfg.failEvery, cfg.fast)
	}
	return ""
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func moduleVersions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build info)"
	}
	want := []string{"github.com/zeromicro/go-zero", "google.golang.org/grpc"}
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
