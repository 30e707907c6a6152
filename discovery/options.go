package discovery

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/internal/keyfmt"
)

// Option configures a subscription. Subscriptions that share a Watcher share
// the options of the first one: its logger and Prometheus registerer.
type Option func(*options)

type options struct {
	namespace  string
	nsSet      bool
	format     string
	logger     *slog.Logger
	registerer prometheus.Registerer
}

func defaultOptions() options {
	return options{
		namespace: keyfmt.DefaultNamespace,
		format:    "native",
		logger:    slog.New(slog.DiscardHandler),
	}
}

// WithNamespace sets the key prefix services live under. Default: the
// format's (keyfmt.DefaultNamespaceOf): "services" for native, "" for go-zero
// and go-kit, "kitex/registry-etcd" for Kitex.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace, o.nsSet = ns, true } }

// WithFormat sets the format of the keys and values to read, by name.
// Default "native" (Muster's, which is also etcd naming's).
func WithFormat(name string) Option { return func(o *options) { o.format = name } }

// WithLogger sets the logger for state changes (watch restarted, etcd
// unreachable and back, malformed values). Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithRegisterer registers discovery's Prometheus collectors with r.
// Default: none.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// Timings. Variables so that tests can shorten them.
var (
	// listTimeout bounds one list of a prefix.
	listTimeout = 3 * time.Second
	// probeAfter is how long a client's watch stream may stay quiet before
	// Muster asks etcd for a progress notification on it.
	probeAfter = time.Second
	// stallAfter is how long a progress request on a quiet watch may go
	// unanswered before the watch is taken for stalled and opened again.
	stallAfter = 2 * time.Second
	// unreachableAfter is how long a quiet watch stream may go unanswered
	// before subscribers are told that etcd is unreachable.
	unreachableAfter = 3 * time.Second
	// backoffMin and backoffMax bound the backoff between relists.
	backoffMin = 50 * time.Millisecond
	backoffMax = time.Second
)
