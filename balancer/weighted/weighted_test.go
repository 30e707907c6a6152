package weighted_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/mustersd/muster/balancer/internal/lbtest"
	"github.com/mustersd/muster/balancer/weighted"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

const sc = `{"loadBalancingConfig":[{"muster_weighted":{}}],"healthCheckConfig":{"serviceName":""}}`

func TestScheduleShares(t *testing.T) {
	for _, tc := range []struct {
		weights []int
		cycle   int
	}{
		{[]int{1, 2, 7}, 10},
		{[]int{10, 10, 10}, 3},
		{[]int{5, 0, -3}, 7},
		{[]int{10000, 1}, 10001},
		{[]int{10000, 9999, 1}, 1 << 14},
	} {
		s := weighted.Schedule(tc.weights)
		if len(s) > tc.cycle {
			t.Errorf("Schedule(%v) has %d slots, want at most %d", tc.weights, len(s), tc.cycle)
		}
		count := make([]int, len(tc.weights))
		for range 10000 / len(s) {
			for _, i := range s {
				count[i]++
			}
		}
		total, wsum := 0, 0
		for i, c := range count {
			total += c
			wsum += max(tc.weights[i], 1)
		}
		for i, c := range count {
			want := float64(max(tc.weights[i], 1)) / float64(wsum)
			if got := float64(c) / float64(total); math.Abs(got-want) > 0.02 {
				t.Errorf("Schedule(%v): index %d has share %.3f, want %.3f ±0.02", tc.weights, i, got, want)
			}
		}
	}
	// Smoothness: with weights 1, 2, 7 the heavy endpoint never gets more
	// than 4 slots in a row, counting across the end of the cycle (a
	// perfectly smooth order gives 3 within the cycle; round robin by
	// weight would give it 7).
	s := weighted.Schedule([]int{1, 2, 7})
	run, longest := 0, 0
	for _, i := range append(s, s...) {
		if i == 2 {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	if longest > 4 {
		t.Errorf("schedule %v gives weight 7 a run of %d", s, longest)
	}
}

// TestWeightsFromEtcd: instances registered with weights 1, 2 and 7 get
// 10/20/70% of 10,000 RPCs (±2%); changing a weight in etcd changes the
// shares without reconnecting.
func TestWeightsFromEtcd(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	reg := lbtest.Registrar(t, cli)
	weights := []int{1, 2, 7}
	bs := lbtest.StartBackends(t, reg, 3, func(i int, e *endpoint.Endpoint) { e.Weight = weights[i] })
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1", "b2")

	check := func(n int, want map[string]float64) {
		t.Helper()
		got := lbtest.Spread(t, cc, n)
		for name, share := range want {
			if s := float64(got[name]) / float64(n); math.Abs(s-share) > 0.02 {
				t.Errorf("%s got %.3f of %d RPCs, want %.2f ±0.02 (spread %v)", name, s, n, share, got)
			}
		}
	}
	check(10000, map[string]float64{"b0": 0.1, "b1": 0.2, "b2": 0.7})

	e := bs[0].Endpoint
	e.Weight = 7
	if err := reg.Register(testx.Context(t, 5*time.Second), e); err != nil {
		t.Fatal(err)
	}
	// 7, 2, 7: b0 now gets 7/16 of the traffic.
	testx.Eventually(t, 10*time.Second, "the new weight never took effect", func() bool {
		got := lbtest.Spread(t, cc, 160)
		return got["b0"] >= 60
	})
	check(1600, map[string]float64{"b0": 7.0 / 16, "b1": 2.0 / 16, "b2": 7.0 / 16})
}

// TestNotServingGetsNoPicks: with client-side health checking, a backend
// that reports NOT_SERVING gets no RPC, and gets them again once SERVING.
func TestNotServingGetsNoPicks(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	bs := lbtest.StartBackends(t, lbtest.Registrar(t, cli), 3, nil)
	cc := lbtest.Dial(t, cli, sc)
	lbtest.WaitAll(t, cc, "b0", "b1", "b2")
	bs[1].Health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	testx.Eventually(t, 10*time.Second, "b1 kept getting RPCs after NOT_SERVING", func() bool {
		return lbtest.Spread(t, cc, 30)["b1"] == 0
	})
	if got := lbtest.Spread(t, cc, 300); got["b1"] != 0 {
		t.Fatalf("NOT_SERVING b1 got %d of 300 RPCs", got["b1"])
	}
	bs[1].Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	lbtest.WaitAll(t, cc, "b1")
}

// TestZonePreference: lbtest.ZonePreference with muster_weighted.
func TestZonePreference(t *testing.T) {
	lbtest.ZonePreference(t, func(fields string) string { return strings.Replace(sc, `{}`, "{"+fields+"}", 1) })
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct{ js, want string }{
		{`{"minLocalReady":1.5}`, "minLocalReady"},
		{`{"zone":3}`, "zone"},
		{`{"minLocalReady":-0.1}`, "minLocalReady"},
	} {
		if _, err := weighted.ParseConfig([]byte(tc.js)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseConfig(%s) = %v, want an error naming %s", tc.js, err, tc.want)
		}
	}
	c, err := weighted.ParseConfig(nil)
	if err != nil || c.MinLocalReady == nil || *c.MinLocalReady != 0.5 {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
}
