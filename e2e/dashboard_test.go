// Package e2e tests Muster from outside Go: it drives the dashboard in a real
// browser, headless Chromium through the DevTools protocol
// (github.com/chromedp/chromedp), and has a Node.js gRPC client
// (@grpc/grpc-js-xds, in node-xds/) resolve a service through the xDS
// server, both against an embedded etcd. It is a module of its own so that
// chromedp stays out of Muster's dependencies.
//
// The tests need /usr/bin/chromium (Debian's chromium package), Node.js, and
// `npm ci` run in node-xds/; .ci/run installs them. Without them the tests
// fail, unless MUSTER_E2E_OPTIONAL=1, when they skip. Screenshots go to
// testdata/out/ (ignored by git).
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/ui"
)

const (
	chromiumPath = "/usr/bin/chromium"
	xss          = "<script>alert(1)</script>"
	// childEnv, set to an etcd endpoint, makes the test binary a registering
	// process (see TestMain) instead of running the tests.
	childEnv = "MUSTER_E2E_CHILD_ETCD"
	// childAddr is the address the child registers, with a 2 s TTL.
	childAddr = "127.0.0.1:18082"
)

func TestMain(m *testing.M) {
	if ep := os.Getenv(childEnv); ep != "" {
		os.Exit(child(ep))
	}
	os.Exit(m.Run())
}

// child registers order.rpc at childAddr with a TTL of 2 s, says so on
// stdout, and waits to be killed.
func child(ep string) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r, err := registry.New(cli, registry.WithTTL(2*time.Second))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Register(ctx, endpoint.Endpoint{Service: "order.rpc", Addr: childAddr, Zone: "eu-1b", Version: "1.5.0"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("registered")
	select {} // until SIGKILL
}

// browser starts headless Chromium for t and returns its context.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("MUSTER_E2E_OPTIONAL") == "1" {
			t.Skipf("%s not found (MUSTER_E2E_OPTIONAL=1): install Debian's chromium package to run the browser tests", chromiumPath)
		}
		t.Fatalf("%s not found: install Debian's chromium package (apt-get install -y chromium), or set MUSTER_E2E_OPTIONAL=1 to skip", chromiumPath)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1100),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Start the browser now, so that its start-up time does not count
	// against the waits of the test.
	start := time.Now()
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	t.Logf("chromium started in %v", time.Since(start).Round(time.Millisecond))
	return ctx
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluating %s: %v", js, err)
	}
	return v
}

// waitJS polls a boolean JavaScript expression until it holds and returns
// how long that took.
func waitJS(t *testing.T, ctx context.Context, d time.Duration, what, js string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		if eval[bool](t, ctx, js) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// screenshot saves the page as testdata/out/name.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := filepath.Join("testdata", "out")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(path)
	t.Logf("screenshot: %s", abs)
}

// instanceShown is a JavaScript expression: a row of the instances table
// has the address.
func instanceShown(addr string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#instances tbody tr')].some(r => r.textContent.includes(%q))`, addr)
}

// TestDashboard opens the dashboard in Chromium against an embedded etcd and
// watches it follow the registry: a registered service shows; another
// instance appears within 2 s without a reload; a SIGKILLed process's
// instance disappears when its lease expires; a tag value holding a script
// shows as text; stopping etcd brings up the stale banner.
func TestDashboard(t *testing.T) {
	ctx := browser(t)
	m := etcdtest.Single(t)
	cli := m.Client(t)
	rctx := testx.Context(t, 60*time.Second)

	r1, err := registry.New(cli, registry.WithTTL(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	if err := r1.Register(rctx,
		endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:18080", Zone: "eu-1a", Version: "1.4.2", Weight: 20, Tags: map[string]string{"note": xss, "canary": "false"}},
		endpoint.Endpoint{Service: "pay.rpc", Addr: "127.0.0.1:19090", Zone: "eu-1b", Version: "2.0.1"},
	); err != nil {
		t.Fatal(err)
	}
	dash, err := ui.New(cli)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(dash)
	defer func() {
		dash.Close()
		ts.Close()
	}()

	var dialogs atomic.Int32
	if err := chromedp.Listen(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			dialogs.Add(1)
			go func() {
				_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			}()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(ts.URL)); err != nil {
		t.Fatal(err)
	}
	took := waitJS(t, ctx, 10*time.Second, "order.rpc and pay.rpc shown", `document.querySelector('#services [data-service="order.rpc"]') !== null && `+instanceShown("127.0.0.1:19090"))
	t.Logf("first render with the registered services: %v after navigation", took.Round(time.Millisecond))
	eval[bool](t, ctx, `window.__sameDocument = true`)

	// The tag renders as text: the cell's text is the tag's characters and
	// no script element came of it.
	tagText := eval[string](t, ctx, `[...document.querySelectorAll('#instances .tag')].map(e => e.textContent).find(s => s.startsWith('note=')) || ''`)
	if tagText != "note="+xss {
		t.Errorf("tag cell text %q, want %q", tagText, "note="+xss)
	}
	if n := eval[int](t, ctx, `document.querySelectorAll('main script').length`); n != 0 {
		t.Errorf("%d script elements inside the page's data", n)
	}

	// Another instance appears without a reload, within 2 s.
	r2, err := registry.New(cli, registry.WithTTL(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	start := time.Now()
	if err := r2.Register(rctx, endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:18081", Zone: "eu-1b", Version: "1.4.2"}); err != nil {
		t.Fatal(err)
	}
	took = waitJS(t, ctx, 2*time.Second-time.Since(start), "the new instance shown within 2 s", instanceShown("127.0.0.1:18081"))
	t.Logf("new instance shown %v after Register returned", took.Round(time.Millisecond))
	if !eval[bool](t, ctx, `window.__sameDocument === true`) {
		t.Error("the page was reloaded")
	}

	// A process registering with a 2 s TTL, SIGKILLed: its instance goes
	// when the lease expires.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+m.Endpoints()[0])
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "registered" {
		t.Fatalf("child: %q, %v", line, err)
	}
	waitJS(t, ctx, 2*time.Second, "the child's instance shown", instanceShown(childAddr))
	// Its TTL column shows a lease once read.
	waitJS(t, ctx, 5*time.Second, "the child's lease TTL shown", fmt.Sprintf(
		`[...document.querySelectorAll('#instances tbody tr')].some(r => r.textContent.includes(%q) && / \/ 2s$/.test(r.children[7].textContent))`, childAddr))
	screenshot(t, ctx, "dashboard.png")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	took = waitJS(t, ctx, 10*time.Second, "the killed process's instance gone", "!"+instanceShown(childAddr))
	t.Logf("SIGKILLed instance gone from the page %v after the kill (TTL 2s)", took.Round(time.Millisecond))
	if time.Since(killed) < time.Second {
		t.Errorf("the instance left %v after the kill, before its lease could expire", time.Since(killed))
	}
	if !eval[bool](t, ctx, instanceShown("127.0.0.1:18080")+" && "+instanceShown("127.0.0.1:18081")) {
		t.Error("the other instances left with it")
	}

	// The filter box narrows the services and instances.
	if err := chromedp.Do(ctx, chromedp.SendKeys("#filter", "pay")); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 2*time.Second, "the filter to leave pay.rpc alone",
		`document.querySelector('#services [data-service="order.rpc"]') === null && `+instanceShown("127.0.0.1:19090")+` && !`+instanceShown("127.0.0.1:18080"))
	eval[bool](t, ctx, `(() => { const f = document.getElementById('filter'); f.value = ''; f.dispatchEvent(new Event('input')); return true; })()`)
	waitJS(t, ctx, 2*time.Second, "the filter cleared", instanceShown("127.0.0.1:18080"))

	// etcd stops: the banner says the state is stale, and the last known
	// instances stay.
	if !eval[bool](t, ctx, `document.getElementById('stale').hidden`) {
		t.Error("stale banner shown while etcd runs")
	}
	m.Stop()
	took = waitJS(t, ctx, 10*time.Second, "the stale banner visible",
		`(() => { const b = document.getElementById('stale'); return !b.hidden && b.offsetHeight > 0 && b.textContent.includes('etcd unreachable'); })()`)
	t.Logf("stale banner shown %v after etcd stopped", took.Round(time.Millisecond))
	if !eval[bool](t, ctx, instanceShown("127.0.0.1:18080")+" && "+instanceShown("127.0.0.1:19090")) {
		t.Error("the last known instances left the page while etcd is down")
	}
	screenshot(t, ctx, "dashboard-stale.png")

	// etcd back: the banner goes.
	m.Restart()
	took = waitJS(t, ctx, 15*time.Second, "the stale banner hidden again", `document.getElementById('stale').hidden`)
	t.Logf("stale banner hidden %v after etcd restarted", took.Round(time.Millisecond))

	if n := dialogs.Load(); n != 0 {
		t.Errorf("%d JavaScript dialogs opened", n)
	}
}
