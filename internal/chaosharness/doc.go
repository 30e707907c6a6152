// Package chaosharness is the harness and the scenarios of the chaos suite
// (issue #7): a 3-member embedded etcd cluster with a fault-injecting proxy
// (internal/faultproxy) in front of each member's client URL, live echo
// backends, clients under steady RPC load, and an observer that reads
// etcd every 50ms directly. It is an ordinary package, not a test file, so
// that Muster's suite (chaos/) and the peers' (interop/chaos, a nested
// module: Go's internal rule is by import path, and
// github.com/mustersd/muster/interop/... is under
// github.com/mustersd/muster) run the same scenarios.
//
// What registers and what resolves are parameters (Params): a
// BackendMaker starts backends that register through muster.NewServer
// (MusterBackends) or a peer's registration, and a ClientMaker makes the
// clients under test (MusterClients, or a peer's resolver and balancer
// wrapped with ObservedClient). Scenarios lists the six scenarios; each
// returns its Result. By default a scenario fails its test when a bound is
// violated (Result.Line is the row of Muster's table); with
// Params.RecordOnly it only records (Result.PeerLine, Result.Verdict).
//
// A scenario that kills a backend process re-runs the test binary: its
// TestMain must call HelperMain with the BackendMakers it uses when
// IsHelper reports true.
package chaosharness
