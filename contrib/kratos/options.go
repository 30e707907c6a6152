package kratos

import (
	"log/slog"
	"time"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/registry"
)

// Option configures a Registry. Each option says whether the registrar
// side (Register, Deregister) or the discovery side (GetService, Watch)
// reads it.
type Option func(*options)

type options struct {
	namespace       string
	kratosNamespace string
	kratosKeys      bool
	formats         []string
	ttl             time.Duration
	logger          *slog.Logger
	registry        []registry.Option
	discovery       []discovery.Option
}

func buildOptions(opts []Option) options {
	o := options{formats: []string{"native"}}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// WithNamespace sets the namespace of Muster's own keys (both sides).
// Default "services", Muster's.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithKratosKeys makes Register also publish every instance in Kratos's own
// format, under the Kratos namespace and the same lease: the key and value
// Kratos's etcd registry (contrib/registry/etcd) writes, so that Kratos
// clients still on that registry find the instance. Default: Muster's keys
// only.
func WithKratosKeys() Option { return func(o *options) { o.kratosKeys = true } }

// WithKratosNamespace sets the namespace of Kratos-format keys, written
// with WithKratosKeys and read with WithFormats("kratos"): Kratos's
// etcd.Namespace option. Default "/microservices", Kratos's.
func WithKratosNamespace(ns string) Option { return func(o *options) { o.kratosNamespace = ns } }

// WithFormats sets the formats GetService and Watch read, and merge (one
// instance per address, the first format's winning): "native" (Muster's
// own, in the namespace of WithNamespace), "kratos" (what Kratos's etcd
// registry wrote, in the namespace of WithKratosNamespace), or any other
// format Muster reads ("go-zero", "kitex", "go-micro", ...: in its default
// namespace). A client moving to Muster ahead of its servers reads
// "native" and "kratos". Default "native".
func WithFormats(formats ...string) Option {
	return func(o *options) { o.formats = append([]string(nil), formats...) }
}

// WithTTL sets the TTL of the registrar's lease (registry.WithTTL).
func WithTTL(ttl time.Duration) Option { return func(o *options) { o.ttl = ttl } }

// WithLogger sets the logger of both sides, also handed to the registrar and
// the discovery subscriptions. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegistryOptions passes more options to registry.New (registrar side),
// e.g. registry.WithRegisterer, or registry.WithAlso to publish in other
// formats too.
func WithRegistryOptions(opts ...registry.Option) Option {
	return func(o *options) { o.registry = append(o.registry, opts...) }
}

// WithDiscoveryOptions passes more options to every discovery.Subscribe
// (discovery side), e.g. discovery.WithRegisterer. A discovery.WithNamespace
// here overrides the namespace of every format.
func WithDiscoveryOptions(opts ...discovery.Option) Option {
	return func(o *options) { o.discovery = append(o.discovery, opts...) }
}
