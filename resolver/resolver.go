package resolver

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/attributes"
	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// Scheme is the URI scheme of Muster targets.
const Scheme = "muster"

// Option configures a Builder.
type Option func(*options)

type options struct {
	namespace  string
	format     string
	logger     *slog.Logger
	registerer prometheus.Registerer
}

// WithNamespace sets the default namespace of targets. Default "services".
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithFormat sets the default key format of targets. Default "native".
func WithFormat(name string) Option { return func(o *options) { o.format = name } }

// WithLogger sets the logger of the resolvers and their watchers.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers the discovery collectors with r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// NewBuilder returns a resolver builder for scheme "muster" that reads etcd
// through cli. Use it with grpc.WithResolvers, or register it globally with
// Register.
func NewBuilder(cli *clientv3.Client, opts ...Option) grpcresolver.Builder {
	o := options{namespace: keyfmt.DefaultNamespace, format: "native", logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	return &builder{cli: cli, opts: o}
}

// Register registers a builder for scheme "muster" with gRPC's global
// registry. Call it at most once, at init time.
func Register(cli *clientv3.Client, opts ...Option) {
	grpcresolver.Register(NewBuilder(cli, opts...))
}

type builder struct {
	cli  *clientv3.Client
	opts options
}

func (b *builder) Scheme() string { return Scheme }

// Build subscribes to the target's service. It does not wait for etcd.
func (b *builder) Build(target grpcresolver.Target, cc grpcresolver.ClientConn, _ grpcresolver.BuildOptions) (grpcresolver.Resolver, error) {
	service, ns, format, err := ParseTarget(target, b.opts.namespace, b.opts.format)
	if err != nil {
		return nil, err
	}
	r := &etcdResolver{cc: cc, service: service}
	if err := join(fanKey{cli: b.cli, service: service, namespace: ns, format: format}, b.opts, r); err != nil {
		return nil, fmt.Errorf("muster resolver: %w", err)
	}
	return r, nil
}

// ParseTarget reads service, namespace and format from a target such as
// "muster:///order.rpc?namespace=prod&format=native"; ns and format are the
// defaults.
func ParseTarget(target grpcresolver.Target, ns, format string) (service, namespace, fmtName string, err error) {
	service = strings.TrimPrefix(target.URL.Path, "/")
	if service == "" {
		service = target.URL.Opaque
	}
	if target.URL.Host != "" {
		return "", "", "", fmt.Errorf("muster resolver: target %q: use muster:///<service> (three slashes); an authority is not supported", target.URL.String())
	}
	if err := endpoint.ValidateService(service); err != nil {
		return "", "", "", fmt.Errorf("muster resolver: target %q: %w", target.URL.String(), err)
	}
	q := target.URL.Query()
	for k := range q {
		if k != "namespace" && k != "format" {
			return "", "", "", fmt.Errorf("muster resolver: target %q: unknown parameter %q (known: namespace, format)", target.URL.String(), k)
		}
	}
	namespace, fmtName = ns, format
	if q.Has("namespace") {
		namespace = q.Get("namespace")
	}
	if q.Has("format") {
		fmtName = q.Get("format")
	}
	if _, err := keyfmt.Lookup(fmtName); err != nil {
		return "", "", "", fmt.Errorf("muster resolver: target %q: %w", target.URL.String(), err)
	}
	return service, namespace, fmtName, nil
}

// State converts a snapshot into the gRPC resolver state: one Endpoint per
// instance, with its metadata as attribute (read it with FromAttributes),
// and the same addresses, without metadata, in Addresses for policies that
// still read them.
func State(snap discovery.Snapshot) grpcresolver.State {
	st := grpcresolver.State{
		Endpoints: make([]grpcresolver.Endpoint, 0, len(snap.Endpoints)),
		Addresses: make([]grpcresolver.Address, 0, len(snap.Endpoints)),
	}
	for _, e := range snap.Endpoints {
		addr := grpcresolver.Address{Addr: e.Addr}
		st.Endpoints = append(st.Endpoints, grpcresolver.Endpoint{
			Addresses:  []grpcresolver.Address{addr},
			Attributes: attributes.New(attrKey{}, info{e}),
		})
		st.Addresses = append(st.Addresses, addr)
	}
	return st
}

type attrKey struct{}

// info wraps an endpoint as an attribute value; attributes compare values
// with Equal.
type info struct{ e endpoint.Endpoint }

func (i info) Equal(o any) bool {
	oi, ok := o.(info)
	return ok && endpoint.Equal(i.e, oi.e)
}

// FromAttributes returns the Muster endpoint behind a resolver.Endpoint's
// attributes.
func FromAttributes(a *attributes.Attributes) (endpoint.Endpoint, bool) {
	if a == nil {
		return endpoint.Endpoint{}, false
	}
	i, ok := a.Value(attrKey{}).(info)
	return i.e, ok
}

// Weight returns the instance's effective weight (endpoint.DefaultWeight when
// absent).
func Weight(a *attributes.Attributes) int {
	e, _ := FromAttributes(a)
	return e.EffectiveWeight()
}

// Zone returns the instance's zone, or "".
func Zone(a *attributes.Attributes) string {
	e, _ := FromAttributes(a)
	return e.Zone
}
