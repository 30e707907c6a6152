package registry

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/internal/promx"
)

type metrics struct {
	grants   prometheus.Counter
	heals    prometheus.Counter
	restores prometheus.Counter
	errors   *prometheus.CounterVec
	keys     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{}
	var err error
	if m.grants, err = promx.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "muster_registry_lease_grants_total",
		Help: "Leases granted by registrars, the first one included.",
	})); err != nil {
		return nil, err
	}
	if m.heals, err = promx.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "muster_registry_lease_heals_total",
		Help: "Leases granted again after a lease was lost, with every key put back.",
	})); err != nil {
		return nil, err
	}
	if m.restores, err = promx.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Name: "muster_registry_keys_restored_total",
		Help: "Keys put back after someone else deleted them while their lease lived.",
	})); err != nil {
		return nil, err
	}
	if m.errors, err = promx.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "muster_registry_errors_total",
		Help: "Failed etcd operations of registrars, by operation (grant, write, watch, revoke).",
	}, []string{"op"})); err != nil {
		return nil, err
	}
	if m.keys, err = promx.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "muster_registry_keys",
		Help: "Keys registrars want in etcd.",
	})); err != nil {
		return nil, err
	}
	return m, nil
}
