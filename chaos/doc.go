// Package chaos holds Muster's fault-injection tests (issue #7); it has no
// code of its own, only tests. The harness and the scenarios are in
// internal/chaosharness, so that Muster's peers (etcd's naming, go-zero)
// can be run through the same scenarios from the nested module interop
// (interop/chaos).
//
// Each scenario runs a 3-member etcd cluster (internal/etcdtest) with
// fault-injecting proxies (internal/faultproxy) in front of each member's
// client URL: Muster servers and clients reach etcd only through the
// proxies, while etcd's peer traffic goes direct. The backends share one
// proxy per member and each client has its own, so that a scenario can
// steer each onto a member of its choice; faults hit every proxy in front
// of a member. Live echo backends
// register through muster.NewServer, clients made by muster.NewClient keep
// a steady RPC load on them, and an observer with a direct etcd client
// records what etcd holds every 50ms. Every scenario then asserts:
//
//   - no RPC failed;
//   - no live backend's key was missing from etcd for longer than
//     TTL + bound, and every one was back within TTL + bound of the end of
//     the fault;
//   - no endpoint stayed in etcd or in any client's resolver longer than
//     TTL + bound after its process died;
//   - at the end, etcd holds exactly the live backends and every client's
//     resolver holds exactly what etcd holds.
//
// The default test suite runs one bounded scenario (TestKilledBackend: a
// backend process killed with SIGKILL under load, TTL 2s). The full suite
// is behind the build tag chaos and prints one line per scenario:
//
//	go test -tags chaos -run TestChaos -v -timeout 30m ./chaos/
//
// MUSTER_CHAOS_FAULT (default 30s) sets how long the timed faults last,
// MUSTER_CHAOS_TTL (default 10s) the backends' lease TTL and
// MUSTER_CHAOS_BOUND (default 2s) the slack beyond it.
//
// The client under test is an interface (chaosharness.ClientUnderTest,
// made by a ClientMaker) and so is the backends' registration (a
// chaosharness.BackendMaker), so that other discovery systems can be run
// through the same scenarios.
package chaos
