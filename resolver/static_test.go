package resolver

import (
	"testing"

	grpcresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/mustersd/muster/endpoint"
)

// recordingCC is a resolver.ClientConn that keeps the states it is given.
type recordingCC struct {
	states []grpcresolver.State
}

func (c *recordingCC) UpdateState(s grpcresolver.State) error {
	c.states = append(c.states, s)
	return nil
}
func (c *recordingCC) ReportError(error)                                    {}
func (c *recordingCC) NewAddress([]grpcresolver.Address)                    {}
func (c *recordingCC) ParseServiceConfig(string) *serviceconfig.ParseResult { return nil }

// TestStaticBuilder: the static resolver pushes its endpoints once, sorted,
// with the same attributes as endpoints found in etcd.
func TestStaticBuilder(t *testing.T) {
	b := NewStaticBuilder([]endpoint.Endpoint{
		{Service: "s", Addr: "127.0.0.1:2", Weight: 5, Zone: "b"},
		{Service: "s", Addr: "127.0.0.1:1", Zone: "a"},
	})
	if b.Scheme() != StaticScheme {
		t.Fatalf("scheme %q", b.Scheme())
	}
	cc := &recordingCC{}
	r, err := b.Build(grpcresolver.Target{}, cc, grpcresolver.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.ResolveNow(grpcresolver.ResolveNowOptions{})
	if len(cc.states) != 1 {
		t.Fatalf("%d states pushed, want 1", len(cc.states))
	}
	st := cc.states[0]
	if len(st.Endpoints) != 2 || len(st.Addresses) != 2 {
		t.Fatalf("state %+v: want 2 endpoints and 2 addresses", st)
	}
	first, second := st.Endpoints[0], st.Endpoints[1]
	if first.Addresses[0].Addr != "127.0.0.1:1" || Weight(first.Attributes) != endpoint.DefaultWeight || Zone(first.Attributes) != "a" {
		t.Errorf("first endpoint %+v: want 127.0.0.1:1, default weight, zone a", first)
	}
	if second.Addresses[0].Addr != "127.0.0.1:2" || Weight(second.Attributes) != 5 || Zone(second.Attributes) != "b" {
		t.Errorf("second endpoint %+v: want 127.0.0.1:2, weight 5, zone b", second)
	}
	if e, ok := FromAttributes(first.Attributes); !ok || e.ID != "127.0.0.1:1" {
		t.Errorf("FromAttributes = %+v, %v; want the endpoint with its ID defaulted to its address", e, ok)
	}
}
