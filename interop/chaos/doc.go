// Package chaos runs Muster's peers through the fault scenarios of
// Muster's chaos suite (internal/chaosharness, issue #7), with the same
// cluster, fault proxies, load and measures, and prints one table row per
// scenario and system. It has no code of its own, only tests, behind the
// build tag chaos:
//
//	go test -tags chaos -run TestChaosPeers -v -timeout 60m ./chaos/
//
// The systems, each with its own registration and its own discovery:
//
//   - muster: muster.NewServer and muster.NewClient (muster_p2c), as in
//     Muster's own suite, for reference;
//   - etcd naming: each backend registers with etcd's endpoints.Manager
//     (AddEndpoint under a lease it grants, kept alive by clientv3's
//     KeepAlive, as the Manager's users do: the Manager has no lease
//     handling of its own), and the clients resolve etcd:///services/echo.rpc
//     with etcd's naming resolver and gRPC's round_robin;
//   - go-zero: each backend registers with go-zero's discov.Publisher
//     (what a zrpc server with Etcd configured runs: its keepalive and
//     re-registration), and the clients are zrpc clients with Etcd
//     {Hosts, Key}: go-zero's discov Subscriber-based resolver and its
//     p2c_ewma balancer, with zrpc's default client middlewares.
//
// Unlike Muster's suite, a violated bound does not fail the test: every
// result is recorded (chaosharness.Params.RecordOnly) and the run watches
// for MUSTER_CHAOS_OBSERVE (default 30s) after each fault, so that a slow
// recovery is told from none. MUSTER_CHAOS_SYSTEMS (a comma-separated
// subset of muster, etcdnaming, gozero) picks the systems;
// MUSTER_CHAOS_FAULT, MUSTER_CHAOS_TTL and MUSTER_CHAOS_BOUND work as in
// Muster's suite.
package chaos
