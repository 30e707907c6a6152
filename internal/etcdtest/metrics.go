package etcdtest

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Names of etcd's watch gauges (go.etcd.io/etcd/server/v3/storage/mvcc,
// registered with prometheus.DefaultRegisterer when that package is
// initialised).
const (
	watcherMetric     = "etcd_debugging_mvcc_watcher_total"
	watchStreamMetric = "etcd_debugging_mvcc_watch_stream_total"
)

// WatcherCount returns etcd's etcd_debugging_mvcc_watcher_total gauge, the
// number of watchers currently open on the server side, read from
// prometheus.DefaultGatherer in this process.
//
// The gauge is process-wide: it sums the watchers of every embedded member
// in the test binary (a client watch counts once, on the member serving
// it), so tests that assert on it should not run in parallel with other
// watch-using tests, and should compare against a value read before the
// watch was opened. Server-side counts change asynchronously after a
// client opens or cancels a watch; poll with a deadline.
func WatcherCount(t testing.TB) float64 {
	t.Helper()
	return gauge(t, watcherMetric)
}

// WatchStreamCount returns etcd's etcd_debugging_mvcc_watch_stream_total
// gauge (open gRPC watch streams; one client multiplexes its watches over
// one stream per context metadata). Like WatcherCount it is process-wide.
func WatchStreamCount(t testing.TB) float64 {
	t.Helper()
	return gauge(t, watchStreamMetric)
}

func gauge(t testing.TB, name string) float64 {
	t.Helper()
	// Gather may return an error next to usable families (for example when
	// an unrelated collector misbehaves); only a missing family is fatal.
	mfs, err := prometheus.DefaultGatherer.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue()
		}
		return sum
	}
	t.Fatalf("etcdtest: metric %s not found in prometheus.DefaultGatherer (gather error: %v)", name, err)
	return 0
}

// StableWatcherCount returns WatcherCount once it has stopped moving for
// 200ms: watchers of earlier tests are torn down asynchronously, so a
// baseline read at once may still count them.
func StableWatcherCount(t testing.TB) float64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	prev := WatcherCount(t)
	for {
		time.Sleep(200 * time.Millisecond)
		cur := WatcherCount(t)
		if cur == prev {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd watcher count never settled (last %v)", cur)
		}
		prev = cur
	}
}
