package keyfmt

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/mustersd/muster/endpoint"
)

func TestNativeEncode(t *testing.T) {
	e := endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080", Zone: "eu-1a", Version: "1.4.2", Tags: map[string]string{"canary": "true"}}
	key, val, err := Native.Encode("services", e, 0)
	if err != nil {
		t.Fatal(err)
	}
	if key != "services/order.rpc/10.0.0.7:8080" {
		t.Fatalf("key = %q", key)
	}
	want := `{"Addr":"10.0.0.7:8080","Metadata":{"weight":10,"zone":"eu-1a","version":"1.4.2","tags":{"canary":"true"}}}`
	if string(val) != want {
		t.Fatalf("value =\n%s\nwant\n%s", val, want)
	}
	got, err := Native.Decode("order.rpc", strings.TrimPrefix(key, Native.Prefix("services", "order.rpc")), val)
	if err != nil {
		t.Fatal(err)
	}
	if !endpoint.Equal(got, e.Normalize()) {
		t.Fatalf("round trip: got %+v, want %+v", got, e.Normalize())
	}
}

func TestNativeEncodeRejectsInvalid(t *testing.T) {
	_, _, err := Native.Encode("services", endpoint.Endpoint{Service: "a/b", Addr: "h:1"}, 0)
	if !errors.Is(err, endpoint.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}

func TestNativePrefix(t *testing.T) {
	for _, tt := range []struct{ ns, want string }{
		{"services", "services/order/"},
		{"services/", "services/order/"},
		{"/microservices", "/microservices/order/"},
		{"", "order/"},
	} {
		if got := Native.Prefix(tt.ns, "order"); got != tt.want {
			t.Errorf("Prefix(%q) = %q, want %q", tt.ns, got, tt.want)
		}
	}
}

func TestNativeDecode(t *testing.T) {
	tests := []struct {
		name    string
		id      string
		value   string
		want    endpoint.Endpoint
		wantErr string
	}{
		// What etcd's endpoints.Manager writes: json.Marshal of its internal
		// Update{Op, Addr, Metadata}.
		{name: "etcd manager, nil metadata", id: "a", value: `{"Op":0,"Addr":"127.0.0.1:1","Metadata":null}`,
			want: endpoint.Endpoint{Service: "s", ID: "a", Addr: "127.0.0.1:1"}},
		{name: "etcd manager, string metadata", id: "a", value: `{"Op":0,"Addr":"127.0.0.1:1","Metadata":"anything"}`,
			want: endpoint.Endpoint{Service: "s", ID: "a", Addr: "127.0.0.1:1"}},
		{name: "foreign metadata object", id: "a", value: `{"Addr":"127.0.0.1:1","Metadata":{"region":"x","weight":3}}`,
			want: endpoint.Endpoint{Service: "s", ID: "a", Addr: "127.0.0.1:1", Weight: 3}},
		{name: "weight zero", id: "a", value: `{"Addr":"h:1","Metadata":{"weight":0}}`,
			want: endpoint.Endpoint{Service: "s", ID: "a", Addr: "h:1"}},
		{name: "not json", id: "a", value: `10.0.0.1:80`, wantErr: "not a JSON object"},
		{name: "empty", id: "a", value: ``, wantErr: "not a JSON object"},
		{name: "no addr", id: "a", value: `{"Metadata":{}}`, wantErr: "addr: empty"},
		{name: "bad addr", id: "a", value: `{"Addr":"nope"}`, wantErr: "want host:port"},
		{name: "weight float", id: "a", value: `{"Addr":"h:1","Metadata":{"weight":1.5}}`, wantErr: "weight 1.5"},
		{name: "weight huge", id: "a", value: `{"Addr":"h:1","Metadata":{"weight":1e9}}`, wantErr: "weight 1e9"},
		{name: "weight string", id: "a", value: `{"Addr":"h:1","Metadata":{"weight":"x"}}`, wantErr: "Metadata"},
		{name: "tags wrong type", id: "a", value: `{"Addr":"h:1","Metadata":{"tags":{"a":1}}}`, wantErr: "Metadata"},
		{name: "trailing", id: "a", value: `{"Addr":"h:1"} {}`, wantErr: "trailing"},
		{name: "empty id", id: "", value: `{"Addr":"h:1"}`, wantErr: "empty instance id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Native.Decode("s", tt.id, []byte(tt.value))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("Decode = %+v, %v; want ErrMalformed containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !endpoint.Equal(got, tt.want) {
				t.Fatalf("Decode = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSplitKey(t *testing.T) {
	for _, tt := range []struct {
		ns, key, service, id string
		ok                   bool
	}{
		{"services", "services/order/10.0.0.1:80", "order", "10.0.0.1:80", true},
		{"services", "services/order/a/b", "order", "a/b", true},
		{"services", "services/order/", "", "", false},
		{"services", "services/order", "", "", false},
		{"services", "other/order/x", "", "", false},
		{"/microservices", "/microservices/x/1", "x", "1", true},
	} {
		s, id, ok := SplitKey(tt.ns, tt.key)
		if s != tt.service || id != tt.id || ok != tt.ok {
			t.Errorf("SplitKey(%q, %q) = %q, %q, %v; want %q, %q, %v", tt.ns, tt.key, s, id, ok, tt.service, tt.id, tt.ok)
		}
	}
}

// FuzzNativeDecode checks that Decode is total and that whatever it accepts
// is a valid endpoint that survives an Encode/Decode round trip.
func FuzzNativeDecode(f *testing.F) {
	for _, s := range []string{
		`{"Addr":"10.0.0.7:8080","Metadata":{"weight":10,"zone":"eu-1a","version":"1.4.2","tags":{"canary":"true"}}}`,
		`{"Op":0,"Addr":"127.0.0.1:1","Metadata":null}`,
		`{"Addr":"[::1]:80","Metadata":[1,2]}`,
		`{"Addr":"h:1","Metadata":{"weight":-1}}`,
		`garbage`, ``, `{}`, `null`, `[]`,
	} {
		f.Add("order.rpc", "10.0.0.7:8080", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, id string, value []byte) {
		e, err := Native.Decode(service, id, value)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("Decode accepted an invalid endpoint %+v: %v", e, err)
		}
		if e.Service != service || e.ID != id {
			t.Fatalf("Decode changed service/id: %+v", e)
		}
		key, v2, err := Native.Encode("ns", e, 0)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", e, err)
		}
		if !json.Valid(v2) {
			t.Fatalf("Encode wrote invalid JSON %q", v2)
		}
		e2, err := Native.Decode(service, strings.TrimPrefix(key, Native.Prefix("ns", service)), v2)
		if err != nil || !endpoint.Equal(e, e2) {
			t.Fatalf("round trip: %+v -> %s -> %+v, %v", e, v2, e2, err)
		}
	})
}
