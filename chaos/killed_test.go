package chaos

import (
	"fmt"
	"testing"
	"time"
)

// scenarioKill is scenario 6: a backend process is killed with SIGKILL (it
// cannot deregister) while the clients send it requests. Its key must leave
// etcd when its lease expires, and every client's resolver must drop it
// within TTL + bound; no RPC may fail apart from those in flight on the
// killed process at the instant it died.
func scenarioKill(t *testing.T, p params) result {
	e := newEnv(t, p)
	for range p.backends {
		e.startBackend()
	}
	victim := e.startProcessBackend()
	e.startClients(p.clients)
	e.waitServed()
	time.Sleep(500 * time.Millisecond) // steady load on every backend
	e.beginFault()
	e.kill(victim)
	e.endFault()
	name := "6. backend SIGKILLed"
	if p.maker.Name != musterClients.Name {
		name += " (" + p.maker.Name + " clients)"
	}
	r := e.finish(name, fmt.Sprintf("SIGKILL of 1 of %d backends under load, TTL %v", p.backends+1, p.ttl))
	e.report(r)
	return r
}

// TestKilledBackend is the bounded scenario of the default suite:
// scenario 6 with a 2s TTL, two in-process backends and one process, two
// clients.
func TestKilledBackend(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a 3-member etcd cluster and a backend process for about 7s")
	}
	scenarioKill(t, params{
		ttl:      2 * time.Second,
		bound:    2 * time.Second,
		backends: 2,
		clients:  2,
		workers:  2,
		maker:    musterClients,
	})
}
