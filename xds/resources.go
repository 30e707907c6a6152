package xds

import (
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"

	xdstypepb "github.com/cncf/xds/go/xds/type/v3"
	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	ringhashpb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	roundrobinpb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	wrrlocalitypb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/wrr_locality/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/mustersd/muster/endpoint"
)

// MetadataNamespace is the filter_metadata key under which each LbEndpoint
// carries the Muster metadata of its instance: "id", "version", "zone" and
// "tags" (a map of strings).
const MetadataNamespace = "muster"

// Names of the extensions in the resources.
const (
	routerFilterName = "envoy.filters.http.router"
	hcmName          = "envoy.filters.network.http_connection_manager"
)

// customPolicyName is the name of the custom policy of PolicyP2C; a
// variable so that a test can name a policy no client has.
var customPolicyName = string(PolicyP2C)

// ads is the config source "over the ADS stream this resource came on".
func ads() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
	}
}

// mustAny wraps m in an Any. Marshalling the messages built here cannot
// fail (they hold no invalid UTF-8 and no unknown types).
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return a
}

// listener is the API listener a gRPC client asks for when it resolves
// xds:///service: an HttpConnectionManager that takes its routes over ADS
// (route configuration named after the service) and ends with the router
// filter.
func listener(service string) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		StatPrefix: service,
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{
			ConfigSource:    ads(),
			RouteConfigName: service,
		}},
		HttpFilters: []*hcmpb.HttpFilter{{
			Name:       routerFilterName,
			ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerpb.Router{})},
		}},
	}
	return &listenerpb.Listener{
		Name:        service,
		ApiListener: &listenerpb.ApiListener{ApiListener: mustAny(hcm)},
	}
}

// routeConfig sends every RPC, whatever its authority and method, to the
// cluster of the service.
func routeConfig(service string) *routepb.RouteConfiguration {
	return &routepb.RouteConfiguration{
		Name: service,
		VirtualHosts: []*routepb.VirtualHost{{
			Name:    service,
			Domains: []string{"*"},
			Routes: []*routepb.Route{{
				Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: ""}},
				Action: &routepb.Route_Route{Route: &routepb.RouteAction{
					ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: service},
				}},
			}},
		}},
	}
}

// cluster is the EDS cluster of the service, with the load-balancing
// configuration of p.
func cluster(service string, p Policy) *clusterpb.Cluster {
	c := &clusterpb.Cluster{
		Name:                 service,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: service},
		LbPolicy:             clusterpb.Cluster_ROUND_ROBIN,
	}
	wrrRoundRobin := policy("envoy.load_balancing_policies.wrr_locality", &wrrlocalitypb.WrrLocality{
		EndpointPickingPolicy: &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{
			policy("envoy.load_balancing_policies.round_robin", &roundrobinpb.RoundRobin{}),
		}},
	})
	switch p {
	case PolicyRingHash:
		c.LbPolicy = clusterpb.Cluster_RING_HASH
		c.LoadBalancingPolicy = &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{
			policy("envoy.load_balancing_policies.ring_hash", &ringhashpb.RingHash{HashFunction: ringhashpb.RingHash_XX_HASH}),
		}}
	case PolicyRoundRobin:
		c.LoadBalancingPolicy = &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{wrrRoundRobin}}
	default: // PolicyP2C
		// gRPC takes the policy name from the last segment of the
		// TypedStruct's type_url, and skips the entry when no policy of
		// that name is registered; the Struct is the policy's JSON config
		// (empty: muster_p2c's defaults).
		custom := policy(customPolicyName, &xdstypepb.TypedStruct{
			TypeUrl: "type.googleapis.com/" + customPolicyName,
			Value:   &structpb.Struct{},
		})
		c.LoadBalancingPolicy = &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{custom, wrrRoundRobin}}
	}
	return c
}

func policy(name string, cfg proto.Message) *clusterpb.LoadBalancingPolicy_Policy {
	return &clusterpb.LoadBalancingPolicy_Policy{
		TypedExtensionConfig: &corepb.TypedExtensionConfig{Name: name, TypedConfig: mustAny(cfg)},
	}
}

// assignment builds the ClusterLoadAssignment of service from its
// endpoints: one locality per zone (an endpoint without a zone is in the
// locality whose fields are all empty), each locality weighted by the sum
// of its endpoints' weights, and one HEALTHY LbEndpoint per instance with
// its effective weight (0 means endpoint.DefaultWeight, so xDS never sees
// the invalid weight 0) and its Muster metadata. An endpoint whose address
// is not host:port is left out and reported in skipped.
func assignment(service string, eps []endpoint.Endpoint) (cla *endpointpb.ClusterLoadAssignment, skipped []string) {
	byZone := map[string][]*endpointpb.LbEndpoint{}
	weights := map[string]uint64{}
	var zones []string
	for _, e := range eps {
		host, portStr, err := net.SplitHostPort(e.Addr)
		port, perr := strconv.ParseUint(portStr, 10, 32)
		if err != nil || perr != nil || host == "" || port == 0 || port > math.MaxUint16 {
			skipped = append(skipped, e.Addr)
			continue
		}
		w := uint32(max(e.EffectiveWeight(), 1))
		lb := &endpointpb.LbEndpoint{
			HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
				Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
					Protocol:      corepb.SocketAddress_TCP,
					Address:       host,
					PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}},
			HealthStatus:        corepb.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(w),
			Metadata:            metadata(e),
		}
		if _, ok := byZone[e.Zone]; !ok {
			zones = append(zones, e.Zone)
		}
		byZone[e.Zone] = append(byZone[e.Zone], lb)
		weights[e.Zone] += uint64(w)
	}
	slices.Sort(zones)
	cla = &endpointpb.ClusterLoadAssignment{ClusterName: service}
	for _, z := range zones {
		cla.Endpoints = append(cla.Endpoints, &endpointpb.LocalityLbEndpoints{
			// Locality must be present and the weight positive, or gRPC
			// drops the locality without a word.
			Locality:            &corepb.Locality{Zone: z},
			LbEndpoints:         byZone[z],
			LoadBalancingWeight: wrapperspb.UInt32(uint32(min(weights[z], math.MaxUint32/uint64(len(zones))))),
		})
	}
	return cla, skipped
}

// metadata is the endpoint's Muster metadata as filter_metadata.
func metadata(e endpoint.Endpoint) *corepb.Metadata {
	fields := map[string]*structpb.Value{
		"id":     structpb.NewStringValue(e.ID),
		"weight": structpb.NewNumberValue(float64(e.EffectiveWeight())),
	}
	if e.Version != "" {
		fields["version"] = structpb.NewStringValue(e.Version)
	}
	if e.Zone != "" {
		fields["zone"] = structpb.NewStringValue(e.Zone)
	}
	if len(e.Tags) > 0 {
		tags := make(map[string]*structpb.Value, len(e.Tags))
		for k, v := range e.Tags {
			tags[k] = structpb.NewStringValue(v)
		}
		fields["tags"] = structpb.NewStructValue(&structpb.Struct{Fields: tags})
	}
	return &corepb.Metadata{FilterMetadata: map[string]*structpb.Struct{MetadataNamespace: {Fields: fields}}}
}
