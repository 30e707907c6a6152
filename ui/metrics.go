package ui

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/internal/promx"
)

// metrics are a Server's collectors. Servers that share a Registerer share
// them (promx.Register), so their figures add up.
type metrics struct {
	reg        prometheus.Registerer
	clients    prometheus.Gauge
	events     *prometheus.CounterVec
	stale      prometheus.Gauge
	leaseReads prometheus.Counter
	keyReads   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reg: reg,
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_ui_sse_clients",
			Help: "Dashboard event streams (Server-Sent Events) open.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "muster_ui_sse_events_total",
			Help: "Events sent on the dashboard's event streams, by event: state, delta, leases, health, stats.",
		}, []string{"event"}),
		stale: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "muster_ui_stale",
			Help: "1 while the dashboard shows its last known state because etcd does not answer or the watch reports an error.",
		}),
		leaseReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "muster_ui_lease_reads_total",
			Help: "LeaseTimeToLive requests the dashboard sent to etcd.",
		}),
		keyReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "muster_ui_key_reads_total",
			Help: "Reads of the keys of new instances (for their leases) the dashboard sent to etcd, one per round.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.clients, err = promx.Register(reg, m.clients); err != nil {
		return nil, err
	}
	if m.events, err = promx.Register(reg, m.events); err != nil {
		return nil, err
	}
	if m.stale, err = promx.Register(reg, m.stale); err != nil {
		return nil, err
	}
	if m.leaseReads, err = promx.Register(reg, m.leaseReads); err != nil {
		return nil, err
	}
	if m.keyReads, err = promx.Register(reg, m.keyReads); err != nil {
		return nil, err
	}
	return m, nil
}
