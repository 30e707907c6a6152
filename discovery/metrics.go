package discovery

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/internal/promx"
)

// The collectors are shared by every watcher of the process and registered
// with each Registerer handed to WithRegisterer.
var (
	metricEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "muster_discovery_endpoints",
		Help: "Endpoints in the latest snapshot, by watched prefix.",
	}, []string{"prefix"})
	metricSnapshots = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "muster_discovery_snapshots_total",
		Help: "Snapshots published to subscribers, by watched prefix.",
	}, []string{"prefix"})
	metricRestarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "muster_discovery_watch_restarts_total",
		Help: "Times a watch broke (compaction, leader loss, closed stream) and the prefix was listed again.",
	}, []string{"prefix"})
	metricMalformed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "muster_discovery_malformed_values_total",
		Help: "Keys or values under a watched prefix that could not be decoded and were skipped.",
	}, []string{"prefix"})
	metricHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "muster_discovery_healthy",
		Help: "1 while the watcher of a prefix is in touch with etcd, 0 while it serves its last snapshot through an error.",
	}, []string{"prefix"})
	metricWatchers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "muster_discovery_watchers",
		Help: "Shared watchers (one etcd watch each) open in the process.",
	})
)

func registerMetrics(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{metricEndpoints, metricSnapshots, metricRestarts, metricMalformed, metricHealthy, metricWatchers} {
		if _, err := promx.Register(reg, c); err != nil {
			return err
		}
	}
	return nil
}

func deleteMetrics(prefix string) {
	for _, v := range []interface{ DeleteLabelValues(...string) bool }{metricEndpoints, metricSnapshots, metricRestarts, metricMalformed, metricHealthy} {
		v.DeleteLabelValues(prefix)
	}
}
