package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/proxy"
)

// defaultProxyListen is where `muster proxy` serves etcd's clients.
const defaultProxyListen = "127.0.0.1:23790"

// proxyOptions are the flags of `muster proxy`.
type proxyOptions struct {
	listen      string
	metricsAddr string
}

func newProxyCmd(a *app) *cobra.Command {
	var o proxyOptions
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Serve etcd's API so that many watchers cost etcd one watch (experimental)",
		Long: `Serve etcd's gRPC API on --listen and forward it to the etcd of --endpoints,
so that etcd-protocol clients (etcd's naming resolver, go-zero, Muster's
resolver pointed at the proxy) watching the same keys cost etcd one watcher
per key range, whatever their number. EXPERIMENTAL; see docs/proxy.md.

Every read is forwarded to etcd as linearizable (there is no cache, and a
client's serializable Get is made linearizable). Watches are coalesced by
Muster; leases go through etcd's own lease proxy, which may keep a lease up
to twice its TTL after its last keepalive (etcd-io/etcd#13031).

Clients authenticate through the proxy with their own users; the proxy
passes each client's token on, so it takes no --user of its own.

Prometheus metrics (muster_proxy_*) are served at /metrics on
--metrics-addr, by default the --listen port + 1; 'off' turns them off.
Ctrl-C or SIGTERM stops the proxy: its clients' watches resume elsewhere (or
on its successor) from their last revision.`,
		Example: `  muster proxy --endpoints 10.0.0.2:2379,10.0.0.3:2379 --listen 0.0.0.0:23790
  ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23790 watch --prefix services/`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			return a.proxy(cmd.Context(), o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", defaultProxyListen, "host:port to serve etcd's clients on")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "host:port to serve Prometheus metrics on at /metrics, or 'off' (default the --listen port + 1)")
	return cmd
}

// addrs checks the flags and returns the listen and metrics addresses
// (metrics empty for none).
func (o proxyOptions) addrs() (listen, metrics string, err error) {
	host, port, err := parseListen("--listen", o.listen)
	if err != nil {
		return "", "", err
	}
	listen = net.JoinHostPort(host, strconv.Itoa(port))
	switch o.metricsAddr {
	case metricsOff:
	case "":
		if port == 65535 {
			return "", "", usageErrorf("--listen port 65535 leaves no port for the metrics listener; set --metrics-addr")
		}
		metrics = net.JoinHostPort(host, strconv.Itoa(port+1))
	default:
		mhost, mport, err := parseListen("--metrics-addr", o.metricsAddr)
		if err != nil {
			return "", "", err
		}
		metrics = net.JoinHostPort(mhost, strconv.Itoa(mport))
	}
	if metrics == listen {
		return "", "", usageErrorf("--metrics-addr %s: the same address as --listen", metrics)
	}
	return listen, metrics, nil
}

// proxy runs `muster proxy` until ctx ends.
func (a *app) proxy(ctx context.Context, o proxyOptions) error {
	listen, metricsAddr, err := o.addrs()
	if err != nil {
		return err
	}
	if a.global.user != "" || a.global.password != "" {
		return usageErrorf("--user/--password: muster proxy passes each client's own credentials on to etcd; give it none")
	}
	cfg, err := a.etcdConfig().ClientConfig()
	if err != nil {
		return failure(err)
	}
	cfg.DialOptions = append(cfg.DialOptions, proxy.DialOptions()...)
	cli, err := clientv3.New(cfg)
	if err != nil {
		return a.etcdError(err)
	}
	defer cli.Close()
	if err := etcdclient.Ping(ctx, cli); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return a.etcdError(err)
	}

	reg := newMetricsRegistry()
	p, err := proxy.New(cli, proxy.WithLogger(a.logger), proxy.WithRegisterer(reg))
	if err != nil {
		return failure(err)
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		_ = p.Close()
		return failure(errors.New(listenError("--listen", listen, err)))
	}
	if metricsAddr != "" {
		ms, err := serveMetrics("--metrics-addr", metricsAddr, reg)
		if err != nil {
			_ = lis.Close()
			_ = p.Close()
			return err
		}
		defer ms.close()
		fmt.Fprintf(a.stdout, "proxy: metrics at %s\n", ms.url)
	}
	fmt.Fprintf(a.stdout, "proxy: serving etcd's API on %s for etcd at %s (experimental)\n", lis.Addr(), strings.Join(a.endpointList(), ","))

	served := make(chan error, 1)
	go func() { served <- p.Serve(lis) }()
	select {
	case <-ctx.Done():
		_ = p.Close()
		<-served
		fmt.Fprintln(a.stdout, "proxy: stopped")
		return nil
	case err := <-served:
		_ = p.Close()
		return failure(fmt.Errorf("serve %s: %w", listen, err))
	}
}
