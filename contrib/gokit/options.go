package gokit

import (
	"log/slog"
	"time"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/registry"
)

// DefaultTimeout bounds how long Registrar.Register and Registrar.Deregister
// wait for etcd.
const DefaultTimeout = 5 * time.Second

// Option configures an Instancer or a Registrar. Each option says which of
// the two reads it; the other ignores it.
type Option func(*options)

type options struct {
	logger      *slog.Logger
	timeout     time.Duration
	discovery   []discovery.Option
	registry    []registry.Option
	goKitPrefix string
}

func buildOptions(opts []Option) options {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// WithLogger sets the logger (Instancer and Registrar): etcd trouble and
// failed registrations. It is also handed to the discovery subscription and
// the registry. Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithTimeout bounds how long Register and Deregister wait for etcd
// (Registrar). A change that does not make it in time stays wanted and is
// made in the background as soon as etcd allows. Default DefaultTimeout (5s).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithDiscoveryOptions passes options to discovery.Subscribe (Instancer):
// discovery.WithNamespace, discovery.WithFormat (e.g. "go-kit" to read what
// go-kit's etcdv3 Registrar wrote).
func WithDiscoveryOptions(opts ...discovery.Option) Option {
	return func(o *options) { o.discovery = append(o.discovery, opts...) }
}

// WithRegistryOptions passes options to registry.New (Registrar):
// registry.WithTTL, registry.WithNamespace, registry.WithAlso.
func WithRegistryOptions(opts ...registry.Option) Option {
	return func(o *options) { o.registry = append(o.registry, opts...) }
}

// WithGoKitPrefix makes the Registrar also publish the instance the way
// go-kit's etcdv3 Registrar does, so that go-kit's etcdv3 Instancer on
// prefix finds it: key prefix + "host:port", value "host:port". prefix is
// the one go-kit's clients are configured with, e.g. "/services/order/".
func WithGoKitPrefix(prefix string) Option { return func(o *options) { o.goKitPrefix = prefix } }
