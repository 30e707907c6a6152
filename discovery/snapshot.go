package discovery

import (
	"github.com/mustersd/muster/endpoint"
)

// Snapshot is the set of endpoints under a prefix at one etcd revision.
// Snapshots are immutable: never modify Endpoints or their Tags.
type Snapshot struct {
	// Revision is the etcd revision the snapshot reflects; 0 means no
	// snapshot has been read yet.
	Revision int64
	// Endpoints are sorted by service, then ID.
	Endpoints []endpoint.Endpoint
	// Skipped counts the keys under the prefix whose values are malformed
	// and were left out.
	Skipped int
}

// State is what a subscriber receives: the latest snapshot and, beside it,
// the watcher's current error.
type State struct {
	// Snapshot is the last good snapshot. It stays in force while Err is set.
	Snapshot Snapshot
	// Err is nil while the watcher is in touch with etcd. Otherwise it says
	// what is wrong; the watcher keeps trying.
	Err error
}

// sameEndpoints reports whether a and b hold equal endpoints in the same order.
func sameEndpoints(a, b []endpoint.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !endpoint.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// Change is one difference between two snapshots.
type Change struct {
	// Kind is "added", "removed" or "updated".
	Kind string
	// Endpoint is the endpoint after the change (before it, for "removed").
	Endpoint endpoint.Endpoint
}

// Diff lists what changed from old to new, in endpoint order.
func Diff(old, new Snapshot) []Change {
	var out []Change
	i, j := 0, 0
	for i < len(old.Endpoints) || j < len(new.Endpoints) {
		switch {
		case j == len(new.Endpoints) || i < len(old.Endpoints) && less(old.Endpoints[i], new.Endpoints[j]):
			out = append(out, Change{"removed", old.Endpoints[i]})
			i++
		case i == len(old.Endpoints) || less(new.Endpoints[j], old.Endpoints[i]):
			out = append(out, Change{"added", new.Endpoints[j]})
			j++
		default:
			if !endpoint.Equal(old.Endpoints[i], new.Endpoints[j]) {
				out = append(out, Change{"updated", new.Endpoints[j]})
			}
			i++
			j++
		}
	}
	return out
}

func less(a, b endpoint.Endpoint) bool {
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	return a.ID < b.ID
}
