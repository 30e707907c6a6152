package e2e

import (
	"fmt"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
	"github.com/mustersd/muster/ui"
)

// TestScaleRender measures, in Chromium, the dashboard of 1,000 services
// with 10 instances each: the time from navigation to the first complete
// render, and from a Put to the new instance on the page. It logs figures
// and asserts nothing about them. It runs only with MUSTER_E2E_SCALE=1:
//
//	MUSTER_E2E_SCALE=1 go test -run TestScaleRender -v ./...
func TestScaleRender(t *testing.T) {
	if os.Getenv("MUSTER_E2E_SCALE") != "1" {
		t.Skip("set MUSTER_E2E_SCALE=1 to measure the page with 10,000 instances")
	}
	ctx := browser(t)
	m := etcdtest.Single(t)
	cli := m.Client(t)
	rctx := testx.Context(t, 2*time.Minute)
	var ops []clientv3.Op
	for s := range 1000 {
		for i := range 10 {
			addr := fmt.Sprintf("10.%d.%d.%d:8080", s/250, s%250, i+1)
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("services/svc-%04d.rpc/%s", s, addr),
				fmt.Sprintf(`{"Addr":%q,"Metadata":{"zone":"eu-1%c","version":"1.%d.0","tags":{"team":"t%d"}}}`, addr, 'a'+i%3, s%4, s%17)))
		}
	}
	for chunk := range slices.Chunk(ops, 128) {
		if _, err := cli.Txn(rctx).Then(chunk...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	dash, err := ui.New(cli)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(dash)
	defer func() { dash.Close(); ts.Close() }()
	time.Sleep(time.Second) // the first snapshot and the keys' leases

	start := time.Now()
	if err := chromedp.Do(ctx, chromedp.Navigate(ts.URL)); err != nil {
		t.Fatal(err)
	}
	took := waitJS(t, ctx, 60*time.Second, "300 of 1,000 services rendered",
		`document.querySelectorAll('#services tbody tr').length === 301 && document.querySelectorAll('#instances tbody tr').length === 200`)
	t.Logf("navigation to first complete render (300 of 1,000 service rows, 200 of 10,000 instance rows): %v (load %v)",
		time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))

	t.Logf("a render (services list unchanged, 200 instance rows) with layout, median of 7: %.0f ms", eval[float64](t, ctx,
		`(() => { const d = []; for (let i = 0; i < 7; i++) { const t0 = performance.now(); render(); void document.body.offsetHeight; d.push(performance.now() - t0); } d.sort((a, b) => a - b); return d[3]; })()`))
	var lat []time.Duration
	for i := range 10 {
		addr := fmt.Sprintf("10.9.9.%d:8080", i+1)
		t0 := time.Now()
		if _, err := cli.Put(rctx, "services/svc-0000.rpc/"+addr, fmt.Sprintf(`{"Addr":%q}`, addr)); err != nil {
			t.Fatal(err)
		}
		waitJS(t, ctx, 5*time.Second, "the new instance shown", instanceShown(addr))
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	t.Logf("Put -> instance on the page, 10 updates (includes the page's 100 ms render coalescing and 25 ms polling): min %v, median %v, max %v",
		lat[0].Round(time.Millisecond), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
	screenshot(t, ctx, "dashboard-10k.png")
}
