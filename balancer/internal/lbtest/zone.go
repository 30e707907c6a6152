package lbtest

import (
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// ZonePreference is the zone test both policies run: a client in zone a
// sends everything to zone a while it is healthy, spreads over every zone
// when zone a loses its endpoints, and comes back when they return; one of
// two local endpoints NOT_SERVING (50% READY, the default threshold) keeps
// traffic local, and with minLocalReady 0.6 it spills. sc returns the
// policy's service config with the given JSON fields (`"zone":"a"`, ...)
// added to the policy's configuration.
func ZonePreference(t *testing.T, sc func(fields string) string) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	reg := Registrar(t, cli)
	zones := []string{"a", "a", "b", "b"}
	bs := StartBackends(t, reg, 4, func(i int, e *endpoint.Endpoint) { e.Zone = zones[i] })
	cc := Dial(t, cli, sc(`"zone":"a"`))
	WaitAll(t, cc, "b0", "b1")
	if got := Spread(t, cc, 200); got["b2"]+got["b3"] != 0 {
		t.Fatalf("with zone a healthy, zone b got RPCs: %v", got)
	}

	ctx := testx.Context(t, 10*time.Second)
	if err := reg.Deregister(ctx, bs[0].Endpoint, bs[1].Endpoint); err != nil {
		t.Fatal(err)
	}
	WaitAll(t, cc, "b2", "b3")

	if err := reg.Register(ctx, bs[0].Endpoint, bs[1].Endpoint); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "traffic never came back to zone a", func() bool {
		got := Spread(t, cc, 40)
		return got["b2"]+got["b3"] == 0
	})

	bs[0].Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	testx.Eventually(t, 10*time.Second, "traffic did not settle on b1", func() bool {
		got := Spread(t, cc, 40)
		return got["b1"] == 40
	})
	cc2 := Dial(t, cli, sc(`"zone":"a","minLocalReady":0.6`))
	WaitAll(t, cc2, "b1", "b2", "b3")
}
