package ui

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdtest"
)

// BenchmarkScale measures the dashboard of 1,000 services with 10 instances
// each, every instance on a lease of its own (10,000 leases), as processes
// register: the time to first byte and size of "/" and of /api/state (plain
// and gzipped), the first event of a new stream (the whole state), and the
// latency of an update from the Put returning to the "delta" event of an
// open stream. The loop measures GET /api/state. Figures are logged and
// reported; nothing is asserted about them.
//
//	go test -run '^$' -bench Scale -benchtime 5x ./ui/
func BenchmarkScale(b *testing.B) {
	const services, perService = 1000, 10
	m := etcdtest.Single(b)
	cli := m.Client(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := time.Now()
	leases := make([]clientv3.LeaseID, services*perService)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < len(leases); i += 16 {
				l, err := cli.Grant(ctx, 600)
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
				leases[i] = l.ID
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	var ops []clientv3.Op
	for s := range services {
		for i := range perService {
			addr := fmt.Sprintf("10.%d.%d.%d:8080", s/250, s%250, i+1)
			val := fmt.Sprintf(`{"Addr":%q,"Metadata":{"weight":10,"zone":"eu-1%c","version":"1.%d.0","tags":{"team":"t%d"}}}`, addr, 'a'+i%3, s%4, s%17)
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("services/svc-%04d.rpc/%s", s, addr), val, clientv3.WithLease(leases[s*perService+i])))
		}
	}
	for chunk := range slices.Chunk(ops, 128) {
		if _, err := cli.Txn(ctx).Then(chunk...).Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("setup: %d leases and keys in %v", len(leases), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	s, err := New(cli)
	if err != nil {
		b.Fatal(err)
	}
	ts := httptest.NewServer(s)
	defer func() {
		s.Close()
		ts.Close()
	}()
	for {
		s.mu.Lock()
		n := len(s.instances)
		s.mu.Unlock()
		if n == services*perService {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.Logf("dashboard holds all %d instances %v after New", services*perService, time.Since(start).Round(time.Millisecond))
	for {
		s.mu.Lock()
		pending, read := len(s.pending), 0
		for _, l := range s.leases {
			if !l.readAt.IsZero() {
				read++
			}
		}
		s.mu.Unlock()
		if pending == 0 && read == len(leases) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.Logf("every instance's lease found and its TTL read %v after New", time.Since(start).Round(time.Millisecond))

	get := func(path string, gz bool) (ttfb, total time.Duration, size int) {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+path, nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		t0 := time.Now()
		resp, err := http.DefaultTransport.RoundTrip(req) // no transparent gunzip: count wire bytes
		if err != nil {
			b.Fatal(err)
		}
		ttfb = time.Since(t0)
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return ttfb, time.Since(t0), int(n)
	}
	for _, c := range []struct {
		path string
		gz   bool
	}{{"/", false}, {"/app.js", false}, {"/api/state", false}, {"/api/state", true}} {
		ttfb, total, size := get(c.path, c.gz)
		b.Logf("GET %-10s gzip=%-5v: time to first byte %8v, complete %8v, %9d bytes", c.path, c.gz, ttfb.Round(10*time.Microsecond), total.Round(10*time.Microsecond), size)
	}

	// A new stream's first event is the whole state.
	es := openStream(b, ts.URL+"/api/events", nil)
	t0 := time.Now()
	ev := es.next(b, 30*time.Second, "state", nil)
	b.Logf("first event of a new stream (whole state): %d bytes, %v", len(ev.data), ev.at.Sub(t0).Round(time.Millisecond))

	// Update latency: Put returns -> delta event parsed.
	var lat []time.Duration
	for i := range 20 {
		key := fmt.Sprintf("services/svc-0000.rpc/10.9.9.%d:8080", i+1)
		t0 := time.Now()
		if _, err := cli.Put(ctx, key, fmt.Sprintf(`{"Addr":"10.9.9.%d:8080"}`, i+1)); err != nil {
			b.Fatal(err)
		}
		put := time.Since(t0)
		ev := es.next(b, 5*time.Second, "delta", nil)
		lat = append(lat, ev.at.Sub(t0)-put)
	}
	slices.Sort(lat)
	b.Logf("update latency (Put returned -> delta event received), 20 updates: min %v, median %v, max %v",
		lat[0].Round(10*time.Microsecond), lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))

	b.ResetTimer()
	var size int
	for b.Loop() {
		_, _, size = get("/api/state", false)
	}
	b.ReportMetric(float64(size), "state-bytes")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "update-median-ms")
}
