package registry

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// Defaults and bounds of the options.
const (
	DefaultTTL = 10 * time.Second
	MinTTL     = 2 * time.Second
)

// Option configures a Registrar.
type Option func(*options)

type options struct {
	ttl        time.Duration
	namespace  string
	logger     *slog.Logger
	registerer prometheus.Registerer
	also       []Also
	backoffMin time.Duration
	backoffMax time.Duration
	opTimeout  time.Duration
}

func defaultOptions() options {
	return options{
		ttl:        DefaultTTL,
		namespace:  keyfmt.DefaultNamespace,
		logger:     slog.New(slog.DiscardHandler),
		backoffMin: 50 * time.Millisecond,
		backoffMax: time.Second,
		opTimeout:  5 * time.Second,
	}
}

func (o *options) validate() error {
	if o.ttl < MinTTL {
		return fmt.Errorf("registry: TTL %v is below the minimum %v", o.ttl, MinTTL)
	}
	if o.ttl%time.Second != 0 {
		return fmt.Errorf("registry: TTL %v is not a whole number of seconds (etcd leases count seconds)", o.ttl)
	}
	if err := keyfmt.ValidateNamespace(o.namespace); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	for _, a := range o.also {
		if _, err := keyfmt.Lookup(a.Format); err != nil {
			return fmt.Errorf("registry: also: %w", err)
		}
		if err := keyfmt.ValidateNamespace(a.Namespace); err != nil {
			return fmt.Errorf("registry: also %s: %w", a.Format, err)
		}
		if a.Service != "" {
			if err := endpoint.ValidateService(a.Service); err != nil {
				return fmt.Errorf("registry: also %s: %w", a.Format, err)
			}
		}
	}
	if o.logger == nil {
		return fmt.Errorf("registry: nil logger")
	}
	if o.backoffMin <= 0 || o.backoffMax < o.backoffMin {
		return fmt.Errorf("registry: backoff %v..%v is not a valid range", o.backoffMin, o.backoffMax)
	}
	return nil
}

// WithTTL sets the lease TTL: how long the endpoints outlive a process that
// dies without closing its registrar. It is a whole number of seconds, at
// least MinTTL. Default DefaultTTL (10s).
func WithTTL(ttl time.Duration) Option { return func(o *options) { o.ttl = ttl } }

// WithNamespace sets the key prefix under which endpoints are written.
// Default "services", giving keys "services/<service>/<id>".
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithLogger sets the logger for state changes (lease granted, lost, healed;
// keys restored). Default: discard.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithRegisterer registers the registrar's Prometheus collectors with r.
// Registrars sharing one Registerer share the collectors. Default: none.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// WithBackoff sets the bounds of the jittered exponential backoff between
// attempts to heal (grant a lease, write keys). Default 50ms to 1s, so that
// registrations are back within about a second of etcd's return.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

// Also is one more place where every endpoint is published, in another
// system's format, so that that system's clients find Muster's servers
// during a migration.
type Also struct {
	// Format is the format's name: "go-zero", "kitex", "go-kit", or
	// "native" (for a second namespace).
	Format string
	// Namespace is the key prefix; "" means the format's default
	// (keyfmt.DefaultNamespaceOf): none for go-zero and go-kit,
	// "kitex/registry-etcd" for Kitex.
	Namespace string
	// Service is the name the other system knows the service by; "" means
	// the endpoint's own.
	Service string
}

// ParseAlso reads an Also written as FORMAT[:KEY], where KEY is what the
// other system is configured with: go-zero's Etcd.Key ("order.rpc",
// "dev/order.rpc"), Kitex's service name, or go-kit's prefix
// ("/services/order"). The part of KEY after its last '/' is the service
// name, the part before it the namespace.
func ParseAlso(s string) (Also, error) {
	format, key, _ := strings.Cut(s, ":")
	f, err := keyfmt.Lookup(format)
	if err != nil || format == "" {
		return Also{}, fmt.Errorf("registry: also %q: want FORMAT[:KEY], FORMAT one of %s", s, strings.Join(keyfmt.Names(), ", "))
	}
	a := Also{Format: f.Name()}
	if key == "" {
		return a, nil
	}
	key = strings.TrimSuffix(key, "/")
	if i := strings.LastIndex(key, "/"); i >= 0 {
		a.Namespace, a.Service = key[:i], key[i+1:]
		if a.Namespace == "" {
			a.Namespace = "/" // go-kit's "/order": a key beginning with '/'
		}
	} else {
		a.Service = key
	}
	if err := endpoint.ValidateService(a.Service); err != nil {
		return Also{}, fmt.Errorf("registry: also %q: %w", s, err)
	}
	return a, nil
}

// WithAlso publishes every endpoint, under the same lease, in each of the
// given formats and places besides Muster's own, e.g.
// Also{Format: "go-zero"} so that go-zero clients configured with
// Etcd.Key = the service name find Muster's servers.
func WithAlso(also ...Also) Option { return func(o *options) { o.also = append(o.also, also...) } }
