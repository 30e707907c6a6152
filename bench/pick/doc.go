// Package pick benchmarks the cost of one pick: Pick on a READY picker and
// the Done of its result, with 2, 10 and 100 READY endpoints, for gRPC's
// round_robin and least_request_experimental, Muster's muster_p2c and
// muster_weighted, and go-zero's p2c_ewma.
//
// Each policy is built the way a gRPC ClientConn builds it —
// balancer.Get(name).Build on a ClientConn, its configuration parsed by its
// own ConfigParser, UpdateClientConnState with a resolver state that holds
// both Endpoints (with Muster's attributes) and Addresses — but on a fake
// ClientConn whose SubConns connect at once, so that nothing but the
// policy's own code runs in the measured loop. The picker measured is the
// last one the policy published, once every endpoint is READY.
//
//	cd bench && go test -run XXX -bench . -benchmem -count 3 ./pick
//
// The package has no code outside its tests.
package pick
