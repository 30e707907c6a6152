// Package proxy serves etcd's gRPC API in front of an etcd cluster so that
// many etcd-protocol clients watching the same keys (etcd's naming resolver,
// go-zero, Muster's own resolver pointed at the proxy) cost etcd one watcher
// per key range instead of one per client.
//
// EXPERIMENTAL: the API and the behaviour may change; prefer Muster's xDS
// server, or Muster's resolver straight to etcd, where you can.
//
// What it serves:
//
//   - Watch: Muster's own coalescing (one upstream watch per key range,
//     fanned out to every client watcher of that range, each filtered to the
//     revisions it asked for). A client watcher that starts behind the shared
//     watch gets a private upstream watch that replays history and joins the
//     shared one once caught up. A compaction reaches the watchers that
//     need the compacted history as ErrCompacted, never as silence; a watch
//     that ends upstream is ended for its clients, never kept as a dead
//     share; when the proxy stops, client watches are cut with
//     codes.Unavailable so that clients resume elsewhere from their last
//     revision. Progress requests (RequestProgress) are answered end to
//     end: the proxy asks etcd for progress on the upstream watch streams
//     serving the client's watchers and answers (watch ID -1, as etcd)
//     only once etcd has answered on each, with the least revision up to
//     which every watcher of the client's stream has been sent every event.
//     No answer comes while etcd does not answer (unreachable, or a watcher
//     not synced yet), nor on a stream without watchers, as from etcd, so
//     that clients that detect stalled streams with progress requests
//     (Muster's resolver) work through the proxy. etcd's grpcproxy watch
//     proxy is not used: when it stops it ends some client watches with
//     codes.Canceled, which etcd's client takes as final (the watch
//     channel closes and etcd's naming resolver stops updating), and see
//     the bugs below.
//   - KV: every Range (and every range inside a Txn) is forwarded to etcd as
//     linearizable, whatever the client asked (Serializable is cleared), and
//     nothing is cached; Put, DeleteRange, Txn and Compact are forwarded.
//   - Lease: forwarded; each client keepalive stream is relayed to its own
//     upstream keepalive stream, with the client's token, so a lease expires
//     one TTL after its last keepalive, as with etcd. etcd's grpcproxy lease
//     proxy is not used: see below.
//   - Cluster: MemberList names the proxy itself as the only member, so
//     clients that sync their endpoints stay on the proxy; member changes are
//     forwarded. Maintenance and Auth are etcd's grpcproxy forwarders.
//
// Authentication: the token a client got from Authenticate (forwarded to
// etcd through the proxy) is passed on with each of its requests, so etcd
// checks each client's own permissions. This needs the proxy's etcd client
// to be built with DialOptions and without a user of its own (a client with
// a user would send its own token instead). A shared upstream watch runs with
// the token of the client that opened it; every later client watcher is
// checked against etcd with its own token before it joins.
//
// Known upstream bugs of etcd's gRPC proxy (go.etcd.io/etcd/server/v3/proxy/grpcproxy),
// and where this package stands:
//
//   - etcd-io/etcd#21813: a new watcher can attach to a disconnected shared
//     watch and miss every later event. Avoided: Watch is Muster's own.
//   - etcd-io/etcd PR #21881: after an etcd restart an extra Created
//     misroutes events to watchers of another prefix. Avoided: Watch is
//     Muster's own; Created is only ever sent once per client watcher.
//   - etcd-io/etcd#13031: a lease lives up to 2 x TTL after its last
//     keepalive through the lease proxy. Avoided: keepalives are relayed one
//     to one. (etcd's lease proxy also renews leases without the clients'
//     tokens: with authentication on, keepalives through it failed.)
//   - etcd-io/etcd#14665 and #22065: the range cache stays stale with
//     direct writers and ignores the auth token. Avoided: no range cache;
//     every read is linearizable and runs with the client's token.
//
// Not supported: TLS towards the proxy's clients (Serve takes any listener,
// but `muster proxy` serves plaintext); fragmented watch responses are not
// produced.
//
// Usage:
//
//	cfg := clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialOptions: proxy.DialOptions()}
//	cli, err := clientv3.New(cfg)
//	...
//	p, err := proxy.New(cli, proxy.WithLogger(logger), proxy.WithRegisterer(reg))
//	...
//	lis, err := net.Listen("tcp", "127.0.0.1:23790")
//	...
//	go p.Serve(lis) // returns ErrClosed after Close
//	defer p.Close()
package proxy
