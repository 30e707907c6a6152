package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsOff is the value of --metrics-addr that serves no metrics.
const metricsOff = "off"

// newMetricsRegistry returns a Prometheus registry of the command's own
// (not the global one, which etcd fills when it runs embedded), holding the
// Go runtime and process collectors.
func newMetricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// metricsServer serves a registry at /metrics over HTTP.
type metricsServer struct {
	srv  *http.Server
	url  string        // http://host:port/metrics
	done chan struct{} // closed when Serve has returned
}

// serveMetrics listens on addr (flag names the flag that set it, for the
// error) and serves g at /metrics until close.
func serveMetrics(flag, addr string, g prometheus.Gatherer) (*metricsServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, failure(errors.New(listenError(flag, addr, err)))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	m := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		url:  fmt.Sprintf("http://%s/metrics", lis.Addr()),
		done: make(chan struct{}),
	}
	go func() {
		defer close(m.done)
		_ = m.srv.Serve(lis) // ErrServerClosed after close
	}()
	return m, nil
}

// close stops serving; a scrape in progress may finish within a second.
func (m *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.srv.Shutdown(ctx); err != nil {
		_ = m.srv.Close()
	}
	<-m.done
}
