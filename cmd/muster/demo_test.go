package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startDemo runs `muster demo` with args in-process, in the background; the
// returned channel delivers its exit code.
func startDemo(ctx context.Context, args ...string) (out, errOut *syncBuffer, done <-chan int) {
	out, errOut = &syncBuffer{}, &syncBuffer{}
	ch := make(chan int, 1)
	go func() {
		ch <- execute(ctx, append([]string{"demo"}, args...), out, errOut, func(string) string { return "" })
	}()
	return out, errOut, ch
}

// waitCode waits for the exit code of a demo.
func waitCode(t *testing.T, done <-chan int, timeout time.Duration, out, errOut *syncBuffer) int {
	t.Helper()
	select {
	case code := <-done:
		return code
	case <-time.After(timeout):
		t.Fatalf("demo did not end within %v\nstdout:\n%s\nstderr:\n%s", timeout, out.String(), errOut.String())
		return -1
	}
}

var summaryRE = regexp.MustCompile(`(?m)^demo: (interrupted: )?([0-9,]+) requests in ([0-9.]+)s, ([0-9,]+) failed; (.*)$`)

// TestDemo runs the demo in-process, short, against its embedded etcd: no
// request fails through the rolling restart, every backend is replaced, and
// /metrics serves Muster's metrics while it runs.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const rps = 100
	// A long --timeout: the test is about the restart failing no request,
	// not about latency on a busy machine.
	out, errOut, done := startDemo(ctx, "--duration", "6s", "--backends", "2", "--rps", strconv.Itoa(rps), "--timeout", "20s")
	desc := func() string { return "stdout:\n" + out.String() + "stderr:\n" + errOut.String() }

	// Scrape /metrics once the load runs.
	metricsRE := regexp.MustCompile(`demo: metrics at (http://127\.0\.0\.1:[0-9]+/metrics)\n`)
	waitFor(t, ctx, func() bool { return strings.Contains(out.String(), " all ") }, desc)
	m := metricsRE.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no metrics URL printed\n%s", desc())
	}
	body := scrape(t, m[1])
	for _, want := range []string{
		"muster_registry_lease_grants_total 2\n",                     // the registry, through muster.WithRegisterer
		`muster_discovery_endpoints{prefix="services/demo.echo/"} 2`, // the client's discovery
		`muster_demo_requests_total{backend="b1"} `,
		`muster_demo_request_duration_seconds_bucket{le="+Inf"} `,
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if t.Failed() {
		t.Fatalf("/metrics:\n%s", body)
	}

	if code := waitCode(t, done, 45*time.Second, out, errOut); code != 0 {
		t.Fatalf("exit code %d\n%s", code, desc())
	}
	stdout := out.String()
	checkDemoStderr(t, errOut.String())
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	last := lines[len(lines)-1]
	sm := summaryRE.FindStringSubmatch(last)
	if sm == nil || sm[1] != "" || sm[4] != "0" ||
		!strings.HasPrefix(sm[5], "2 backends restarted one at a time (muster_p2c, drain delay 1s, health checking on); p50 ") {
		t.Fatalf("last line %q is not the summary of a complete run without failures\n%s", last, desc())
	}
	n, _ := strconv.Atoi(strings.ReplaceAll(sm[2], ",", ""))
	secs, _ := strconv.ParseFloat(sm[3], 64)
	if secs < 6 || float64(n) < 0.8*rps*secs || float64(n) > 1.1*rps*secs+10 {
		t.Errorf("%d requests in %.1fs at --rps %d", n, secs, rps)
	}
	for _, want := range []string{
		"rolling restart: 2 backends, one at a time",
		"b1    leaving", "b1    1/5: health NOT_SERVING", "b1    2/5: lease revoked", "b1    5/5: stopped",
		"b1#2  joined at 127.0.0.1:", "b1#2  took its first request",
		"b2    leaving", "b2    5/5: stopped",
		"b2#2  joined at 127.0.0.1:", "b2#2  took its first request",
		"rolling restart done",
	} {
		if !strings.Contains(stdout, "s  "+want) {
			t.Errorf("no event %q", want)
		}
	}
	// The events come in order: b1 stops before its replacement joins, and
	// that one serves before b2 leaves.
	order := []string{"b1    leaving", "b1    5/5: stopped", "b1#2  joined", "b1#2  took its first request", "b2    leaving", "b2#2  took its first request", "rolling restart done"}
	for i := 1; i < len(order); i++ {
		if strings.Index(stdout, order[i-1]) > strings.Index(stdout, order[i]) {
			t.Errorf("%q printed after %q", order[i-1], order[i])
		}
	}
	// The last table shows the replacements only.
	tables := strings.Split(stdout, " backend ")
	final := tables[len(tables)-1]
	if !strings.Contains(final, " b1#2 ") || !strings.Contains(final, " b2#2 ") || strings.Contains(final, " b1 ") || strings.Contains(final, " b2 ") {
		t.Errorf("last table:\n%s", final)
	}
	if t.Failed() {
		t.Logf("%s", desc())
	}
}

// TestDemoInterrupt ends a demo in the middle of its rolling restart, as
// Ctrl-C does: the shutdown in progress finishes, no request fails, and the
// summary says the run was interrupted.
func TestDemoInterrupt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runCtx, interrupt := context.WithCancel(ctx)
	out, errOut, done := startDemo(runCtx, "--duration", "8s", "--backends", "2", "--rps", "100", "--drain-delay", "300ms", "--metrics-addr", "off", "--timeout", "20s")
	desc := func() string { return "stdout:\n" + out.String() + "stderr:\n" + errOut.String() }
	waitFor(t, ctx, func() bool { return strings.Contains(out.String(), "b1    leaving") }, desc)
	interrupt()
	begin := time.Now()
	if code := waitCode(t, done, 20*time.Second, out, errOut); code != 0 {
		t.Fatalf("exit code %d\n%s", code, desc())
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("took %v to end after the interrupt", took)
	}
	stdout := out.String()
	sm := summaryRE.FindStringSubmatch(stdout)
	if sm == nil || sm[1] != "interrupted: " || sm[4] != "0" || !strings.HasPrefix(sm[5], "0 of 2 backends restarted") {
		t.Fatalf("summary\n%s", desc())
	}
	if !strings.HasSuffix(stdout, sm[0]+"\n") {
		t.Errorf("the summary is not the last line\n%s", desc())
	}
	if strings.Contains(stdout, "metrics at") {
		t.Errorf("--metrics-addr off still serves metrics\n%s", desc())
	}
	checkDemoStderr(t, errOut.String())
}

// checkDemoStderr checks that the demo wrote nothing to stderr but the
// warnings of Muster's components (on a starved machine, discovery says
// when etcd has not answered for seconds).
func checkDemoStderr(t *testing.T, stderr string) {
	t.Helper()
	for _, l := range strings.Split(strings.TrimRight(stderr, "\n"), "\n") {
		if l != "" && !strings.Contains(l, " level=WARN ") {
			t.Errorf("stderr:\n%s", stderr)
			return
		}
	}
	if stderr != "" {
		t.Logf("stderr:\n%s", stderr)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s, %v", url, resp.Status, err)
	}
	return string(b)
}

func TestDemoUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--backends", "1"}, "muster demo: --backends 1: want 2..20"},
		{[]string{"--rps", "0"}, "muster demo: --rps 0: want 1..100000"},
		{[]string{"--duration", "500ms"}, "muster demo: --duration 500ms: want at least 1s"},
		{[]string{"--balancer", "random"}, `muster demo: --balancer "random"`},
		{[]string{"--metrics-addr", "nope"}, `muster demo: --metrics-addr "nope": want host:port`},
		{[]string{"--latency", "-1s"}, "muster demo: --latency -1s: want 0 or more and less than half --timeout (2s)"},
		{[]string{"--latency", "1s", "--timeout", "1.5s"}, "muster demo: --latency 1s: want 0 or more"},
		{[]string{"--timeout", "0s"}, "muster demo: --timeout 0s: want more than 0"},
		{[]string{"--drain-delay", "soon"}, `muster demo: invalid argument "soon" for "--drain-delay" flag: want a duration`},
		{[]string{"extra"}, `muster demo: unknown command "extra"`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			out, errOut, done := startDemo(context.Background(), tt.args...)
			code := waitCode(t, done, 10*time.Second, out, errOut)
			if code != exitUsage || !strings.HasPrefix(errOut.String(), tt.want) || out.String() != "" {
				t.Fatalf("code %d, stdout %q, stderr %q; want code 2 and %q", code, out.String(), errOut.String(), tt.want)
			}
		})
	}
}

func TestDrainDelayFlag(t *testing.T) {
	for in, want := range map[string]time.Duration{"-1": -1, "0": -1, "250ms": 250 * time.Millisecond, "1s": time.Second, "-2s": -2 * time.Second} {
		var v drainDelayValue
		if err := v.Set(in); err != nil || time.Duration(v) != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, time.Duration(v), err, want)
		}
		if o := (demoOptions{drainDelay: time.Duration(v)}); (o.drainConfig() > 0) != (want > 0) {
			t.Errorf("%q: Shutdown.DrainDelay %v", in, o.drainConfig())
		}
	}
	var v drainDelayValue
	if err := v.Set("1"); err == nil {
		t.Error("Set(\"1\") without a unit: no error")
	}
}

func TestLatencyHist(t *testing.T) {
	var h latencyHist
	if h.quantile(0.5) != 0 {
		t.Fatal("quantile of an empty histogram")
	}
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond) // 1µs .. 1ms
	}
	h.add(0)
	h.add(time.Hour) // above the last bucket
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {0.1, 100 * time.Microsecond}} {
		got := h.quantile(tt.q)
		if diff := float64(got-tt.want) / float64(tt.want); diff < -0.02 || diff > 0.02 {
			t.Errorf("quantile(%v) = %v, want %v ±2%%", tt.q, got, tt.want)
		}
	}
	if got := h.quantile(1); got < time.Minute {
		t.Errorf("quantile(1) = %v, want the last bucket", got)
	}
	h.reset()
	if h.n != 0 || h.quantile(0.5) != 0 {
		t.Fatal("reset")
	}
}

func TestDemoFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 4012: "4,012", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{
		410 * time.Microsecond: "0.41ms", 2300 * time.Microsecond: "2.3ms", 12 * time.Millisecond: "12ms",
		1500 * time.Millisecond: "1.50s",
	} {
		if got := formatLatency(d, true); got != want {
			t.Errorf("formatLatency(%v) = %q, want %q", d, got, want)
		}
	}
	if got := formatLatency(time.Second, false); got != "-" {
		t.Errorf("formatLatency without data = %q", got)
	}
}

func TestDemoTable(t *testing.T) {
	var buf syncBuffer
	p := &demoPrinter{w: &buf}
	p.table(4010*time.Millisecond, 2*time.Second, []demoRow{
		{label: "b1", addr: "127.0.0.1:1234", state: "serving", window: 200, total: 1500, ok: 200, p50: 410 * time.Microsecond, p99: 2300 * time.Microsecond},
		{label: "all", window: 200, total: 1500, errors: 1, ok: 200, p50: 410 * time.Microsecond, p99: 2300 * time.Microsecond},
	})
	want := "     4s  backend address               state     req/s    total errors      p50      p99\n" +
		"         b1      127.0.0.1:1234        serving     100    1,500      0   0.41ms    2.3ms\n" +
		"         all                                       100    1,500      1   0.41ms    2.3ms\n"
	if got := buf.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
}

// TestDemoStatic: the demo without etcd, the client given the backends'
// addresses, every replacement back on its predecessor's address: no
// request fails.
func TestDemoStatic(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, errOut, done := startDemo(ctx, "--static", "--duration", "6s", "--backends", "2", "--rps", "100", "--drain-delay", "300ms", "--metrics-addr", "off", "--timeout", "20s")
	desc := func() string { return "stdout:\n" + out.String() + "stderr:\n" + errOut.String() }
	if code := waitCode(t, done, 80*time.Second, out, errOut); code != 0 {
		t.Fatalf("exit code %d\n%s", code, desc())
	}
	stdout := out.String()
	if strings.Contains(stdout, "etcd ready") || !strings.Contains(stdout, "no etcd") {
		t.Fatalf("the static demo started etcd\n%s", desc())
	}
	sm := summaryRE.FindStringSubmatch(stdout)
	if sm == nil || sm[4] != "0" || !strings.HasPrefix(sm[5], "2 backends restarted") {
		t.Fatalf("summary\n%s", desc())
	}
	for _, w := range []string{"b1#2  joined at", "b2#2  joined at", "predecessor's address"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("no %q in the output\n%s", w, desc())
		}
	}
	checkDemoStderr(t, errOut.String())
}
