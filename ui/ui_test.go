package ui

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

func TestMain(m *testing.M) {
	healthInterval = 200 * time.Millisecond
	healthTimeout = 500 * time.Millisecond
	leaseInterval = 200 * time.Millisecond
	statsInterval = 100 * time.Millisecond
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

const xss = "<script>alert(1)</script>"

// put registers an instance of service at addr under the default namespace,
// attached to lease (0: none), with a tag carrying xss.
func put(t *testing.T, cli *clientv3.Client, service, addr string, lease clientv3.LeaseID) {
	t.Helper()
	val := fmt.Sprintf(`{"Addr":%q,"Metadata":{"zone":"eu-1a","version":"1.4.2","weight":7,"tags":{"note":%q}}}`, addr, xss)
	var opts []clientv3.OpOption
	if lease != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(lease))
	}
	if _, err := cli.Put(testx.Context(t, 5*time.Second), "services/"+service+"/"+addr, val, opts...); err != nil {
		t.Fatal(err)
	}
}

// startUI serves a dashboard of cli on an httptest server; both stop at the
// end of the test.
func startUI(t *testing.T, cli *clientv3.Client, opts ...Option) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(cli, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close() // ends the event streams, so that ts.Close does not wait for them
		ts.Close()
	})
	return s, ts
}

func getState(t *testing.T, base string) stateJSON {
	t.Helper()
	resp, err := http.Get(base + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/state: %s", resp.Status)
	}
	var st stateJSON
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// event is one server-sent event.
type event struct {
	id, name string
	data     []byte
	at       time.Time
}

// stream follows /api/events.
type stream struct {
	events chan event
	cancel context.CancelFunc
	done   chan struct{}
}

func openStream(t testing.TB, url string, header http.Header) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		cancel()
		resp.Body.Close()
		t.Fatalf("Content-Type %q", ct)
	}
	s := &stream{events: make(chan event, 1024), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		var ev event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ev.at = time.Now()
					select {
					case s.events <- ev:
					case <-ctx.Done():
						return
					}
				}
				ev = event{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.name = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = []byte(line[6:])
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

// next returns the first event named name within d, skipping others.
func (s *stream) next(t testing.TB, d time.Duration, name string, match func([]byte) bool) event {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case ev := <-s.events:
			if ev.name == name && (match == nil || match(ev.data)) {
				return ev
			}
		case <-timer.C:
			t.Fatalf("no %q event within %v", name, d)
		}
	}
}

func TestStateAndEvents(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := testx.Context(t, 30*time.Second)
	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	put(t, cli, "order.rpc", "127.0.0.1:8080", lease.ID)
	put(t, cli, "order.rpc", "127.0.0.1:8081", clientv3.NoLease)
	if _, err := cli.Put(ctx, "services/order.rpc/bad", "{not json"); err != nil {
		t.Fatal(err)
	}
	_, ts := startUI(t, cli)

	var st stateJSON
	defer func() {
		if t.Failed() {
			t.Logf("last state: %+v", st)
		}
	}()
	testx.Eventually(t, 10*time.Second, "state with both instances, their leases and TTLs", func() bool {
		st = getState(t, ts.URL)
		if len(st.Instances) != 2 || st.Instances[0].Lease == "" || st.Instances[1].Lease == "" {
			return false
		}
		_, ok := st.Leases[fmt.Sprintf("%x", int64(lease.ID))]
		return ok
	})
	t.Logf("%+v", st)
	in := st.Instances[0]
	if in.Service != "order.rpc" || in.Addr != "127.0.0.1:8080" || in.ID != "127.0.0.1:8080" || in.Zone != "eu-1a" ||
		in.Version != "1.4.2" || in.Weight != 7 || in.Tags["note"] != xss || !in.AtStart || in.CreateRevision == 0 {
		t.Errorf("instance %+v", in)
	}
	if l := st.Leases[in.Lease]; l.Granted != 30 || l.TTL <= 0 || l.TTL > 30 || l.At == 0 {
		t.Errorf("lease %s: %+v", in.Lease, l)
	}
	if st.Instances[1].Lease != "0" {
		t.Errorf("instance without lease: lease %q, want \"0\"", st.Instances[1].Lease)
	}
	if st.Skipped != 1 || st.Prefix != "services/" || st.Revision == 0 || st.Seq == 0 {
		t.Errorf("state: skipped %d prefix %q revision %d seq %d", st.Skipped, st.Prefix, st.Revision, st.Seq)
	}
	if st.Health.Stale || len(st.Health.Members) != 1 || !st.Health.Members[0].Leader || st.Health.DBSize == 0 {
		t.Errorf("health %+v", st.Health)
	}

	// The raw JSON never carries the tag as markup: encoding/json escapes
	// <, > and & (the page then sets it as text).
	resp, err := http.Get(ts.URL + "/api/state")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(raw), "<script>") || !strings.Contains(string(raw), `\u003cscript\u003ealert(1)\u003c/script\u003e`) {
		t.Errorf("/api/state carries the tag unescaped or not at all")
	}

	es := openStream(t, fmt.Sprintf("%s/api/events?since=%s.%d", ts.URL, st.Epoch, st.Seq), nil)
	added := time.Now()
	put(t, cli, "pay.rpc", "127.0.0.1:9090", lease.ID)
	ev := es.next(t, 2*time.Second, "delta", nil)
	var d deltaJSON
	if err := json.Unmarshal(ev.data, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Changes) != 1 || d.Changes[0].Kind != "added" || d.Changes[0].Instance.Service != "pay.rpc" || d.Revision <= st.Revision || d.Time == 0 {
		t.Fatalf("delta %s", ev.data)
	}
	if ev.id != fmt.Sprintf("%s.%d", st.Epoch, d.Seq) || len(d.Timeline) != 1 || d.Timeline[0].Kind != "added" || d.Timeline[0].Revision != d.Revision {
		t.Errorf("delta id %s: %s", ev.id, ev.data)
	}
	t.Logf("added: delta after %v", ev.at.Sub(added))
	// Its lease follows.
	es.next(t, 5*time.Second, "leases", func(b []byte) bool { return strings.Contains(string(b), `"pay.rpc"`) })

	// Updated, then removed.
	if _, err := cli.Put(ctx, "services/pay.rpc/127.0.0.1:9090", `{"Addr":"127.0.0.1:9090","Metadata":{"zone":"eu-1b"}}`); err != nil {
		t.Fatal(err)
	}
	es.next(t, 2*time.Second, "delta", func(b []byte) bool { return strings.Contains(string(b), `"kind":"updated"`) })
	if _, err := cli.Delete(ctx, "services/pay.rpc/127.0.0.1:9090"); err != nil {
		t.Fatal(err)
	}
	ev = es.next(t, 2*time.Second, "delta", func(b []byte) bool { return strings.Contains(string(b), `"kind":"removed"`) })
	if !strings.Contains(string(ev.data), `"pay.rpc"`) {
		t.Errorf("removal %s", ev.data)
	}
	st = getState(t, ts.URL)
	if len(st.Instances) != 2 || len(st.Timeline) < 4 {
		t.Errorf("after the removal: %d instances, timeline %+v", len(st.Instances), st.Timeline)
	}
}

func TestLeaseExpiryRemoves(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx := testx.Context(t, 30*time.Second)
	lease, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	_, ts := startUI(t, cli)
	es := openStream(t, ts.URL+"/api/events", nil)
	es.next(t, 5*time.Second, "state", nil)
	put(t, cli, "short.rpc", "127.0.0.1:7000", lease.ID)
	es.next(t, 2*time.Second, "delta", func(b []byte) bool { return strings.Contains(string(b), `"kind":"added"`) })
	// Not kept alive: the TTL counts down and the key leaves with it.
	ev := es.next(t, 10*time.Second, "delta", func(b []byte) bool { return strings.Contains(string(b), `"kind":"removed"`) })
	if !strings.Contains(string(ev.data), "short.rpc") {
		t.Errorf("removal %s", ev.data)
	}
}

func TestStaleWhileEtcdDown(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	put(t, cli, "order.rpc", "127.0.0.1:8080", clientv3.NoLease)
	_, ts := startUI(t, cli)
	testx.Eventually(t, 5*time.Second, "the instance in the state", func() bool { return len(getState(t, ts.URL).Instances) == 1 })
	es := openStream(t, ts.URL+"/api/events", nil)
	es.next(t, 5*time.Second, "health", func(b []byte) bool {
		return strings.Contains(string(b), `"stale":false`) && strings.Contains(string(b), `"leader":true`)
	})

	m.Stop()
	stopped := time.Now()
	ev := es.next(t, 10*time.Second, "health", func(b []byte) bool { return strings.Contains(string(b), `"stale":true`) })
	var h health
	if err := json.Unmarshal(ev.data, &h); err != nil {
		t.Fatal(err)
	}
	if h.Error == "" || h.StaleSince == 0 {
		t.Errorf("stale health %s", ev.data)
	}
	t.Logf("stale %v after etcd stopped", ev.at.Sub(stopped))
	st := getState(t, ts.URL)
	if !st.Health.Stale || len(st.Instances) != 1 {
		t.Errorf("while etcd is down: stale %v, %d instances (want the last known one)", st.Health.Stale, len(st.Instances))
	}

	m.Restart()
	es.next(t, 20*time.Second, "health", func(b []byte) bool { return strings.Contains(string(b), `"stale":false`) })
}

func TestResume(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	_, ts := startUI(t, cli)
	var st stateJSON
	testx.Eventually(t, 5*time.Second, "first snapshot", func() bool { st = getState(t, ts.URL); return st.Revision != 0 })
	put(t, cli, "a.rpc", "127.0.0.1:1", clientv3.NoLease)
	testx.Eventually(t, 5*time.Second, "a.rpc in the state", func() bool { return len(getState(t, ts.URL).Instances) == 1 })

	// Resuming from the first state's seq replays the delta of a.rpc, with
	// no whole state first.
	es := openStream(t, fmt.Sprintf("%s/api/events?since=%s.%d", ts.URL, st.Epoch, st.Seq), nil)
	ev := es.next(t, 2*time.Second, "delta", nil)
	if !strings.Contains(string(ev.data), "a.rpc") {
		t.Errorf("replayed %s", ev.data)
	}
	// Last-Event-ID (a browser reconnecting) wins over since; from a
	// sequence number the server never had, or one of another run of the
	// server, the whole state comes first.
	for _, id := range []string{st.Epoch + ".999999", "otherepoch." + fmt.Sprint(st.Seq)} {
		es2 := openStream(t, fmt.Sprintf("%s/api/events?since=%s.%d", ts.URL, st.Epoch, st.Seq), http.Header{"Last-Event-ID": {id}})
		first := es2.next(t, 2*time.Second, "state", nil)
		if !strings.Contains(string(first.data), "a.rpc") {
			t.Errorf("Last-Event-ID %s: state %s", id, first.data)
		}
	}
}

func TestPageAndMethods(t *testing.T) {
	m := etcdtest.Single(t)
	_, ts := startUI(t, m.Client(t))
	for path, want := range map[string]string{"/": "<title>Muster</title>", "/app.js": "textContent", "/style.css": ".banner"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, %d bytes", path, resp.Status, len(body))
		}
		if resp.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s: no Content-Security-Policy", path)
		}
	}
	if strings.Contains(readStatic(t, "app.js"), "innerHTML") {
		t.Error("app.js uses innerHTML")
	}
	resp, err := http.Post(ts.URL+"/api/state", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/state: %s, want 405", resp.Status)
	}

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/state", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err = http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var st stateJSON
	if err := json.NewDecoder(zr).Decode(&st); err != nil {
		t.Fatal(err)
	}
}

func TestOptions(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	if _, err := New(cli, WithFormat("go-zero")); err == nil || !strings.Contains(err.Error(), "format go-zero") {
		t.Errorf("WithFormat(go-zero): %v", err)
	}
	if _, err := New(cli, WithFormat("nope")); err == nil {
		t.Error("WithFormat(nope): no error")
	}
	if _, err := New(cli, WithNamespace("bad space")); err == nil {
		t.Error("WithNamespace(bad space): no error")
	}
	// Another namespace: only its keys show.
	put(t, cli, "order.rpc", "127.0.0.1:1", clientv3.NoLease)
	if _, err := cli.Put(testx.Context(t, 5*time.Second), "prod/pay.rpc/127.0.0.1:2", `{"Addr":"127.0.0.1:2"}`); err != nil {
		t.Fatal(err)
	}
	_, ts := startUI(t, cli, WithNamespace("prod"), WithFormat("native"))
	testx.Eventually(t, 5*time.Second, "pay.rpc alone in the state", func() bool {
		st := getState(t, ts.URL)
		return len(st.Instances) == 1 && st.Instances[0].Service == "pay.rpc" && st.Prefix == "prod/"
	})
}

func readStatic(t *testing.T, name string) string {
	b, err := staticFiles.ReadFile("static/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type fakeStats struct {
	mu sync.Mutex
	n  int64
}

func (f *fakeStats) BackendStats() []BackendStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return []BackendStats{{Backend: "b1", Addr: "127.0.0.1:1", State: "serving", RPS: 100, Total: f.n * 100, P50: time.Millisecond, P99: 3 * time.Millisecond}}
}

func TestStatsAndMetrics(t *testing.T) {
	m := etcdtest.Single(t)
	reg := prometheus.NewRegistry()
	_, ts := startUI(t, m.Client(t), WithStats(&fakeStats{}), WithRegisterer(reg))
	es := openStream(t, ts.URL+"/api/events", nil)
	ev := es.next(t, 5*time.Second, "stats", nil)
	var s statsSample
	if err := json.Unmarshal(ev.data, &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Backends) != 1 || s.Backends[0].Backend != "b1" || s.Backends[0].P99 != 3 || s.Backends[0].RPS != 100 {
		t.Errorf("stats %s", ev.data)
	}
	if st := getState(t, ts.URL); !st.HasStats || len(st.Stats) == 0 {
		t.Errorf("state: hasStats %v, %d samples", st.HasStats, len(st.Stats))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			switch {
			case m.Gauge != nil:
				got[mf.GetName()] += m.Gauge.GetValue()
			case m.Counter != nil:
				got[mf.GetName()] += m.Counter.GetValue()
			}
		}
	}
	if got["muster_ui_sse_clients"] != 1 || got["muster_ui_sse_events_total"] < 2 || got["muster_discovery_watchers"] < 1 {
		t.Errorf("metrics %v", got)
	}
}
