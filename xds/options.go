package xds

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/discovery"
)

// Policy names the load-balancing configuration the server puts in every
// Cluster it serves.
type Policy string

// The policies a Server can offer its clients.
const (
	// PolicyP2C offers Muster's "muster_p2c" policy (power of two choices on
	// peak-EWMA latency) to clients that have it registered (Go clients that
	// import github.com/mustersd/muster/balancer/p2c), as a TypedStruct in
	// Cluster.load_balancing_policy, with wrr_locality over round_robin as
	// the fallback for every other client (gRPC takes the first policy of
	// the list it knows). muster_p2c then balances over the endpoints of
	// every locality at once; as always it ignores weights, and its zone
	// preference does not apply, since endpoints that come through xDS do
	// not carry Muster's zone attribute. The default.
	PolicyP2C Policy = "muster_p2c"
	// PolicyRoundRobin is wrr_locality over round_robin, gRPC's default for
	// xDS: a locality (zone) is chosen in proportion to its weight (the sum
	// of its endpoints' weights), then its endpoints in turn, whatever
	// their own weights.
	PolicyRoundRobin Policy = "round_robin"
	// PolicyRingHash is ring_hash (xxHash): each endpoint owns a share of
	// the ring in proportion to its weight times its locality's, and an RPC
	// without a hash policy (Muster's routes have none) hashes at random,
	// so traffic splits by endpoint weight. The one policy built into gRPC
	// that honours the weights registered in etcd.
	PolicyRingHash Policy = "ring_hash"
)

// Policies lists the valid values of Policy.
func Policies() []Policy { return []Policy{PolicyP2C, PolicyRoundRobin, PolicyRingHash} }

// ParsePolicy returns the Policy called name.
func ParsePolicy(name string) (Policy, error) {
	for _, p := range Policies() {
		if string(p) == name {
			return p, nil
		}
	}
	return "", fmt.Errorf("xds: unknown policy %q: want muster_p2c, round_robin or ring_hash", name)
}

// DefaultLinger is how long a service's etcd watch outlives its last
// interested client by default.
const DefaultLinger = 30 * time.Second

// Option configures a Server.
type Option func(*options)

type options struct {
	logger     *slog.Logger
	registerer prometheus.Registerer
	discovery  []discovery.Option
	policy     Policy
	linger     time.Duration
}

func defaultOptions() options {
	return options{
		logger: slog.New(slog.DiscardHandler),
		policy: PolicyP2C,
		linger: DefaultLinger,
	}
}

// WithLogger sets the logger for clients coming and going, rejected
// configurations (NACKs), services watched and released, and etcd
// trouble. Default: discard.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithRegisterer registers the server's Prometheus collectors (and those of
// its discovery watchers) with r. Servers sharing a registerer share the
// collectors, and their values add up. Default: none; the global registry
// is never used unless passed here.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.registerer = r } }

// WithNamespace sets the etcd namespace services are read from; see
// discovery.WithNamespace. Default "services".
func WithNamespace(ns string) Option {
	return func(o *options) { o.discovery = append(o.discovery, discovery.WithNamespace(ns)) }
}

// WithFormat sets the format of the keys and values read from etcd; see
// discovery.WithFormat. Default "native".
func WithFormat(name string) Option {
	return func(o *options) { o.discovery = append(o.discovery, discovery.WithFormat(name)) }
}

// WithPolicy sets the load-balancing policy offered in every Cluster.
// Default PolicyP2C.
func WithPolicy(p Policy) Option { return func(o *options) { o.policy = p } }

// WithLinger sets how long the etcd watch of a service stays open after the
// last client asking for the service has gone, so that clients that
// reconnect (an xDS server restart, a rolling restart of the clients) find it
// warm. 0 releases it at once. Default DefaultLinger.
func WithLinger(d time.Duration) Option { return func(o *options) { o.linger = max(d, 0) } }
