package p2c_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	mbalancer "github.com/mustersd/muster/balancer"
	"github.com/mustersd/muster/balancer/internal/lbtest"
	"github.com/mustersd/muster/balancer/p2c"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// sc uses a 1s decay so that the tests see recovery within seconds.
const sc = `{"loadBalancingConfig":[{"muster_p2c":{"decay":"1s"}}],"healthCheckConfig":{"serviceName":""}}`

func share(got map[string]int, name string) float64 {
	total := 0
	for _, c := range got {
		total += c
	}
	return float64(got[name]) / float64(total)
}

// TestSlowBackendAvoided: a backend that becomes slow gets under 10% of
// the RPCs within a few seconds, and its share comes back once it is fast
// again.
func TestSlowBackendAvoided(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	bs := lbtest.StartBackends(t, lbtest.Registrar(t, cli), 3, nil)
	for _, b := range bs {
		b.SetDelay(healthyDelay)
	}
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1", "b2")
	// Healthy, b1 gets a fair share (about a third; latency noise on a
	// busy machine moves it, so only a floor is checked).
	if s := share(lbtest.Spread(t, cc, 600), "b1"); s < 0.1 {
		t.Fatalf("healthy b1 got %.2f of the RPCs, want about a third", s)
	}

	bs[1].SetDelay(20 * time.Millisecond)
	took := testx.Eventually(t, 5*time.Second, "slow b1 kept 10% or more of the RPCs", func() bool {
		return share(lbtest.Spread(t, cc, 300), "b1") < 0.10
	})
	t.Logf("slow backend under 10%% of the RPCs after %v", took)

	bs[1].SetDelay(healthyDelay)
	took = testx.Eventually(t, 20*time.Second, "b1's share never came back after it recovered", func() bool {
		return share(lbtest.Spread(t, cc, 300), "b1") > 0.2
	})
	t.Logf("recovered backend back over 20%% after %v", took)
}

// healthyDelay is how long the tests' healthy backends take to answer:
// enough that alike backends' estimates stay within the policy's 20% tie
// margin of each other, rather than differ by a busy machine's noise on
// loopback RPCs of a hundred microseconds, which hands most picks to
// whichever estimate is lowest at the moment (TestNewEndpointNotFlooded
// saw 0.41-0.44 of them go to one of four backends under load).
const healthyDelay = 2 * time.Millisecond

// TestNewEndpointNotFlooded: an endpoint that joins a busy service starts
// from its peers' median estimate, not from zero, so it gets about its fair
// share at first rather than every comparison it takes part in.
func TestNewEndpointNotFlooded(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	reg := lbtest.Registrar(t, cli)
	for _, b := range lbtest.StartBackends(t, reg, 3, nil) {
		b.SetDelay(healthyDelay)
	}
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1", "b2")
	lbtest.Spread(t, cc, 300)

	newcomer := lbtest.StartBackends(t, nil, 4, nil)[3] // named b3
	newcomer.SetDelay(healthyDelay)
	if err := reg.Register(testx.Context(t, 5*time.Second), newcomer.Endpoint); err != nil {
		t.Fatal(err)
	}
	testx.Eventually(t, 10*time.Second, "b3 never got an RPC", func() bool {
		return lbtest.Spread(t, cc, 20)["b3"] > 0
	})
	// A zero estimate would win every comparison it is in: half the picks.
	if s := share(lbtest.Spread(t, cc, 400), "b3"); s > 0.4 {
		t.Errorf("the new endpoint got %.2f of the RPCs right after joining, want about a quarter", s)
	}
}

// TestNotServingGetsNoPicks: with client-side health checking, a backend
// that reports NOT_SERVING gets no RPC.
func TestNotServingGetsNoPicks(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	bs := lbtest.StartBackends(t, lbtest.Registrar(t, cli), 3, nil)
	for _, b := range bs {
		b.SetDelay(healthyDelay) // alike, so b2 gets a third of the picks until it is excluded
	}
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1", "b2")
	bs[2].Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	testx.Eventually(t, 10*time.Second, "b2 kept getting RPCs after NOT_SERVING", func() bool {
		return lbtest.Spread(t, cc, 30)["b2"] == 0
	})
	if got := lbtest.Spread(t, cc, 300); got["b2"] != 0 {
		t.Fatalf("NOT_SERVING b2 got %d of 300 RPCs", got["b2"])
	}
	bs[2].Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lbtest.WaitAll(t, cc, "b2")
}

// TestZone: lbtest.ZonePreference with muster_p2c: in-zone while healthy,
// spill when the local endpoints go, back when they return.
func TestZone(t *testing.T) {
	lbtest.ZonePreference(t, func(fields string) string {
		return strings.Replace(sc, `"decay":"1s"`, `"decay":"1s",`+fields, 1)
	})
}

func TestParseConfig(t *testing.T) {
	c, err := p2c.ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.Decay) != p2c.DefaultDecay || time.Duration(c.FailurePenalty) != p2c.DefaultFailurePenalty ||
		time.Duration(c.ProbeInterval) != p2c.DefaultProbeInterval || time.Duration(c.MaxProbeInterval) != p2c.DefaultMaxProbeInterval {
		t.Fatalf("defaults: %+v", c)
	}
	if c, err := p2c.ParseConfig([]byte(`{"probeInterval":"20s"}`)); err != nil || time.Duration(c.MaxProbeInterval) != 20*time.Second {
		t.Fatalf(`ParseConfig({"probeInterval":"20s"}) = %+v, %v; want maxProbeInterval 20s`, c, err)
	}
	for _, tc := range []struct{ js, want string }{
		{`{"decay":"0.1ms"}`, "decay"},
		{`{"decay":10}`, "duration"},
		{`{"failurePenalty":"-1s"}`, "failurePenalty"},
		{`{"probeInterval":"2s","maxProbeInterval":"1s"}`, "maxProbeInterval"},
		{`{"minLocalReady":2}`, "minLocalReady"},
	} {
		if _, err := p2c.ParseConfig([]byte(tc.js)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%s) = %v, want an error naming %s", tc.js, err, tc.want)
		}
	}
}

// TestMetrics: the policy counts picks and failed RPCs per endpoint.
func TestMetrics(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	bs := lbtest.StartBackends(t, lbtest.Registrar(t, cli), 2, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(mbalancer.Collector())
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1")
	count := func(name string) (total float64, byEndpoint map[string]float64) {
		byEndpoint = map[string]float64{}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, mt := range mf.GetMetric() {
				var target, ep string
				for _, l := range mt.GetLabel() {
					switch l.GetName() {
					case "target":
						target = l.GetValue()
					case "endpoint":
						ep = l.GetValue()
					}
				}
				if strings.Contains(target, lbtest.Service) {
					total += mt.GetCounter().GetValue()
					byEndpoint[ep] += mt.GetCounter().GetValue()
				}
			}
		}
		return total, byEndpoint
	}
	before, _ := count("muster_balancer_picks_total")
	lbtest.Spread(t, cc, 200)
	after, byEp := count("muster_balancer_picks_total")
	if after-before != 200 {
		t.Fatalf("picks went from %v to %v over 200 RPCs", before, after)
	}
	if len(byEp) != 2 || byEp[bs[0].Addr] == 0 || byEp[bs[1].Addr] == 0 {
		t.Fatalf("picks by endpoint %v", byEp)
	}
	if errs, _ := count("muster_balancer_errors_total"); errs != 0 {
		t.Fatalf("%v errors counted with no failure", errs)
	}
	bs[0].SetFailEvery(1)
	failed := 0
	// b0 may be out of favour; a probe reaches it within a second.
	testx.Eventually(t, 10*time.Second, "no RPC reached the failing backend", func() bool {
		if _, err := echo.Call(testx.Context(t, 5*time.Second), cc); err != nil {
			failed++
		}
		return failed > 0
	})
	if errs, byEp := count("muster_balancer_errors_total"); errs != float64(failed) || byEp[bs[1].Addr] != 0 {
		t.Fatalf("errors counted: %v (by endpoint %v), want some, all on %s", errs, byEp, bs[0].Addr)
	}
}
