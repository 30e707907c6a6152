package keyfmt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"strconv"
	"strings"

	"github.com/mustersd/muster/endpoint"
)

// GoZero is go-zero's discov format (github.com/zeromicro/go-zero/core/discov):
// key <Key>/<id>, where go-zero's Publisher writes its lease id in decimal
// as the id, and the value is the bare "host:port". Several keys may carry
// the same address (an instance that re-registered before its old lease
// expired); readers deduplicate by address, as go-zero does.
//
// go-zero's Key maps onto Muster as <namespace>/<service>: "order.rpc" is
// service order.rpc in the empty namespace (this format's default), and
// "dev/order.rpc" is service order.rpc in namespace "dev".
var GoZero Format = goZero{}

type goZero struct{}

func (goZero) Name() string { return "go-zero" }

func (goZero) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

// Encode writes the bare address under a decimal id derived from the
// endpoint's ID, stable across Muster's lease renewals (go-zero's readers
// take any id; go-zero's own Publisher uses its lease id).
func (f goZero) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	h := fnv.New64a()
	h.Write([]byte(e.ID))
	id := strconv.FormatUint(h.Sum64()>>1, 10)
	return f.Prefix(namespace, e.Service) + id, []byte(e.Addr), nil
}

func (goZero) Decode(service, id string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: go-zero %s/%s: %s", ErrMalformed, service, quote(id), fmt.Sprintf(format, args...))
	}
	if id == "" || strings.Contains(id, "/") {
		return fail("want <key>/<id>")
	}
	addr := string(bytes.TrimSpace(value))
	e := endpoint.Endpoint{Service: service, ID: addr, Addr: addr}
	if err := e.Validate(); err != nil {
		return fail("value %s: %v", quote(string(value)), err)
	}
	return e, nil
}

// Kitex is the format of Kitex's registry-etcd
// (github.com/kitex-contrib/registry-etcd): key
// kitex/registry-etcd/<service>/<host:port>, value
// {"network":"tcp","address":"host:port","weight":10,"tags":{...}}; a weight
// of 0 or less means 10. Its default namespace is "kitex/registry-etcd".
var Kitex Format = kitex{}

type kitex struct{}

// kitexValue is registry-etcd's instanceInfo.
type kitexValue struct {
	Network string            `json:"network"`
	Address string            `json:"address"`
	Weight  int               `json:"weight"`
	Tags    map[string]string `json:"tags"`
}

func (kitex) Name() string { return "kitex" }

func (kitex) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

// Encode writes the endpoint as Kitex does; Muster's zone and version travel
// as the tags "zone" and "version" (Kitex has no fields for them).
func (f kitex) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	tags := make(map[string]string, len(e.Tags)+2)
	for k, v := range e.Tags {
		tags[k] = v
	}
	if e.Zone != "" {
		tags["zone"] = e.Zone
	}
	if e.Version != "" {
		tags["version"] = e.Version
	}
	if len(tags) == 0 {
		tags = nil
	}
	v, err := json.Marshal(kitexValue{Network: "tcp", Address: e.Addr, Weight: e.EffectiveWeight(), Tags: tags})
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", e, err)
	}
	return f.Prefix(namespace, e.Service) + e.Addr, v, nil
}

// Decode reads registry-etcd's value; the tags "zone" and "version", when
// present, fill those fields.
func (kitex) Decode(service, name string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: kitex %s/%s: %s", ErrMalformed, service, quote(name), fmt.Sprintf(format, args...))
	}
	if name == "" {
		return fail("empty instance name")
	}
	var v kitexValue
	dec := json.NewDecoder(bytes.NewReader(value))
	if err := dec.Decode(&v); err != nil {
		return fail("value is not registry-etcd's JSON: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the JSON value")
	}
	if v.Network != "" && v.Network != "tcp" && v.Network != "tcp4" && v.Network != "tcp6" {
		return fail("network %s is not tcp", quote(v.Network))
	}
	e := endpoint.Endpoint{Service: service, ID: name, Addr: v.Address, Weight: v.Weight}
	if e.Weight <= 0 {
		e.Weight = endpoint.DefaultWeight
	}
	if e.Weight > endpoint.MaxWeight {
		e.Weight = endpoint.MaxWeight
	}
	if len(v.Tags) > 0 {
		e.Tags = make(map[string]string, len(v.Tags))
		for k, t := range v.Tags {
			switch k {
			case "zone":
				e.Zone = t
			case "version":
				e.Version = t
			default:
				e.Tags[k] = t
			}
		}
		if len(e.Tags) == 0 {
			e.Tags = nil
		}
	}
	if err := e.Validate(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}

// GoKit is the format of go-kit's sd/etcdv3: any key under a prefix, and the
// instance string as the value, "host:port" or a URL such as
// "http://host:port/path" (only host and port are kept). The namespace and
// service together make go-kit's prefix: namespace "/services" and service
// "foosvc" read go-kit's "/services/foosvc/".
var GoKit Format = goKit{}

type goKit struct{}

func (goKit) Name() string { return "go-kit" }

func (goKit) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

// Encode writes the address under the endpoint's ID, as go-kit's examples
// register ("/services/foosvc/1.2.3.4:8080" = "1.2.3.4:8080").
func (f goKit) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	return f.Prefix(namespace, e.Service) + e.ID, []byte(e.Addr), nil
}

func (goKit) Decode(service, name string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: go-kit %s/%s: %s", ErrMalformed, service, quote(name), fmt.Sprintf(format, args...))
	}
	if name == "" {
		return fail("empty instance name")
	}
	s := strings.TrimSpace(string(value))
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		if scheme == "" || strings.ContainsAny(scheme, "/:") {
			return fail("value %s is not host:port or a URL", quote(s))
		}
		s = rest
	}
	if i := strings.IndexAny(s, "/?#"); i >= 0 {
		s = s[:i]
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return fail("value %s: no host:port in it", quote(string(value)))
	}
	e := endpoint.Endpoint{Service: service, ID: name, Addr: s}
	if err := e.Validate(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}
