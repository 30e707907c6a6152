package keyfmt

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/mustersd/muster/endpoint"
)

// The values below are written as go-micro's etcd registry writes them
// (registry/etcd/etcd.go: nodePath and encode): key
// path.Join("/micro/registry/", service, node id) with '/' written as '-'
// in both, value json.Marshal(&registry.Service{Name, Version, Metadata,
// Endpoints, Nodes: []*registry.Node{node}}), one node per key.
// interop/gomicro builds them with go-micro's registry types, copied.

func TestGoMicroPrefix(t *testing.T) {
	p := GoMicro.Prefix(DefaultNamespaceOf(GoMicro), "greeter")
	if p != "/micro/registry/greeter/" {
		t.Fatalf("prefix %q", p)
	}
	if strings.HasPrefix("/micro/registry/greeter-v2/1", p) {
		t.Fatalf("prefix %q holds greeter-v2's keys", p)
	}
}

func TestGoMicroDecode(t *testing.T) {
	for _, tc := range []struct {
		name, key, value string
		want             endpoint.Endpoint
	}{
		{
			"go-micro's gRPC server",
			"greeter-1",
			`{"name":"greeter","version":"latest","metadata":null,"endpoints":[{"request":{"name":"Request","type":"Request","values":null},"response":null,"metadata":{"stream":"false"},"name":"Greeter.Hello"}],"nodes":[{"metadata":{"protocol":"grpc","server":"grpc"},"id":"greeter-1","address":"127.0.0.1:9000"}]}`,
			endpoint.Endpoint{Service: "greeter", ID: "greeter-1", Addr: "127.0.0.1:9000", Version: "latest", Tags: map[string]string{"protocol": "grpc", "server": "grpc"}},
		},
		{
			"weight and zone in the node's metadata; a '/' in the id",
			"a-b",
			`{"name":"greeter","version":"","metadata":{"ignored":"yes"},"endpoints":null,"nodes":[{"metadata":{"weight":"7","zone":"eu-1a"},"id":"a/b","address":"[::1]:9000"}]}`,
			endpoint.Endpoint{Service: "greeter", ID: "a/b", Addr: "[::1]:9000", Weight: 7, Zone: "eu-1a"},
		},
		{
			"no node id: the key's",
			"n1",
			`{"name":"greeter","nodes":[{"address":"127.0.0.1:9000"}]}`,
			endpoint.Endpoint{Service: "greeter", ID: "n1", Addr: "127.0.0.1:9000"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := GoMicro.Decode("greeter", tc.key, []byte(tc.value))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Decode = %+v\nwant     %+v", got, tc.want)
			}
		})
	}
}

func TestGoMicroDecodeRejects(t *testing.T) {
	for name, value := range map[string]string{
		"empty nodes":      `{"name":"greeter","version":"latest","nodes":[]}`,
		"no nodes":         `{"name":"greeter","version":"latest"}`,
		"a null node":      `{"name":"greeter","nodes":[null]}`,
		"broken JSON":      `{"name":"greeter","nodes":[{"id":"1","address":"127.0.0.1:9000"}]`,
		"trailing data":    `{"name":"greeter","nodes":[{"id":"1","address":"127.0.0.1:9000"}]}x`,
		"no address":       `{"name":"greeter","nodes":[{"id":"1"}]}`,
		"bad address":      `{"name":"greeter","nodes":[{"id":"1","address":"127.0.0.1"}]}`,
		"id with a space":  `{"name":"greeter","nodes":[{"id":"a b","address":"127.0.0.1:9000"}]}`,
		"metadata numbers": `{"name":"greeter","nodes":[{"id":"1","address":"127.0.0.1:9000","metadata":{"weight":3}}]}`,
		"null":             `null`,
		"empty":            ``,
	} {
		if e, err := GoMicro.Decode("greeter", "1", []byte(value)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode(%s) = %+v, %v; want ErrMalformed", name, value, e, err)
		}
	}
}

func TestGoMicroEncode(t *testing.T) {
	e := endpoint.Endpoint{Service: "greeter", ID: "pod/1", Addr: "10.0.0.7:9000", Version: "1.0.0", Weight: 3, Tags: map[string]string{"env": "prod"}}
	key, val, err := GoMicro.Encode(DefaultNamespaceOf(GoMicro), e, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"greeter","version":"1.0.0","metadata":null,"endpoints":null,"nodes":[{"metadata":{"env":"prod","weight":"3"},"id":"pod/1","address":"10.0.0.7:9000"}]}`
	if key != "/micro/registry/greeter/pod-1" || string(val) != want {
		t.Fatalf("Encode = %q = %s\nwant %s", key, val, want)
	}
	back, err := GoMicro.Decode("greeter", "pod-1", val)
	if err != nil || !reflect.DeepEqual(back, e) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}

func FuzzGoMicroDecode(f *testing.F) {
	for _, s := range []string{
		`{"name":"greeter","version":"latest","metadata":null,"endpoints":null,"nodes":[{"metadata":{"protocol":"grpc"},"id":"greeter-1","address":"127.0.0.1:9000"}]}`,
		`{"name":"greeter","nodes":[{"metadata":{"weight":"20000","zone":"a"},"id":"a/b","address":"[::1]:1"}]}`,
		`{"name":"greeter","nodes":[]}`, `{"nodes":[null]}`, `null`, `[]`, ``,
	} {
		f.Add("greeter", "greeter-1", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, name string, value []byte) {
		fuzzRoundTrip(t, GoMicro, service, name, value)
	})
}
