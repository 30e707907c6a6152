package resolver

import (
	"slices"

	grpcresolver "google.golang.org/grpc/resolver"

	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
)

// StaticScheme is the scheme of the builder NewStaticBuilder returns.
const StaticScheme = "muster-static"

// NewStaticBuilder returns a resolver builder, for scheme "muster-static",
// that resolves every target to eps, with the same attributes as endpoints
// found in etcd (see State), so that balancers read weights and zones the
// same way. It is for clients without etcd: local development, tests, a
// fixed fleet. Use it with grpc.WithResolvers and the target
// "muster-static:///<service>".
func NewStaticBuilder(eps []endpoint.Endpoint) grpcresolver.Builder {
	eps = slices.Clone(eps)
	for i := range eps {
		eps[i] = eps[i].Normalize()
	}
	endpoint.Sort(eps)
	return staticBuilder{eps: eps}
}

type staticBuilder struct{ eps []endpoint.Endpoint }

func (staticBuilder) Scheme() string { return StaticScheme }

func (b staticBuilder) Build(_ grpcresolver.Target, cc grpcresolver.ClientConn, _ grpcresolver.BuildOptions) (grpcresolver.Resolver, error) {
	// The set never changes, so there is nothing to do when the policy
	// rejects it or asks for a fresh resolution: the error UpdateState may
	// return is the policy's to report.
	_ = cc.UpdateState(State(discovery.Snapshot{Endpoints: b.eps}))
	return staticResolver{}, nil
}

type staticResolver struct{}

func (staticResolver) ResolveNow(grpcresolver.ResolveNowOptions) {}

func (staticResolver) Close() {}
