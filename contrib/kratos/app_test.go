package kratos_test

import (
	"strings"
	"testing"
	"time"

	"github.com/go-kratos/kratos/v2"

	mk "github.com/mustersd/muster/contrib/kratos"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// TestKratosAppOnMuster: real Kratos applications (kratos.New with Kratos's
// gRPC transport server) register through a Muster Registry, and a real
// Kratos gRPC client (transport/grpc DialInsecure, discovery:///order)
// resolves through it; RPCs reach every app. An app's graceful stop
// (App.Stop: deregister, then stop serving) takes it out of etcd and of
// the client. etcd stopped for twice the TTL: the client keeps calling the
// app it knows, and once etcd is back the registration is back by itself
// and the client's watcher follows changes again.
func TestKratosAppOnMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	const ttl = 2 * time.Second
	r := newRegistry(t, cli, mk.WithTTL(ttl))

	// The smallest change that moves a Kratos service to Muster
	// (docs/migrating.md quotes it): the Registrar and Discovery options.
	k0 := startApp(t, r, "order", "k0", kratos.Metadata(map[string]string{"zone": "eu-1a"}))
	conn := dial(t, r, "order")
	waitKeys(t, cli, "services/order/", "services/order/k0")
	waitReached(t, conn, "k0")

	k1 := startApp(t, r, "order", "k1")
	waitReached(t, conn, "k0", "k1")
	// Muster's own key, which Muster's clients read.
	if v := keys(t, cli, "services/order/k0")["services/order/k0"]; !strings.Contains(v, `"zone":"eu-1a"`) || !strings.Contains(v, `"version":"v1.0.0"`) {
		t.Errorf("Muster's value for k0: %s", v)
	}

	// Graceful stop: Kratos deregisters, then stops its server.
	k0.stop(t)
	waitKeys(t, cli, "services/order/", "services/order/k1")
	waitReached(t, conn, "k1")

	// etcd down for twice the TTL: the client keeps its instances.
	m.Stop()
	outage := time.NewTimer(2 * ttl)
	for done := false; !done; {
		if got, err := reached(conn, 5); err != nil || len(got) != 1 || got[0] != "k1" {
			t.Fatalf("during the outage calls reach %v, %v; want k1", got, err)
		}
		select {
		case <-outage.C:
			done = true
		case <-time.After(500 * time.Millisecond):
		}
	}
	m.Restart()
	testx.Eventually(t, 15*time.Second, "the registration to be in etcd again", func() bool {
		st := r.Status()
		return st.Synced && st.LastError == nil && len(keys(t, cli, "services/order/")) == 1
	})
	waitReached(t, conn, "k1")

	// The client's watcher did not give up: a new app is found.
	startApp(t, r, "order", "k2")
	waitReached(t, conn, "k1", "k2")

	k1.stop(t)
	waitReached(t, conn, "k2")
}
