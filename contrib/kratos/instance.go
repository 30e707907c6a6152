package kratos

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/go-kratos/kratos/v2/registry"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/keyfmt"
)

// Instances and endpoints convert through the Kratos format's own codec
// (keyfmt.Kratos), so that what Register makes of an instance, what the
// Kratos-format key holds and what Discovery hands back are one mapping:
//
//   - ID, Name and Version are the endpoint's ID, service and version;
//   - the gRPC address is the host:port of the first grpc:// or grpcs://
//     endpoint (an instance without one cannot be registered);
//   - metadata "weight" and "zone" are Muster's weight and zone, the rest
//     its tags; Muster's default weight, 10, is not handed to Kratos, whose
//     balancers then give the instance Kratos's own default (100), as they
//     do Kratos's instances registered without a weight (an explicit
//     "weight":"10" in the metadata is kept as it is);
//   - an endpoint list other than the one grpc://<addr> travels in the tag
//     keyfmt.KratosEndpointsTag.
//
// An instance whose version has white space or control characters loses
// its version (Muster's versions cannot hold them); Register logs it.

// toEndpoint is the Muster endpoint of si.
func toEndpoint(si *registry.ServiceInstance) (endpoint.Endpoint, error) {
	if si == nil {
		return endpoint.Endpoint{}, fmt.Errorf("kratos: nil service instance")
	}
	v, err := json.Marshal(si)
	if err != nil {
		return endpoint.Endpoint{}, fmt.Errorf("kratos: instance %s: %w", si, err)
	}
	e, err := keyfmt.Kratos.Decode(si.Name, si.ID, v)
	if err != nil {
		return endpoint.Endpoint{}, fmt.Errorf("kratos: instance %s: %w", si, err)
	}
	return e, nil
}

// toInstance is the Kratos instance of e: what Kratos's own etcd registry
// would read from the Kratos-format value of e.
func toInstance(e endpoint.Endpoint) *registry.ServiceInstance {
	_, v, err := keyfmt.Kratos.Encode("", e, 0)
	si := new(registry.ServiceInstance)
	if err == nil {
		err = json.Unmarshal(v, si)
	}
	if err != nil { // not for the valid endpoints of snapshots
		return &registry.ServiceInstance{ID: e.ID, Name: e.Service, Version: e.Version, Endpoints: []string{"grpc://" + e.Addr}}
	}
	return si
}

// sameInstance reports whether a and b hold the same values (nil and empty
// metadata alike), without sorting their endpoints as
// registry.ServiceInstance.Equal does.
func sameInstance(a, b *registry.ServiceInstance) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Version == b.Version &&
		maps.Equal(a.Metadata, b.Metadata) && slices.Equal(a.Endpoints, b.Endpoints)
}
