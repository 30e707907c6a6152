package registry

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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
	formats    []keyfmt.Format
	backoffMin time.Duration
	backoffMax time.Duration
	opTimeout  time.Duration
}

func defaultOptions() options {
	return options{
		ttl:        DefaultTTL,
		namespace:  keyfmt.DefaultNamespace,
		logger:     slog.New(slog.DiscardHandler),
		formats:    []keyfmt.Format{keyfmt.Native},
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

// withFormats sets the formats every endpoint is written in. Unexported until
// the formats of other systems are public.
func withFormats(f ...keyfmt.Format) Option { return func(o *options) { o.formats = f } }

var _ = withFormats // used by tests and, later, by the migration options
