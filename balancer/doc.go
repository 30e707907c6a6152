// Package balancer is the home of Muster's gRPC load-balancing policies, one
// package each: p2c ("muster_p2c", power of two choices on peak-EWMA
// latency) and weighted ("muster_weighted", smooth weighted round robin on
// the registered weights). Both are built on gRPC's endpointsharding with a
// pick_first child per endpoint (health checking on), read the metadata
// the Muster resolvers attach to each endpoint, and can prefer the
// client's zone. Importing a policy's package registers it with gRPC.
package balancer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mustersd/muster/balancer/internal/lbutil"
)

// Collector returns the Prometheus collector of the Muster policies:
// muster_balancer_picks_total and muster_balancer_errors_total, per policy,
// ClientConn target and endpoint, summed over the live balancers of the
// process. Counting costs the pick path one atomic add.
func Collector() prometheus.Collector { return lbutil.Collector }
