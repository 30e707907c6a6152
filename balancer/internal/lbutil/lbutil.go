// Package lbutil holds what Muster's balancing policies share: the READY
// endpoints of an endpointsharding picker with their metadata, and the zone
// preference.
package lbutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/connectivity"

	"github.com/mustersd/muster/resolver"
)

// ZoneEnv is the environment variable that names the client's zone when the
// policy's configuration does not.
const ZoneEnv = "MUSTER_ZONE"

// DefaultMinLocalReady is the default share of the local zone's endpoints
// that must be READY for traffic to stay in the zone.
const DefaultMinLocalReady = 0.5

// Zone is the zone preference of a policy's configuration.
type Zone struct {
	// Zone is the client's zone; "" means $MUSTER_ZONE, and no preference
	// when that is empty too.
	Zone string `json:"zone,omitempty"`
	// MinLocalReady is the share of the local zone's endpoints (0..1) that
	// must be READY for traffic to stay in the zone; below it, or with no
	// READY local endpoint, traffic spreads over every zone. Default 0.5.
	MinLocalReady *float64 `json:"minLocalReady,omitempty"`
}

// Fill applies the defaults and checks the values.
func (z *Zone) Fill(getenv func(string) string) error {
	if z.Zone == "" {
		z.Zone = getenv(ZoneEnv)
	}
	if z.MinLocalReady == nil {
		v := DefaultMinLocalReady
		z.MinLocalReady = &v
	}
	if v := *z.MinLocalReady; !(v >= 0 && v <= 1) {
		return fmt.Errorf("minLocalReady: %v is not a share between 0 and 1", v)
	}
	return nil
}

// Member is a READY endpoint.
type Member struct {
	// Addr is the endpoint's first address; it names the endpoint across
	// updates.
	Addr string
	// Picker is the endpoint's pick_first picker.
	Picker balancer.Picker
	// Weight is the endpoint's registered weight (default 10).
	Weight int
	// Zone is the endpoint's zone.
	Zone string
}

// Ready returns the READY endpoints of an endpointsharding picker's
// children that the policy should pick from: those of the client's zone
// while at least z.MinLocalReady of that zone's endpoints are READY, else
// all of them. local reports whether the zone preference held.
func Ready(children []endpointsharding.ChildState, z Zone) (members []Member, local bool) {
	var localTotal, localReady int
	for _, c := range children {
		zone := resolver.Zone(c.Endpoint.Attributes)
		ready := c.State.ConnectivityState == connectivity.Ready
		if z.Zone != "" && zone == z.Zone {
			localTotal++
			if ready {
				localReady++
			}
		}
		if ready && len(c.Endpoint.Addresses) > 0 {
			members = append(members, Member{
				Addr:   c.Endpoint.Addresses[0].Addr,
				Picker: c.State.Picker,
				Weight: resolver.Weight(c.Endpoint.Attributes),
				Zone:   zone,
			})
		}
	}
	minShare := DefaultMinLocalReady
	if z.MinLocalReady != nil {
		minShare = *z.MinLocalReady
	}
	if localReady == 0 || float64(localReady) < minShare*float64(localTotal) {
		return members, false
	}
	kept := members[:0]
	for _, m := range members {
		if m.Zone == z.Zone {
			kept = append(kept, m)
		}
	}
	return kept, true
}

// Getenv is os.Getenv; tests replace it.
var Getenv = os.Getenv

// Duration is a time.Duration written in JSON as a Go duration string
// ("10s", "250ms").
type Duration time.Duration

// UnmarshalJSON reads "10s"; a bare number is rejected, since its unit would
// be a guess.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "10s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
