package chaos

import (
	"testing"
	"time"

	"github.com/mustersd/muster/internal/chaosharness"
)

// TestKilledBackend is the bounded scenario of the default suite:
// scenario 6 (chaosharness.KilledBackend: a backend process killed with
// SIGKILL under load; its key must leave etcd and every resolver within
// TTL + bound, and no RPC may fail apart from those in flight on it) with a
// 2s TTL, two in-process backends and one process, two clients.
func TestKilledBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-member etcd cluster and a backend process for about 7s")
	}
	chaosharness.KilledBackend(t, chaosharness.Params{
		TTL:      2 * time.Second,
		Bound:    2 * time.Second,
		Backends: 2,
		Clients:  2,
		Workers:  2,
		Maker:    chaosharness.MusterClients,
		Servers:  chaosharness.MusterBackends,
	})
}
