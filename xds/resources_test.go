package xds

import (
	"strconv"
	"strings"
	"testing"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/mustersd/muster/endpoint"
)

func TestListenerAndRoute(t *testing.T) {
	l := listener("order.rpc")
	hcm := &hcmpb.HttpConnectionManager{}
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if l.GetName() != "order.rpc" || hcm.GetRds().GetRouteConfigName() != "order.rpc" || hcm.GetRds().GetConfigSource().GetAds() == nil {
		t.Errorf("listener: %v", l)
	}
	if f := hcm.GetHttpFilters(); len(f) == 0 || f[len(f)-1].GetName() != routerFilterName {
		t.Errorf("router filter not last: %v", f)
	}
	rc := routeConfig("order.rpc")
	vh := rc.GetVirtualHosts()
	if len(vh) != 1 || vh[0].GetDomains()[0] != "*" || vh[0].GetRoutes()[0].GetMatch().GetPrefix() != "" ||
		vh[0].GetRoutes()[0].GetRoute().GetCluster() != "order.rpc" {
		t.Errorf("route configuration: %v", rc)
	}
}

func TestClusterPolicies(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string // the policies' type names, in order
	}{
		{PolicyP2C, "xds.type.v3.TypedStruct envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality"},
		{PolicyRoundRobin, "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality"},
		{PolicyRingHash, "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"},
	} {
		c := cluster("order.rpc", tc.p)
		if c.GetType() != clusterpb.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetEdsClusterConfig().GetServiceName() != "order.rpc" {
			t.Errorf("%s: not an EDS cluster over ADS: %v", tc.p, c)
		}
		var got []string
		for _, p := range c.GetLoadBalancingPolicy().GetPolicies() {
			u := p.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl()
			got = append(got, u[strings.LastIndex(u, "/")+1:])
		}
		if strings.Join(got, " ") != tc.want {
			t.Errorf("%s: policies %v, want %s", tc.p, got, tc.want)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("ParsePolicy(random) did not fail")
	}
}

func TestAssignment(t *testing.T) {
	eps := []endpoint.Endpoint{
		{Service: "s", ID: "a", Addr: "10.0.0.1:80", Zone: "eu-1b", Weight: 0, Version: "1.2", Tags: map[string]string{"canary": "true"}},
		{Service: "s", ID: "b", Addr: "10.0.0.2:80", Zone: "eu-1a", Weight: 1},
		{Service: "s", ID: "c", Addr: "10.0.0.3:80", Zone: "eu-1a", Weight: 9},
		{Service: "s", ID: "d", Addr: "[::1]:81", Weight: 3},
		{Service: "s", ID: "e", Addr: "not-an-address"},
		{Service: "s", ID: "f", Addr: "10.0.0.6:0"},
	}
	cla, skipped := assignment("s", eps)
	if strings.Join(skipped, ",") != "not-an-address,10.0.0.6:0" {
		t.Errorf("skipped %v", skipped)
	}
	var got []string
	for _, l := range cla.GetEndpoints() {
		if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
			t.Errorf("locality without Locality or weight: %v", l)
		}
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if e.GetHealthStatus() != corepb.HealthStatus_HEALTHY {
				t.Errorf("%v not HEALTHY", sa)
			}
			got = append(got, l.GetLocality().GetZone()+"/"+itoa(l.GetLoadBalancingWeight().GetValue())+"/"+sa.GetAddress()+":"+itoa(sa.GetPortValue())+"/"+itoa(e.GetLoadBalancingWeight().GetValue()))
		}
	}
	want := "/3/::1:81/3 eu-1a/10/10.0.0.2:80/1 eu-1a/10/10.0.0.3:80/9 eu-1b/10/10.0.0.1:80/10"
	if strings.Join(got, " ") != want {
		t.Errorf("assignment\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	md := cla.GetEndpoints()[2].GetLbEndpoints()[0].GetMetadata().GetFilterMetadata()[MetadataNamespace].GetFields()
	if md["id"].GetStringValue() != "a" || md["version"].GetStringValue() != "1.2" || md["zone"].GetStringValue() != "eu-1b" ||
		md["tags"].GetStructValue().GetFields()["canary"].GetStringValue() != "true" {
		t.Errorf("metadata: %v", md)
	}

	empty, _ := assignment("s", nil)
	if empty.GetClusterName() != "s" || len(empty.GetEndpoints()) != 0 {
		t.Errorf("empty assignment: %v", empty)
	}
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

func TestBootstrapJSON(t *testing.T) {
	js, err := Bootstrap{Server: "127.0.0.1:18000", Zone: "z1"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"server_uri": "127.0.0.1:18000"`, `"type": "insecure"`, `"ignore_resource_deletion"`, `"id": "` + DefaultNodeID + `"`, `"zone": "z1"`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("bootstrap lacks %s:\n%s", want, js)
		}
	}
	if _, err := (Bootstrap{}).JSON(); err == nil {
		t.Error("bootstrap without server did not fail")
	}
}
