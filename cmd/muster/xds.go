package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/xds"
)

const (
	// defaultXDSListen is where `muster xds` serves ADS by default.
	defaultXDSListen = "127.0.0.1:18000"
	// defaultXDSMetrics is where it serves /metrics by default.
	defaultXDSMetrics = "127.0.0.1:18001"
)

// xdsOptions are the flags of `muster xds`.
type xdsOptions struct {
	listen      string
	metricsAddr string
	format      string
	policy      string
	linger      time.Duration
}

func newXDSCmd(a *app) *cobra.Command {
	var o xdsOptions
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Serve the registry to gRPC clients in any language over xDS",
		Long: `Serve the services registered in etcd over xDS (ADS, state of the world), so
that proxyless gRPC clients in any language resolve them: a client of
xds:///order.rpc gets a Listener, a RouteConfiguration, a Cluster and the
instances of order.rpc, grouped by zone, with their weights.

The server watches each service some client asks for once in etcd, however
many clients ask, and keeps serving the last known instances while etcd is
unreachable. Point clients at it with a bootstrap file:

  muster xds bootstrap --server 127.0.0.1:18000 > bootstrap.json
  GRPC_XDS_BOOTSTRAP=bootstrap.json ./my-client   # dials xds:///order.rpc

--policy picks the load balancing clients are told to use: muster_p2c (Go
clients that import Muster's balancer/p2c; round_robin for the others),
round_robin, or ring_hash (which follows the registered weights).

Prometheus metrics (clients connected, resources, pushes, push latency, etcd
watches) are served at /metrics on --metrics-addr; 'off' turns them off.`,
		Example: `  muster xds
  muster xds --listen 0.0.0.0:18000 --endpoints 10.0.0.2:2379,10.0.0.3:2379
  muster xds bootstrap --server xds.internal:18000 --zone eu-1a`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			return a.xds(cmd.Context(), o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", defaultXDSListen, "host:port to serve xDS (ADS) on")
	f.StringVar(&o.metricsAddr, "metrics-addr", defaultXDSMetrics, "host:port to serve Prometheus metrics on at /metrics, or 'off'")
	f.StringVar(&o.format, "format", "native", "key format to read: "+strings.Join(keyfmt.Names(), ", ")+"; --namespace then defaults to the format's own")
	f.StringVar(&o.policy, "policy", string(xds.PolicyP2C), "load balancing offered to clients: muster_p2c, round_robin or ring_hash")
	f.DurationVar(&o.linger, "linger", xds.DefaultLinger, "how long a service's etcd watch outlives its last client")
	cmd.AddCommand(newXDSBootstrapCmd())
	return cmd
}

func newXDSBootstrapCmd() *cobra.Command {
	var b xds.Bootstrap
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print the bootstrap JSON gRPC clients need to find the xDS server",
		Long: `Print the xDS bootstrap configuration that points gRPC clients at the xDS
server at --server: save it to a file and set GRPC_XDS_BOOTSTRAP to its path
(or put the JSON itself in GRPC_XDS_BOOTSTRAP_CONFIG).

It names one xDS server reached without TLS, speaking xDS v3, with
ignore_resource_deletion (a client keeps a Listener or Cluster the server
stops sending instead of failing its RPCs), and the client's node: --node-id
and, with --zone, its locality.`,
		Example: `  muster xds bootstrap --server 127.0.0.1:18000 > bootstrap.json
  muster xds bootstrap --server xds.internal:18000 --zone eu-1a --node-id order-client`,
		Args: cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			js, err := b.JSON()
			if err != nil {
				return usageErrorf("--server %q: want host:port", b.Server)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", js)
			return err
		}),
	}
	f := cmd.Flags()
	f.StringVar(&b.Server, "server", defaultXDSListen, "host:port of the xDS server (muster xds --listen)")
	f.StringVar(&b.Zone, "zone", "", "the client's zone (node locality)")
	f.StringVar(&b.NodeID, "node-id", xds.DefaultNodeID, "the client's node id, shown in the server's log")
	return cmd
}

func (a *app) xds(ctx context.Context, o xdsOptions) error {
	policy, err := xds.ParsePolicy(o.policy)
	if err != nil {
		return usageErrorf("--policy %q: want muster_p2c, round_robin or ring_hash", o.policy)
	}
	if o.linger < 0 {
		return usageErrorf("--linger %v: want 0 or more", o.linger)
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return usageErrorf("--listen %q: want host:port, e.g. %s", o.listen, defaultXDSListen)
	}
	if o.metricsAddr != metricsOff {
		if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil {
			return usageErrorf("--metrics-addr %q: want host:port, e.g. %s, or off", o.metricsAddr, defaultXDSMetrics)
		}
	}
	format, ns, err := a.formatAndNamespace(o.format)
	if err != nil {
		return err
	}

	cli, err := a.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	// Fail at once, in one line, when etcd is not there; once serving, the
	// server rides out etcd outages on its last snapshots.
	probe, cancel := context.WithTimeout(ctx, a.global.dialTimeout)
	_, err = cli.Get(probe, keyfmt.NamespacePrefix(ns), clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return a.etcdError(err)
	}

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return failure(errors.New(xdsListenError(o.listen, err)))
	}
	reg := newMetricsRegistry()
	srv, err := xds.New(cli,
		xds.WithLogger(a.logger), xds.WithRegisterer(reg),
		xds.WithNamespace(ns), xds.WithFormat(format.Name()),
		xds.WithPolicy(policy), xds.WithLinger(o.linger))
	if err != nil {
		lis.Close()
		return failure(err)
	}
	defer srv.Close()
	metricsNote := ""
	if o.metricsAddr != metricsOff {
		ms, err := serveMetrics("--metrics-addr", o.metricsAddr, reg)
		if err != nil {
			lis.Close()
			return err
		}
		defer ms.close()
		metricsNote = ", metrics at " + ms.url
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	fmt.Fprintf(a.stdout, "xDS server ready at %s (etcd %s, namespace %q, policy %s%s)\n",
		lis.Addr(), strings.Join(a.endpointList(), ","), ns, policy, metricsNote)
	fmt.Fprintf(a.stdout, "clients: muster xds bootstrap --server %s > bootstrap.json; GRPC_XDS_BOOTSTRAP=bootstrap.json, target xds:///SERVICE\n", lis.Addr())

	select {
	case <-ctx.Done():
		_ = srv.Close()
		if err := <-served; err != nil {
			return failure(err)
		}
		fmt.Fprintf(a.stdout, "xDS server stopped\n")
		return nil
	case err := <-served:
		return failure(err)
	}
}

// xdsListenError explains a failure to listen on --listen.
func xdsListenError(addr string, err error) string {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Sprintf("%s is in use; is another muster xds running? use --listen to pick another address", addr)
	}
	return fmt.Sprintf("cannot listen on %s (--listen): %v", addr, err)
}
