// Package discovery turns the keys under an etcd prefix into a stream of
// immutable endpoint snapshots.
//
// A Watcher opens its watch at etcd's current revision, on a gRPC stream of
// its own, and lists the prefix once etcd has confirmed the watch: the list's
// revision is at or after the watch's start, so no event is lost between the
// two, and events already in the list are skipped. A watch that stops
// answering progress requests is replaced. After a compaction or any watch
// error it lists again and publishes the difference. It never gives up, and an error never
// empties the set: while etcd is unreachable the last good snapshot stays in
// force and subscribers are told about the error beside it. Malformed values
// are skipped, logged once per key and counted; the good endpoints beside them
// are published.
//
// Within a process, subscriptions to the same prefix through the same etcd
// client share one Watcher, and so one etcd watch:
//
//	sub, err := discovery.Subscribe(cli, "order.rpc")
//	if err != nil {
//		return err
//	}
//	defer sub.Close()
//	for st := range sub.Updates() {
//		if st.Err != nil {
//			log.Printf("etcd trouble, still using %d endpoints: %v", len(st.Snapshot.Endpoints), st.Err)
//			continue
//		}
//		log.Printf("revision %d: %d endpoints", st.Snapshot.Revision, len(st.Snapshot.Endpoints))
//	}
//
// Updates are latest-wins: a subscriber that reads slowly sees the newest
// state, not every intermediate one, and never slows the others down.
package discovery
