package muster

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// Option adjusts a Server or a client made by NewClient.
type Option func(*options)

type options struct {
	logger     *slog.Logger
	registerer prometheus.Registerer
	etcd       *clientv3.Client
	serverOpts []grpc.ServerOption
	dialOpts   []grpc.DialOption
	noSignals  bool
	getenv     func(string) string
}

func buildOptions(opts []Option) options {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// WithLogger makes the server or client log its state changes (registered,
// each shutdown step, etcd lost and back) to l. By default nothing is logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers the Prometheus collectors of the registration
// (server) or the discovery and balancing (client) with r, and those of the
// etcd client's member health monitor. By default there are none.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// WithEtcdClient makes the server or client use cli instead of connecting to
// Config.Etcd.Hosts. cli stays the caller's: Muster does not close it.
// Clients that share one etcd client share one etcd watch per service.
func WithEtcdClient(cli *clientv3.Client) Option { return func(o *options) { o.etcd = cli } }

// WithServerOptions passes options to grpc.NewServer, e.g. grpc.Creds for
// TLS (by default the server serves plaintext) or interceptors.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// WithDialOptions passes options to grpc.NewClient, after Muster's own, so
// they win: e.g. grpc.WithTransportCredentials (by default the client dials
// plaintext), grpc.WithDefaultServiceConfig for another balancing policy, or
// interceptors.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithoutSignals stops Server.Serve from handling SIGTERM and SIGINT; it then
// shuts down only when its context ends. For servers embedded in a larger
// program that handles signals itself.
func WithoutSignals() Option { return func(o *options) { o.noSignals = true } }
