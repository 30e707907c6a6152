package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDemoCharts runs `muster demo` and opens its dashboard: each backend
// gets its live charts (requests/s, errors, p50/p99 latency), fed over the
// event stream, and the rolling restart shows in the instances and the
// timeline.
func TestDemoCharts(t *testing.T) {
	ctx := browser(t)
	bin := filepath.Join(t.TempDir(), "muster")
	// Built in the core module, with its dependencies, not e2e's.
	build := exec.Command("go", "build", "-o", bin, "./cmd/muster")
	build.Dir = ".."
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building muster: %v", err)
	}
	dctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	demo := exec.CommandContext(dctx, bin, "demo", "--duration", "8s", "--backends", "3", "--rps", "150", "--timeout", "20s",
		"--ui-addr", "127.0.0.1:0", "--metrics-addr", "off")
	demo.Env = append(os.Environ(), "MUSTER_ENDPOINTS=", "MUSTER_NAMESPACE=")
	out, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	demo.Stderr = os.Stderr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = demo.Process.Kill(); _ = demo.Wait() }()
	re := regexp.MustCompile(`^demo: dashboard at (http://127\.0\.0\.1:[0-9]+/)$`)
	sc := bufio.NewScanner(out)
	url := ""
	for url == "" && sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		t.Fatal("the demo printed no dashboard URL")
	}
	go func() {
		for sc.Scan() { // drain the table
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 15*time.Second, "charts of three backends with a few seconds of data",
		`!document.getElementById('charts-pane').hidden && document.querySelectorAll('#charts .chart-card canvas').length >= 9 && S.stats.length >= 4`)
	// The charts draw: a canvas with the request rate is not blank.
	if !eval[bool](t, ctx, `(() => { const c = document.querySelector('#charts .chart-card canvas'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; return d.some(v => v !== 0); })()`) {
		t.Error("the request-rate chart is blank")
	}
	// The rolling restart: a replacement appears in the timeline.
	waitJS(t, ctx, 30*time.Second, "a replacement in the charts and a removal in the timeline",
		`document.querySelector('#charts [data-backend="b1#2"]') !== null && [...document.querySelectorAll('#timeline .kind')].some(e => e.textContent === 'removed')`)
	screenshot(t, ctx, "dashboard-demo.png")
}
