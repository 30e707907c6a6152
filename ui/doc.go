// Package ui serves Muster's live dashboard: a read-only web page that shows
// the services registered in etcd, their instances, a timeline of recent
// changes and the health of the etcd cluster, updated as etcd changes.
//
// A Server is an http.Handler. Its data comes from one discovery watch of the
// whole namespace (discovery.SubscribeAll); the page never makes the server
// poll etcd for it. The page loads the current state as JSON from /api/state
// and then follows /api/events, a Server-Sent Events stream of the changes
// (instances added, removed and updated, with the revision and time of each),
// of lease TTLs, of the store's health and, where a StatsSource is given, of
// per-backend request statistics. The page itself (HTML, CSS and plain
// JavaScript) is embedded in the binary; there is no build step.
//
//	cli, _ := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}})
//	dash, err := ui.New(cli, ui.WithLogger(logger))
//	if err != nil {
//		return err
//	}
//	defer dash.Close() // before the http.Server's Shutdown: it ends the event streams
//	http.Handle("/", dash)
//
// What the page shows, and how it is read:
//
//   - Instances come from the discovery watcher's snapshots, so they are what
//     Muster's resolver sees; malformed values are counted, not shown.
//   - Lease TTL left is read with etcd's LeaseTimeToLive: the lease of each new
//     instance at once (keys looked up in batched transactions), then at most
//     LeaseReadsPerSecond leases a second, the oldest reading first. Between two
//     readings the page counts down.
//   - Age is the time since the dashboard first saw the key at its current
//     create revision. etcd keeps no timestamps; for keys that existed when
//     the dashboard started it is the time since the start, shown as "≥".
//   - Store health (members, leader, revision, database size) is read with
//     MemberList and Status every two seconds. While etcd does not answer, or
//     the watcher reports an error, the page keeps the last known state and
//     shows a banner saying it is stale, as Muster's resolver keeps its last
//     endpoints.
//
// Everything that comes from etcd is put into the page as text (textContent),
// never as HTML: a tag value "<script>alert(1)</script>" shows as those
// characters. The server answers GET requests only and writes nothing to etcd.
package ui
