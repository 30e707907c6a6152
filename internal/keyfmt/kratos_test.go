package keyfmt

import (
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/mustersd/muster/endpoint"
)

// The values below are written as Kratos's etcd registry writes them
// (contrib/registry/etcd, v2.9.2: registry.go registerKey and service.go
// marshal): key fmt.Sprintf("%s/%s/%s", namespace, Name, ID), value
// json.Marshal(&registry.ServiceInstance{...}), whose members are, in
// order, id, name, version, metadata (map[string]string, null when nil)
// and endpoints ([]string). interop/kratos builds them with Kratos's own
// type.

func TestKratosPrefix(t *testing.T) {
	if ns := DefaultNamespaceOf(Kratos); ns != "/microservices" {
		t.Fatalf("default namespace %q", ns)
	}
	p := Kratos.Prefix(DefaultNamespaceOf(Kratos), "foo")
	if p != "/microservices/foo/" {
		t.Fatalf("prefix %q", p)
	}
	// Kratos lists "/microservices/foo", which also holds "foobar"'s keys,
	// and drops them by name; Muster's prefix never reaches them.
	if strings.HasPrefix("/microservices/foobar/1", p) {
		t.Fatalf("prefix %q holds foobar's keys", p)
	}
	if p := Kratos.Prefix("/ns/", "foo"); p != "/ns/foo/" {
		t.Fatalf("prefix with a trailing slash %q", p)
	}
}

func TestKratosDecode(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        endpoint.Endpoint
	}{
		{
			"one grpc endpoint, no metadata",
			`{"id":"id-1","name":"order","version":"","metadata":null,"endpoints":["grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000"},
		},
		{
			"http and grpc, weight, zone, tags",
			`{"id":"id-1","name":"order","version":"v1.2.0","metadata":{"weight":"5","zone":"eu-1a","env":"prod"},"endpoints":["http://127.0.0.1:8000","grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000", Version: "v1.2.0", Weight: 5, Zone: "eu-1a",
				Tags: map[string]string{"env": "prod", KratosEndpointsTag: `["http://127.0.0.1:8000","grpc://127.0.0.1:9000"]`}},
		},
		{
			"grpcs, and the query Kratos once added",
			`{"id":"id-1","name":"order","version":"","metadata":{},"endpoints":["grpcs://[::1]:9443?isSecure=true","grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "[::1]:9443",
				Tags: map[string]string{KratosEndpointsTag: `["grpcs://[::1]:9443?isSecure=true","grpc://127.0.0.1:9000"]`}},
		},
		{
			"weights Muster does not write stay tags",
			`{"id":"id-1","name":"order","version":"","metadata":{"weight":"0","zone":""},"endpoints":["grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000", Tags: map[string]string{"weight": "0", "zone": ""}},
		},
		{
			"an explicit default weight stays a tag, so that it is written back",
			`{"id":"id-1","name":"order","version":"","metadata":{"weight":"10"},"endpoints":["grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000", Tags: map[string]string{"weight": "10"}},
		},
		{
			"a weight above the maximum counts as the maximum",
			`{"id":"id-1","name":"order","version":"","metadata":{"weight":"20000"},"endpoints":["grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000", Weight: endpoint.MaxWeight, Tags: map[string]string{"weight": "20000"}},
		},
		{
			"a version with white space is dropped, a zone with some stays a tag",
			`{"id":"id-1","name":"order","version":"1.0 beta","metadata":{"zone":"eu 1","weight":"x"},"endpoints":["grpc://127.0.0.1:9000"]}`,
			endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "127.0.0.1:9000", Tags: map[string]string{"zone": "eu 1", "weight": "x"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Kratos.Decode("order", "id-1", []byte(tc.value))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decode = %+v\nwant     %+v", got, tc.want)
			}
			if tc.want.Weight == 0 && got.EffectiveWeight() != endpoint.DefaultWeight {
				t.Fatalf("weight %d, want the default", got.EffectiveWeight())
			}
			// Written back, it is the value Kratos wrote (the dropped
			// version aside).
			key, val, err := Kratos.Encode("/microservices", got, 0)
			if err != nil {
				t.Fatal(err)
			}
			if key != "/microservices/order/id-1" {
				t.Fatalf("key %q", key)
			}
			var in, out kratosValue
			if err := json.Unmarshal([]byte(tc.value), &in); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(val, &out); err != nil {
				t.Fatal(err)
			}
			if !plainText(in.Version) {
				in.Version = ""
			}
			if in.ID != out.ID || in.Name != out.Name || in.Version != out.Version ||
				!maps.Equal(in.Metadata, out.Metadata) || !slices.Equal(in.Endpoints, out.Endpoints) {
				t.Fatalf("written back as %s\nKratos wrote      %s", val, tc.value)
			}
		})
	}
}

func TestKratosDecodeRejects(t *testing.T) {
	for name, value := range map[string]string{
		"no grpc endpoint":      `{"id":"1","name":"order","endpoints":["http://127.0.0.1:8000"]}`,
		"no endpoints":          `{"id":"1","name":"order","endpoints":null}`,
		"grpc without a port":   `{"id":"1","name":"order","endpoints":["grpc://127.0.0.1"]}`,
		"broken JSON":           `{"id":"1","name":"order","endpoints":["grpc://127.0.0.1:9000"]`,
		"trailing data":         `{"id":"1","name":"order","endpoints":["grpc://127.0.0.1:9000"]} {}`,
		"another service":       `{"id":"1","name":"foo/bar","endpoints":["grpc://127.0.0.1:9000"]}`,
		"no name":               `{"id":"1","endpoints":["grpc://127.0.0.1:9000"]}`,
		"metadata not strings":  `{"id":"1","name":"order","metadata":{"weight":5},"endpoints":["grpc://127.0.0.1:9000"]}`,
		"null":                  `null`,
		"empty":                 ``,
		"endpoints not strings": `{"id":"1","name":"order","endpoints":[1]}`,
	} {
		if e, err := Kratos.Decode("order", "1", []byte(value)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode(%s) = %+v, %v; want ErrMalformed", name, value, e, err)
		}
	}
	if _, err := Kratos.Decode("order", "", []byte(`{"id":"","name":"order","endpoints":["grpc://127.0.0.1:9000"]}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty id: %v", err)
	}
}

func TestKratosEncode(t *testing.T) {
	e := endpoint.Endpoint{Service: "order", ID: "id-1", Addr: "10.0.0.7:9000", Version: "v1", Weight: 5, Zone: "a", Tags: map[string]string{"env": "prod"}}
	key, val, err := Kratos.Encode(DefaultNamespaceOf(Kratos), e, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":"id-1","name":"order","version":"v1","metadata":{"env":"prod","weight":"5","zone":"a"},"endpoints":["grpc://10.0.0.7:9000"]}`
	if key != "/microservices/order/id-1" || string(val) != want {
		t.Fatalf("Encode = %q = %s\nwant %s", key, val, want)
	}
	back, err := Kratos.Decode("order", "id-1", val)
	if err != nil || !reflect.DeepEqual(back, e) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	// The bare minimum: the ID defaults to the address; no metadata is null,
	// as Kratos writes a nil map.
	key, val, err = Kratos.Encode("/microservices", endpoint.Endpoint{Service: "order", Addr: "10.0.0.7:9000"}, 0)
	if err != nil || key != "/microservices/order/10.0.0.7:9000" ||
		string(val) != `{"id":"10.0.0.7:9000","name":"order","version":"","metadata":null,"endpoints":["grpc://10.0.0.7:9000"]}` {
		t.Fatalf("Encode = %q = %s, %v", key, val, err)
	}
	// Muster's default weight is left out, for Kratos to apply its own (100)
	// as to its own instances registered without one.
	_, val, _ = Kratos.Encode("/microservices", endpoint.Endpoint{Service: "order", ID: "i", Addr: "10.0.0.7:9000", Weight: endpoint.DefaultWeight}, 0)
	if string(val) != `{"id":"i","name":"order","version":"","metadata":null,"endpoints":["grpc://10.0.0.7:9000"]}` {
		t.Fatalf("default weight written: %s", val)
	}
	// A stale endpoints tag (its gRPC address is not the endpoint's) is
	// not written.
	e = endpoint.Endpoint{Service: "order", ID: "i", Addr: "10.0.0.8:9000", Tags: map[string]string{KratosEndpointsTag: `["http://h:1","grpc://10.0.0.7:9000"]`}}
	if _, val, _ = Kratos.Encode("/microservices", e, 0); string(val) != `{"id":"i","name":"order","version":"","metadata":null,"endpoints":["grpc://10.0.0.8:9000"]}` {
		t.Fatalf("stale tag written: %s", val)
	}
	if _, _, err := Kratos.Encode("/microservices", endpoint.Endpoint{Service: "order"}, 0); err == nil {
		t.Fatal("Encode accepted an endpoint without an address")
	}
}

func TestLookupSecondWave(t *testing.T) {
	for name, want := range map[string]Format{"kratos": Kratos, "Kratos": Kratos, "go-micro": GoMicro, "gomicro": GoMicro, "GoMicro": GoMicro} {
		if f, err := Lookup(name); err != nil || f != want {
			t.Errorf("Lookup(%q) = %v, %v", name, f, err)
		}
	}
	names := Names()
	for _, n := range []string{"kratos", "go-micro"} {
		if !slices.Contains(names, n) {
			t.Errorf("Names() = %v, lacks %s", names, n)
		}
	}
	if ns := DefaultNamespaceOf(GoMicro); ns != "/micro/registry" {
		t.Errorf("go-micro's default namespace %q", ns)
	}
}

// fuzzRoundTrip checks, beyond fuzzDecode, that an accepted value written
// back in the same format reads as the same endpoint, and is then written
// identically: what Muster republishes is stable.
func fuzzRoundTrip(t *testing.T, f Format, service, name string, value []byte) {
	fuzzDecode(t, f, service, name, value)
	e, err := f.Decode(service, name, value)
	if err != nil {
		return
	}
	ns := DefaultNamespaceOf(f)
	key, val, err := f.Encode(ns, e, 0)
	if err != nil {
		t.Fatalf("%s: Encode(%+v): %v", f.Name(), e, err)
	}
	prefix := f.Prefix(ns, service)
	if !strings.HasPrefix(key, prefix) {
		t.Fatalf("%s: key %q is not under %q", f.Name(), key, prefix)
	}
	back, err := f.Decode(service, key[len(prefix):], val)
	if err != nil {
		t.Fatalf("%s: cannot read what it wrote (%s): %v", f.Name(), val, err)
	}
	if !reflect.DeepEqual(back, e) {
		t.Fatalf("%s: round trip\n%+v\nbecame\n%+v (via %s)", f.Name(), e, back, val)
	}
	if _, again, _ := f.Encode(ns, back, 0); string(again) != string(val) {
		t.Fatalf("%s: written twice differently:\n%s\n%s", f.Name(), val, again)
	}
}

func FuzzKratosDecode(f *testing.F) {
	for _, s := range []string{
		`{"id":"id-1","name":"order","version":"v1","metadata":null,"endpoints":["grpc://127.0.0.1:9000"]}`,
		`{"id":"id-1","name":"order","version":"v1","metadata":{"weight":"5","zone":"a","x":"y"},"endpoints":["http://127.0.0.1:8000","grpc://127.0.0.1:9000"]}`,
		`{"id":"id-1","name":"order","metadata":{"weight":"20000","kratos.endpoints":"[]"},"endpoints":["grpcs://[::1]:1?isSecure=true"]}`,
		`{"name":"order","endpoints":["%zz","grpc://h:1"]}`,
		`{"name":"order","endpoints":["http://h:1"]}`,
		`null`, `[]`, ``,
	} {
		f.Add("order", "id-1", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, name string, value []byte) { fuzzRoundTrip(t, Kratos, service, name, value) })
}
