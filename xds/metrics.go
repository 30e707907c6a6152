package xds

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/internal/promx"
)

// metrics are the server's Prometheus collectors.
type metrics struct {
	streams     prometheus.Gauge
	resources   *prometheus.GaugeVec
	pushes      *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	pushLatency prometheus.Histogram
	watchers    prometheus.Gauge
}

// typeLabel is the value of the "type" label of a resource type URL.
func typeLabel(typeURL string) string {
	switch typeURL {
	case listenerType:
		return "listener"
	case routeType:
		return "route"
	case clusterType:
		return "cluster"
	case endpointType:
		return "endpoint"
	default:
		return "other"
	}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_xds_streams",
			Help: "ADS streams open, i.e. xDS clients connected.",
		}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "muster_xds_resources",
			Help: "xDS resources served, per type (listener, route, cluster, endpoint).",
		}, []string{"type"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "muster_xds_pushes_total",
			Help: "Discovery responses sent to xDS clients, per resource type.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "muster_xds_nacks_total",
			Help: "Discovery responses xDS clients rejected (NACKed), per resource type.",
		}, []string{"type"}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "muster_xds_push_latency_seconds",
			Help:    "Time from a new etcd snapshot of a service reaching the server to its assignment being set in the xDS cache (from where it is sent to every watching client).",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10), // 10µs .. 2.6s
		}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_xds_etcd_watchers",
			Help: "etcd watches the server holds: one per service some client asked for, whatever the number of clients.",
		}),
	}
	var err error
	if m.streams, err = promx.Register(reg, m.streams); err != nil {
		return nil, err
	}
	if m.resources, err = promx.Register(reg, m.resources); err != nil {
		return nil, err
	}
	if m.pushes, err = promx.Register(reg, m.pushes); err != nil {
		return nil, err
	}
	if m.nacks, err = promx.Register(reg, m.nacks); err != nil {
		return nil, err
	}
	if m.pushLatency, err = promx.Register(reg, m.pushLatency); err != nil {
		return nil, err
	}
	if m.watchers, err = promx.Register(reg, m.watchers); err != nil {
		return nil, err
	}
	for _, t := range []string{listenerType, routeType, clusterType, endpointType} {
		m.resources.WithLabelValues(typeLabel(t)).Add(0)
		m.pushes.WithLabelValues(typeLabel(t)).Add(0)
	}
	return m, nil
}
