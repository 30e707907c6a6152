package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
	"github.com/mustersd/muster/registry"
)

// scrapeFamilies reads url and parses it with Prometheus's text parser.
func scrapeFamilies(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return mfs
}

// sum adds up the values of a family's series (0 if it is absent).
func sum(mfs map[string]*dto.MetricFamily, name string) float64 {
	var v float64
	if mf := mfs[name]; mf != nil {
		for _, m := range mf.Metric {
			switch {
			case m.Counter != nil:
				v += m.Counter.GetValue()
			case m.Gauge != nil:
				v += m.Gauge.GetValue()
			}
		}
	}
	return v
}

// TestUIMetrics serves the dashboard with /metrics beside it, as `muster ui`
// does, and checks that the page and /metrics are served, that /metrics
// parses with Prometheus's text parser, and that the counters move when a
// malformed value appears and when a registrar heals a revoked lease.
func TestUIMetrics(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := testx.Context(t, 60*time.Second)

	a := newApp(io.Discard, io.Discard, func(string) string { return "" })
	a.global.namespace = "services"
	reg := newMetricsRegistry()
	r, err := registry.New(cli, registry.WithTTL(5*time.Second), registry.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Register(ctx, endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:8080"}); err != nil {
		t.Fatal(err)
	}
	us, err := a.serveUI(cli, "--listen", "127.0.0.1:0", false, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer us.close()

	resp, err := http.Get(us.url)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "<title>Muster</title>") {
		t.Fatalf("GET %s: %s", us.url, page)
	}

	metricsURL := us.url + "metrics"
	var mfs map[string]*dto.MetricFamily
	testx.Eventually(t, 10*time.Second, "the watcher's first snapshot in /metrics", func() bool {
		mfs = scrapeFamilies(t, metricsURL)
		return sum(mfs, "muster_discovery_endpoints") == 1
	})
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "muster_ui_sse_clients", "muster_ui_stale",
		"muster_discovery_watchers", "muster_registry_lease_grants_total", "muster_registry_lease_heals_total"} {
		if mfs[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	malformed := sum(mfs, "muster_discovery_malformed_values_total")
	heals := sum(mfs, "muster_registry_lease_heals_total")

	// A malformed value moves the discovery counter.
	if _, err := cli.Put(ctx, "services/order.rpc/broken", "{not json"); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "muster_discovery_malformed_values_total to move", func() bool {
		return sum(scrapeFamilies(t, metricsURL), "muster_discovery_malformed_values_total") > malformed
	})

	// A revoked lease is healed, and the heal counted.
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(r.Status().LeaseID)); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 20*time.Second, "muster_registry_lease_heals_total to move", func() bool {
		return sum(scrapeFamilies(t, metricsURL), "muster_registry_lease_heals_total") > heals
	})

	// The event stream counts its client and its events.
	sctx, cancel := context.WithCancel(ctx)
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, us.url+"api/events", nil)
	sresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := sresp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 5*time.Second, "an SSE client and its events in /metrics", func() bool {
		mfs := scrapeFamilies(t, metricsURL)
		return sum(mfs, "muster_ui_sse_clients") == 1 && sum(mfs, "muster_ui_sse_events_total") >= 1
	})
	cancel()
	sresp.Body.Close()
}

// TestUICommand runs `muster ui` in-process against an embedded etcd: it
// prints its URL and serves the state of the registry until interrupted.
func TestUICommand(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	if _, err := cli.Put(testx.Context(t, 5*time.Second), "services/pay.rpc/127.0.0.1:9", `{"Addr":"127.0.0.1:9"}`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, errOut := &syncBuffer{}, &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- execute(ctx, []string{"ui", "--listen", "127.0.0.1:0", "--endpoints", m.Endpoints()[0]}, out, errOut, func(string) string { return "" })
	}()
	re := regexp.MustCompile(`^muster ui: dashboard at (http://127\.0\.0\.1:[0-9]+/) \(etcd 127\.0\.0\.1:[0-9]+, namespace services\); metrics at http://127\.0\.0\.1:[0-9]+/metrics\n`)
	var url string
	testx.Eventually(t, 20*time.Second, "muster ui to print its URL", func() bool {
		if mm := re.FindStringSubmatch(out.String()); mm != nil {
			url = mm[1]
			return true
		}
		return false
	})
	testx.Eventually(t, 10*time.Second, "pay.rpc in /api/state", func() bool {
		resp, err := http.Get(url + "api/state")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Instances []struct{ Service string } `json:"instances"`
		}
		return json.NewDecoder(resp.Body).Decode(&st) == nil && len(st.Instances) == 1 && st.Instances[0].Service == "pay.rpc"
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit code %d; stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("muster ui did not stop")
	}

	r := runMuster(t, "ui", "--listen", "nope")
	if r.code != exitUsage || !strings.Contains(r.stderr, `muster ui: --listen "nope": want host:port`) {
		t.Errorf("bad --listen: code %d, stderr %q", r.code, r.stderr)
	}
}
