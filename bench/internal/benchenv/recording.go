package benchenv

import (
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
)

// RecordingBase is embedded by the benchmarks' balancers that only record
// what their resolver hands over and never connect, so that no backend is
// needed. It answers the rest of balancer.Balancer with nothing.
type RecordingBase struct {
	CC     balancer.ClientConn
	picked bool // Connecting was called; only UpdateClientConnState calls it
}

// Connecting hands the ClientConn, the first time it is called, a
// CONNECTING state: one state suffices to make the ClientConn happy; RPCs
// would wait for a picker that never comes, and none is made. Call it from
// UpdateClientConnState.
func (r *RecordingBase) Connecting() {
	if !r.picked {
		r.picked = true
		r.CC.UpdateState(balancer.State{ConnectivityState: connectivity.Connecting, Picker: noPicker{}})
	}
}

// ResolverError does nothing.
func (*RecordingBase) ResolverError(error) {}

// UpdateSubConnState does nothing: no SubConn is created.
func (*RecordingBase) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {}

// Close does nothing.
func (*RecordingBase) Close() {}

// ExitIdle does nothing.
func (*RecordingBase) ExitIdle() {}

type noPicker struct{}

func (noPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
}
