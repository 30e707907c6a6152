package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/ui"
)

const (
	// defaultUIAddr is where the dashboard is served by default.
	defaultUIAddr = "127.0.0.1:8700"
	// uiOff is the value of --ui-addr that serves no dashboard.
	uiOff = "off"
)

func newUICmd(a *app) *cobra.Command {
	listen := defaultUIAddr
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Serve the live dashboard of the registry",
		Long: `Serve Muster's dashboard, a read-only web page of the services registered
in etcd, until Ctrl-C: each service with its instance count, zones and
versions; each instance with its address, id, zone, weight, version, tags,
lease TTL left and age; a timeline of recent changes; and the health of the
etcd cluster (members, leader, revision, database size).

The page is updated live, within a second of a change in etcd, from one
watch of the whole namespace; it never makes the server poll etcd for the
instances. While etcd does not answer it keeps the last known state and says
it is stale. Lease TTLs are read with LeaseTimeToLive, at most 200 leases a
second; "age" is the time since the dashboard first saw a key (etcd keeps
no timestamps), shown as "≥" for keys there when it started.

Prometheus metrics (Go runtime, process, the dashboard's and its discovery
watcher's) are served at /metrics on the same address.

The global etcd flags say which etcd to show.`,
		Example: `  muster ui
  muster ui --listen 127.0.0.1:9000 --endpoints 10.0.0.2:2379,10.0.0.3:2379`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			if _, _, err := parseUIAddr("--listen", listen); err != nil {
				return err
			}
			return a.ui(cmd.Context(), listen)
		}),
	}
	cmd.Flags().StringVar(&listen, "listen", defaultUIAddr, "host:port to serve the dashboard and /metrics on")
	return cmd
}

// ui serves the dashboard on addr until ctx ends.
func (a *app) ui(ctx context.Context, addr string) error {
	cli, err := a.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	us, err := a.serveUI(cli, "--listen", addr, false, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "muster ui: dashboard at %s (etcd %s, namespace %s); metrics at %smetrics\nCtrl-C to stop.\n",
		us.url, strings.Join(a.endpointList(), ","), a.global.namespace, us.url)
	<-ctx.Done()
	us.close()
	return nil
}

// parseUIAddr checks a --ui-addr or --listen value: host:port with a port
// in 0..65535.
func parseUIAddr(flag, addr string) (string, int, error) {
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		orOff := ""
		if flag == "--ui-addr" {
			orOff = ", or " + uiOff
		}
		return "", 0, usageErrorf("%s %q: want host:port, e.g. %s%s", flag, addr, defaultUIAddr, orOff)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, usageErrorf("%s %q: port out of range 0..65535", flag, addr)
	}
	return host, port, nil
}

// uiServer is a dashboard served over HTTP, with /metrics beside it.
type uiServer struct {
	dash *ui.Server
	srv  *http.Server
	url  string        // http://host:port/
	done chan struct{} // closed when Serve has returned
}

// serveUI serves a dashboard of cli on addr, with /metrics on the same
// server (the Go runtime and process collectors, and the dashboard's and
// its watcher's, on a registry of its own). With fallback, a busy addr is
// replaced by a free port of the same host. opts are added to the
// dashboard's (e.g. ui.WithStats).
func (a *app) serveUI(cli *clientv3.Client, flag, addr string, fallback bool, reg *prometheus.Registry, opts ...ui.Option) (*uiServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil && fallback && errors.Is(err, syscall.EADDRINUSE) {
		host, _, _ := net.SplitHostPort(addr)
		lis, err = net.Listen("tcp", net.JoinHostPort(host, "0"))
	}
	if err != nil {
		return nil, failure(errors.New(listenError(flag, addr, err)))
	}
	if reg == nil {
		reg = newMetricsRegistry()
	}
	opts = append([]ui.Option{
		ui.WithLogger(a.logger),
		ui.WithRegisterer(reg),
		ui.WithNamespace(a.global.namespace),
	}, opts...)
	dash, err := ui.New(cli, opts...)
	if err != nil {
		lis.Close()
		return nil, failure(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/", dash)
	u := &uiServer{
		dash: dash,
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		url:  fmt.Sprintf("http://%s/", lis.Addr()),
		done: make(chan struct{}),
	}
	go func() {
		defer close(u.done)
		_ = u.srv.Serve(lis) // ErrServerClosed after close
	}()
	return u, nil
}

// close ends the dashboard's event streams and stops serving.
func (u *uiServer) close() {
	u.dash.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := u.srv.Shutdown(ctx); err != nil {
		_ = u.srv.Close()
	}
	<-u.done
}

// devUI returns the hook of `muster dev` that serves the dashboard at addr;
// with fallback (addr is the default), a busy port is replaced by a free
// one.
func (a *app) devUI(addr string, fallback bool) devHook {
	return func(_ context.Context, srv *devServer) (func(), error) {
		cli, err := etcdclient.New(etcdclient.Config{Endpoints: []string{srv.clientURL}, DialTimeout: a.global.dialTimeout})
		if err != nil {
			return nil, fmt.Errorf("dashboard: %w", err)
		}
		us, err := a.serveUI(cli, "--ui-addr", addr, fallback, nil)
		if err != nil {
			_ = cli.Close()
			return nil, err
		}
		fmt.Fprintf(srv.out, "  dashboard: %s\n\n", us.url)
		return func() {
			us.close()
			_ = cli.Close()
		}, nil
	}
}

// demoUIStats adapts the demo's statistics to the dashboard's charts.
type demoUIStats struct{ s *demoStats }

// BackendStats returns the rows of the table the demo printed last, once.
func (d demoUIStats) BackendStats() []ui.BackendStats {
	rows, window, ok := d.s.lastTable()
	if !ok {
		return nil
	}
	secs := max(window.Seconds(), 0.001)
	out := make([]ui.BackendStats, 0, len(rows))
	for _, r := range rows {
		out = append(out, ui.BackendStats{
			Backend: r.label, Addr: r.addr, State: r.state,
			RPS: float64(r.window) / secs, Errors: r.window - r.ok, Total: r.total,
			P50: r.p50, P99: r.p99,
		})
	}
	return out
}
