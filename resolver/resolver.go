package resolver

import (
	"fmt"
	"log/slog"
	"slices"
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
	nsSet      bool
	format     string
	logger     *slog.Logger
	registerer prometheus.Registerer
}

// WithNamespace sets the default namespace of targets. Default: each
// format's own (keyfmt.DefaultNamespaceOf): "services" for native.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace, o.nsSet = ns, true } }

// WithFormat sets the default key format of targets, or a comma-separated
// list of formats whose instances are merged: "native,go-zero". Default
// "native".
func WithFormat(name string) Option { return func(o *options) { o.format = name } }

// WithLogger sets the logger of the resolvers and their watchers.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers the discovery collectors with r.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// NewBuilder returns a resolver builder for scheme "muster" that reads etcd
// through cli. Use it with grpc.WithResolvers, or register it globally with
// Register.
func NewBuilder(cli *clientv3.Client, opts ...Option) grpcresolver.Builder {
	o := options{format: "native", logger: slog.New(slog.DiscardHandler)}
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
	t, err := ParseTarget(target)
	if err != nil {
		return nil, err
	}
	if !t.NamespaceSet && b.opts.nsSet {
		t.Namespace, t.NamespaceSet = b.opts.namespace, true
	}
	if len(t.Formats) == 0 {
		if t.Formats, err = parseFormats(b.opts.format); err != nil {
			return nil, fmt.Errorf("muster resolver: %w", err)
		}
	}
	r := &etcdResolver{cc: cc, service: t.Service}
	key := fanKey{cli: b.cli, service: t.Service, namespace: t.Namespace, nsSet: t.NamespaceSet, formats: strings.Join(t.Formats, ",")}
	if err := join(key, b.opts, r); err != nil {
		return nil, fmt.Errorf("muster resolver: %w", err)
	}
	return r, nil
}

// Target is a parsed Muster target:
//
//	muster:///<service>[?namespace=<ns>][&format=<format>[,<format>...]]
//
// e.g. "muster:///order.rpc", "muster:///order.rpc?namespace=prod", or
// "muster:///order.rpc?format=native,go-zero" for a service whose instances
// are registered partly by Muster and partly by go-zero (during a
// migration): the instances of every format are merged, one per address.
type Target struct {
	// Service is the service name.
	Service string
	// Namespace is the target's namespace, when NamespaceSet.
	Namespace string
	// NamespaceSet says whether the target names a namespace; without one,
	// the builder's (WithNamespace) or else each format's default applies.
	NamespaceSet bool
	// Formats are the canonical names of the formats to read; empty means
	// the builder's (WithFormat).
	Formats []string
}

// ParseTarget reads a Muster target; see Target for its syntax.
func ParseTarget(target grpcresolver.Target) (Target, error) {
	u := target.URL
	service := strings.TrimPrefix(u.Path, "/")
	if service == "" {
		service = u.Opaque
	}
	if u.Host != "" {
		return Target{}, fmt.Errorf("muster resolver: target %q: use muster:///<service> (three slashes); an authority is not supported", u.String())
	}
	if err := endpoint.ValidateService(service); err != nil {
		return Target{}, fmt.Errorf("muster resolver: target %q: %w", u.String(), err)
	}
	t := Target{Service: service}
	q := u.Query()
	for k := range q {
		if k != "namespace" && k != "format" {
			return Target{}, fmt.Errorf("muster resolver: target %q: unknown parameter %q (known: namespace, format)", u.String(), k)
		}
	}
	if q.Has("namespace") {
		t.Namespace, t.NamespaceSet = q.Get("namespace"), true
		if err := keyfmt.ValidateNamespace(t.Namespace); err != nil {
			return Target{}, fmt.Errorf("muster resolver: target %q: %w", u.String(), err)
		}
	}
	if q.Has("format") {
		fs, err := parseFormats(q.Get("format"))
		if err != nil {
			return Target{}, fmt.Errorf("muster resolver: target %q: %w", u.String(), err)
		}
		t.Formats = fs
	}
	return t, nil
}

// parseFormats reads a comma-separated list of format names into canonical
// names, without duplicates.
func parseFormats(list string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(list, ",") {
		if strings.TrimSpace(name) == "" {
			return nil, fmt.Errorf("format list %q has an empty name", list)
		}
		f, err := keyfmt.Lookup(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, f.Name()) {
			out = append(out, f.Name())
		}
	}
	return out, nil
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
