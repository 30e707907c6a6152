package keyfmt

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/mustersd/muster/endpoint"
)

// Kratos is the format of Kratos's etcd registry
// (github.com/go-kratos/kratos/contrib/registry/etcd/v2): key
// <namespace>/<name>/<id>, namespace "/microservices" by default, and the
// value the JSON of Kratos's registry.ServiceInstance:
//
//	/microservices/order/5a1c... = {"id":"5a1c...","name":"order","version":"v1.2.0",
//	    "metadata":{"weight":"5","zone":"eu-1a"},"endpoints":["http://10.0.0.7:8000","grpc://10.0.0.7:9000"]}
//
// Reading a value:
//   - the address is the host:port of the first grpc:// or grpcs://
//     endpoint; an instance without one is malformed (skipped and counted):
//     Muster's clients speak gRPC only. A grpcs:// instance wants TLS from
//     the client;
//   - the instance id is the key's last part (Kratos writes its ID there);
//   - a value whose "name" is not the service is malformed: Kratos's prefix
//     "/microservices/foo" also holds "/microservices/foo/bar/..." of a
//     service "foo/bar", and Kratos skips those by name, as Muster does
//     (Muster's own prefix, "/microservices/foo/", already keeps "foobar" out);
//   - version is the version (dropped if it holds white space or control
//     characters, which Muster's versions cannot);
//   - metadata["weight"], a decimal integer in 1..10000, is the weight
//     (absent or anything else: the default 10; above 10000: 10000; those
//     and "10" stay tags too, so that they are written back as they were);
//     metadata["zone"], when it is not empty and has no white space, is
//     the zone; the rest of the metadata are the tags. Weights are copied
//     as they are, not rescaled: Kratos's default weight is 100, Muster's
//     10;
//   - when the endpoints are anything but the one grpc://<addr>, e.g. an
//     HTTP endpoint beside it, the whole list is kept, as a JSON array, in
//     the tag KratosEndpointsTag, so that writing the endpoint back in this
//     format gives Kratos the same list.
//
// Encode writes what Kratos's registry writes: json.Marshal of a
// ServiceInstance with the endpoint's ID, service, version, metadata (its
// tags, plus "zone" when set, and "weight" when set to other than Muster's
// default 10, so that Kratos gives an instance without a configured weight
// its own default, as it does its own instances) and
// endpoints (the list in KratosEndpointsTag when its first gRPC endpoint
// is the endpoint's address, else ["grpc://<addr>"]). So a value decoded
// and encoded again is the value Kratos wrote, member for member, as long
// as its version has no white space, its metadata no empty or reserved
// (KratosEndpointsTag) key, and its id is the key's last part, as Kratos
// writes it.
var Kratos Format = kratos{}

// KratosEndpointsTag is the tag in which the Kratos format keeps an
// instance's endpoint list when it is more than its gRPC address, as a JSON
// array of strings: ["http://10.0.0.7:8000","grpc://10.0.0.7:9000"]. The
// name is reserved: a Kratos metadata member of that name is not read.
const KratosEndpointsTag = "kratos.endpoints"

// DefaultKratosNamespace is where Kratos's etcd registry writes.
const DefaultKratosNamespace = "/microservices"

type kratos struct{}

// kratosValue is Kratos's registry.ServiceInstance, member for member.
type kratosValue struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []string          `json:"endpoints"`
}

func (kratos) Name() string { return "kratos" }

func (kratos) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

func (f kratos) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	eps := []string{"grpc://" + e.Addr}
	if s, ok := e.Tags[KratosEndpointsTag]; ok {
		var list []string
		if json.Unmarshal([]byte(s), &list) == nil && firstGRPC(list) == e.Addr {
			eps = list
		}
	}
	v, err := json.Marshal(kratosValue{ID: e.ID, Name: e.Service, Version: e.Version, Metadata: toStringMeta(e, KratosEndpointsTag), Endpoints: eps})
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", e, err)
	}
	return f.Prefix(namespace, e.Service) + e.ID, v, nil
}

func (kratos) Decode(service, name string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: kratos %s/%s: %s", ErrMalformed, service, quote(name), fmt.Sprintf(format, args...))
	}
	if name == "" {
		return fail("empty instance id")
	}
	var v kratosValue
	dec := json.NewDecoder(bytes.NewReader(value))
	if err := dec.Decode(&v); err != nil {
		return fail("value is not a Kratos ServiceInstance: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the JSON value")
	}
	if v.Name != service {
		return fail("instance of service %s, not of this one (Kratos skips it too)", quote(v.Name))
	}
	addr := firstGRPC(v.Endpoints)
	if addr == "" {
		return fail("no grpc:// or grpcs:// endpoint in %s", quote(fmt.Sprint(v.Endpoints)))
	}
	e := endpoint.Endpoint{Service: service, ID: name, Addr: addr}
	if plainText(v.Version) {
		e.Version = v.Version
	}
	fromStringMeta(&e, v.Metadata)
	delete(e.Tags, KratosEndpointsTag) // reserved: a metadata member of that name is dropped
	if len(e.Tags) == 0 {
		e.Tags = nil
	}
	if len(v.Endpoints) != 1 || v.Endpoints[0] != "grpc://"+addr {
		list, _ := json.Marshal(v.Endpoints) // strings always marshal
		if e.Tags == nil {
			e.Tags = map[string]string{}
		}
		e.Tags[KratosEndpointsTag] = string(list)
	}
	if err := e.Validate(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}

// firstGRPC returns the host:port of the first grpc:// or grpcs:// URL in
// endpoints, as Kratos's gRPC resolver picks it (endpoint.ParseEndpoint),
// or "" if there is none. Entries that are not URLs are passed over.
func firstGRPC(endpoints []string) string {
	for _, s := range endpoints {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		if u.Scheme == "grpc" || u.Scheme == "grpcs" {
			return u.Host
		}
	}
	return ""
}

// fromStringMeta fills e's weight, zone and tags from the string metadata
// of Kratos and go-micro instances. "weight" becomes the weight when it is
// written as Muster writes weights (a decimal in 1..MaxWeight, no sign or
// leading zero) and is not the default; an integer above MaxWeight counts
// as MaxWeight and stays a tag, so that it is written back as it was;
// anything else, the default included, stays a tag and the weight is the
// default. "zone" becomes the zone when it is not empty and has no white
// space, else it stays a tag. Tags with an empty name are dropped (Muster's
// tags need a name).
func fromStringMeta(e *endpoint.Endpoint, meta map[string]string) {
	tags := make(map[string]string, len(meta))
	for k, v := range meta {
		switch {
		case k == "":
		case k == "weight":
			w, err := strconv.Atoi(v)
			switch {
			case err == nil && w > 0 && w <= endpoint.MaxWeight && w != endpoint.DefaultWeight && strconv.Itoa(w) == v:
				e.Weight = w
			case err == nil && w > endpoint.MaxWeight:
				e.Weight = endpoint.MaxWeight
				tags[k] = v
			default:
				tags[k] = v
			}
		case k == "zone" && v != "" && plainText(v):
			e.Zone = v
		default:
			tags[k] = v
		}
	}
	if len(tags) > 0 {
		e.Tags = tags
	}
}

// toStringMeta is the inverse of fromStringMeta: e's tags (but skip), plus
// "weight" when set to other than the default and "zone" when set, unless
// already tags; nil when empty. The default weight is left out so that the
// other system applies its own default, as it does to its own instances
// registered without a weight (Kratos's is 100): Muster's servers, whose
// weight is 10 unless configured, are not weighed below them.
func toStringMeta(e endpoint.Endpoint, skip string) map[string]string {
	meta := maps.Clone(e.Tags)
	delete(meta, skip)
	if meta == nil {
		meta = map[string]string{}
	}
	if _, ok := meta["weight"]; !ok && e.Weight > 0 && e.Weight != endpoint.DefaultWeight {
		meta["weight"] = strconv.Itoa(e.Weight)
	}
	if _, ok := meta["zone"]; !ok && e.Zone != "" {
		meta["zone"] = e.Zone
	}
	if len(meta) == 0 {
		return nil
	}
	return meta
}

// plainText reports whether s is valid UTF-8 without white space or control
// characters, as Muster's zones, versions and ids must be.
func plainText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}
