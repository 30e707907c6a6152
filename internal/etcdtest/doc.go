// Package etcdtest runs real etcd servers (go.etcd.io/etcd/server/v3/embed)
// inside the test process, for tests that need etcd without mocks.
//
// Single starts one member and Cluster starts n members. Members bind only
// 127.0.0.1 (on random ports outside the kernel's ephemeral range, retried
// on bind conflicts), keep their data in t.TempDir(), use fast test-only
// raft timings, skip fsync, keep etcd's logs out of the test output (recent
// warnings and errors are included in failure messages instead), and are
// stopped by t.Cleanup. A member can be stopped and restarted on the same
// ports and data directory to exercise reconnects, failover and catch-up;
// Stop cuts open watch and keep-alive streams the way a crash would, so
// clients see codes.Unavailable and retry.
//
// Usage:
//
//	func TestSomething(t *testing.T) {
//		m := etcdtest.Single(t)
//		cli := m.Client(t)
//		if _, err := cli.Put(context.Background(), "k", "v"); err != nil {
//			t.Fatal(err)
//		}
//		m.Stop()    // requests now fail
//		m.Restart() // same ports, same data
//	}
//
//	func TestFailover(t *testing.T) {
//		c := etcdtest.Cluster(t, 3)
//		cli := c.Client(t)
//		old := c.Leader()
//		old.Stop()
//		_ = c.Leader() // a new leader among the survivors
//		_, _ = cli.Put(context.Background(), "k", "v")
//		old.Restart() // rejoins and catches up
//	}
//
// WithTLS serves the client URLs over TLS with a throwaway CA and
// certificates (Member.TLS gives their files; NewTLSFiles makes more, for
// example a CA that did not sign the member's certificate);
// WithClientCertAuth also requires client certificates; WithAuth turns on
// etcd authentication. Client and the readiness checks adapt to all of
// them, and they survive Restart:
//
//	m := etcdtest.Single(t, etcdtest.WithTLS(), etcdtest.WithAuth("alice", "pw"))
//	m.Endpoints()   // ["https://127.0.0.1:PORT"]
//	m.TLS().CA      // the CA file to trust
//	m.Client(t)     // TLS, authenticated as alice
//
// All goroutines of a member end when it stops, and those of its clients
// when the test's cleanups close them. With go.uber.org/goleak, use
// goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...), or for a single test
// register the check with t.Cleanup before starting members (cleanups run
// last-in first-out, so it then runs after them):
//
//	t.Cleanup(func() { goleak.VerifyNone(t, etcdtest.IgnoreLeaks()...) })
//
// A plain `defer goleak.VerifyNone(t)` runs before the cleanups and would
// report the still-running members.
package etcdtest
