package xds

import (
	"testing"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	mbalancer "github.com/mustersd/muster/balancer"
	"github.com/mustersd/muster/internal/testx"
)

// prometheusRegistry returns a registry with the collector of Muster's
// balancing policies.
func prometheusRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(mbalancer.Collector()); err != nil {
		t.Fatal(err)
	}
	return reg
}

// fetchAssignment asks the xDS server at addr for service over a raw ADS
// stream, as a client would (Listener first), and returns the first
// assignment with want endpoints.
func fetchAssignment(t *testing.T, addr, service string, want int) *endpointpb.ClusterLoadAssignment {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := testx.Context(t, waitTimeout)
	st, err := discoverypb.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corepb.Node{Id: "raw-ads-test"}
	for _, typ := range []string{listenerType, endpointType} {
		if err := st.Send(&discoverypb.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: []string{service}}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("ADS: no assignment of %s with %d endpoints: %v", service, want, err)
		}
		if resp.GetTypeUrl() == endpointType {
			for _, r := range resp.GetResources() {
				cla := &endpointpb.ClusterLoadAssignment{}
				if err := r.UnmarshalTo(cla); err != nil {
					t.Fatal(err)
				}
				n := 0
				for _, l := range cla.GetEndpoints() {
					n += len(l.GetLbEndpoints())
				}
				if n == want {
					return cla
				}
			}
		}
		ack := &discoverypb.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: []string{service}, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := st.Send(ack); err != nil {
			t.Fatal(err)
		}
	}
}
