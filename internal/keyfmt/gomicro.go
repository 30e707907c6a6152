package keyfmt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mustersd/muster/endpoint"
)

// GoMicro is the format of go-micro's etcd registry (registry/etcd in
// go-micro.dev/v4's plugins and in go-micro.dev/v5): key
// /micro/registry/<service>/<node id>, where a '/' in the service or the
// node id is written as '-', and the value the JSON of go-micro's
// registry.Service holding the one node the key is for:
//
//	/micro/registry/greeter/greeter-1b7c... = {"name":"greeter","version":"latest","metadata":null,
//	    "endpoints":[...],"nodes":[{"metadata":{"protocol":"grpc"},"id":"greeter-1b7c...","address":"10.0.0.7:9000"}]}
//
// Its default namespace is "/micro/registry". Reading a value:
//   - the first node is the instance (go-micro's etcd registry writes one
//     per key); a value without nodes is malformed (skipped and counted);
//   - the node's address is the address, and its id the instance id (the
//     key's last part when the id is empty);
//   - the service's version is the version (dropped if it holds white
//     space or control characters);
//   - the node's metadata give the weight, zone and tags as in the Kratos
//     format ("weight" and "zone"; the rest are tags). The service's
//     metadata and endpoints (go-micro's RPC method descriptions) are not
//     read.
//
// go-micro's services answer gRPC only when served by its gRPC server (node
// metadata "protocol":"grpc"); Muster does not check it.
//
// Encode writes what go-micro's registry writes for one node: the service's
// name and version, no service metadata or endpoints, and one node with the
// endpoint's ID, address and metadata (tags, plus "zone" when set and
// "weight" when set to other than the default 10, unless already tags).
var GoMicro Format = goMicro{}

// DefaultGoMicroNamespace is where go-micro's etcd registry writes.
const DefaultGoMicroNamespace = "/micro/registry"

type goMicro struct{}

// goMicroValue is go-micro's registry.Service, member for member and in
// go-micro's order (registry/registry.go); Endpoints are not read.
type goMicroValue struct {
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints json.RawMessage   `json:"endpoints"`
	Nodes     []*goMicroNode    `json:"nodes"`
}

// goMicroNode is go-micro's registry.Node.
type goMicroNode struct {
	Metadata map[string]string `json:"metadata"`
	ID       string            `json:"id"`
	Address  string            `json:"address"`
}

func (goMicro) Name() string { return "go-micro" }

func (goMicro) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

func (f goMicro) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	v, err := json.Marshal(goMicroValue{
		Name:      e.Service,
		Version:   e.Version,
		Endpoints: json.RawMessage("null"),
		Nodes:     []*goMicroNode{{Metadata: toStringMeta(e, ""), ID: e.ID, Address: e.Addr}},
	})
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", e, err)
	}
	return f.Prefix(namespace, e.Service) + strings.ReplaceAll(e.ID, "/", "-"), v, nil
}

func (goMicro) Decode(service, name string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: go-micro %s/%s: %s", ErrMalformed, service, quote(name), fmt.Sprintf(format, args...))
	}
	if name == "" {
		return fail("empty node id")
	}
	var v goMicroValue
	dec := json.NewDecoder(bytes.NewReader(value))
	if err := dec.Decode(&v); err != nil {
		return fail("value is not a go-micro registry.Service: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the JSON value")
	}
	if len(v.Nodes) == 0 || v.Nodes[0] == nil {
		return fail("no nodes")
	}
	n := v.Nodes[0]
	e := endpoint.Endpoint{Service: service, ID: n.ID, Addr: n.Address}
	if e.ID == "" {
		e.ID = name
	}
	if plainText(v.Version) {
		e.Version = v.Version
	}
	fromStringMeta(&e, n.Metadata)
	if err := e.Validate(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}
