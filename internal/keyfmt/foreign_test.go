package keyfmt

import (
	"errors"
	"strings"
	"testing"

	"github.com/mustersd/muster/endpoint"
)

func TestGoZero(t *testing.T) {
	e := endpoint.Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080"}
	key, val, err := GoZero.Encode("", e, 0)
	if err != nil {
		t.Fatal(err)
	}
	prefix := GoZero.Prefix("", "order.rpc")
	if prefix != "order.rpc/" || !strings.HasPrefix(key, prefix) || string(val) != "10.0.0.7:8080" {
		t.Fatalf("Encode = %q = %q; want order.rpc/<id> = 10.0.0.7:8080", key, val)
	}
	id := strings.TrimPrefix(key, prefix)
	for _, r := range id {
		if r < '0' || r > '9' {
			t.Fatalf("id %q is not decimal, as go-zero's lease ids are", id)
		}
	}
	again, _, _ := GoZero.Encode("", e, 12345)
	if again != key {
		t.Fatalf("the key depends on the lease: %q then %q", key, again)
	}
	// go-zero's <env>/<name> keys: the environment is the namespace.
	if p := GoZero.Prefix("dev", "order.rpc"); p != "dev/order.rpc/" {
		t.Fatalf("Prefix(dev, order.rpc) = %q", p)
	}
	got, err := GoZero.Decode("order.rpc", "7587868547466620931", []byte("10.0.0.7:8080\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Addr != "10.0.0.7:8080" || got.ID != got.Addr || got.EffectiveWeight() != endpoint.DefaultWeight {
		t.Fatalf("Decode = %+v", got)
	}
	for _, bad := range []string{"", "10.0.0.7", "http://10.0.0.7:8080", "a b:1"} {
		if _, err := GoZero.Decode("order.rpc", "1", []byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

// TestKitex decodes values built exactly as kitex-contrib/registry-etcd
// writes them: etcd_registry.go marshals
//
//	type instanceInfo struct {
//		Network string            `json:"network"`
//		Address string            `json:"address"`
//		Weight  int               `json:"weight"`
//		Tags    map[string]string `json:"tags"`
//	}
//
// under "kitex/registry-etcd/<service>/<address>", and its resolver treats a
// weight <= 0 as the default 10 (discovery.DefaultWeight).
func TestKitex(t *testing.T) {
	if p := Kitex.Prefix(DefaultNamespaceOf(Kitex), "echo"); p != "kitex/registry-etcd/echo/" {
		t.Fatalf("prefix %q", p)
	}
	for _, tc := range []struct {
		value  string
		weight int
		tags   map[string]string
		zone   string
	}{
		{`{"network":"tcp","address":"127.0.0.1:8888","weight":10,"tags":null}`, 10, nil, ""},
		{`{"network":"tcp","address":"127.0.0.1:8888","weight":0,"tags":null}`, 10, nil, ""},
		{`{"network":"tcp","address":"127.0.0.1:8888","weight":-5,"tags":{}}`, 10, nil, ""},
		{`{"network":"tcp","address":"127.0.0.1:8888","weight":3,"tags":{"env":"prod","zone":"a"}}`, 3, map[string]string{"env": "prod"}, "a"},
	} {
		e, err := Kitex.Decode("echo", "127.0.0.1:8888", []byte(tc.value))
		if err != nil {
			t.Fatalf("Decode(%s): %v", tc.value, err)
		}
		if e.Addr != "127.0.0.1:8888" || e.Weight != tc.weight || e.Zone != tc.zone || len(e.Tags) != len(tc.tags) || e.Tags["env"] != tc.tags["env"] {
			t.Errorf("Decode(%s) = %+v", tc.value, e)
		}
	}
	e := endpoint.Endpoint{Service: "echo", Addr: "127.0.0.1:8888", Weight: 5, Zone: "a", Tags: map[string]string{"env": "prod"}}
	key, val, err := Kitex.Encode("kitex/registry-etcd", e, 0)
	if err != nil {
		t.Fatal(err)
	}
	if key != "kitex/registry-etcd/echo/127.0.0.1:8888" || string(val) != `{"network":"tcp","address":"127.0.0.1:8888","weight":5,"tags":{"env":"prod","zone":"a"}}` {
		t.Fatalf("Encode = %q = %s", key, val)
	}
	back, err := Kitex.Decode("echo", "127.0.0.1:8888", val)
	if err != nil || !endpoint.Equal(back, e.Normalize()) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, bad := range []string{``, `{"network":"udp","address":"127.0.0.1:1"}`, `{"address":"nope"}`, `{"address":"h:1"} x`} {
		if _, err := Kitex.Decode("echo", "x", []byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestGoKit(t *testing.T) {
	if p := GoKit.Prefix("/services", "foosvc"); p != "/services/foosvc/" {
		t.Fatalf("prefix %q", p)
	}
	for value, addr := range map[string]string{
		"1.2.3.4:8080":               "1.2.3.4:8080",
		"http://1.2.3.4:8080":        "1.2.3.4:8080",
		"https://svc.local:443/api":  "svc.local:443",
		"grpc://[::1]:9000?x=1":      "[::1]:9000",
		" 10.0.0.1:80 ":              "10.0.0.1:80",
		"tcp://127.0.0.1:7000#frag/": "127.0.0.1:7000",
	} {
		e, err := GoKit.Decode("foosvc", "instance-1", []byte(value))
		if err != nil || e.Addr != addr || e.ID != "instance-1" {
			t.Errorf("Decode(%q) = %+v, %v; want addr %s", value, e, err, addr)
		}
	}
	for _, bad := range []string{"", "1.2.3.4", "http://", "://1.2.3.4:80", "a/b:1"} {
		if _, err := GoKit.Decode("foosvc", "i", []byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", bad, err)
		}
	}
	key, val, err := GoKit.Encode("/services", endpoint.Endpoint{Service: "foosvc", Addr: "1.2.3.4:8080"}, 0)
	if err != nil || key != "/services/foosvc/1.2.3.4:8080" || string(val) != "1.2.3.4:8080" {
		t.Fatalf("Encode = %q = %q, %v", key, val, err)
	}
}

func TestLookupForeign(t *testing.T) {
	for name, want := range map[string]Format{"go-zero": GoZero, "gozero": GoZero, "kitex": Kitex, "go-kit": GoKit, "GoKit": GoKit, "etcd": Native} {
		if f, err := Lookup(name); err != nil || f != want {
			t.Errorf("Lookup(%q) = %v, %v", name, f, err)
		}
	}
	if _, err := Lookup("consul"); err == nil || !strings.Contains(err.Error(), "go-zero") {
		t.Errorf("Lookup(consul) = %v, want an error listing the known formats", err)
	}
}

// fuzzDecode checks what every decoder promises: an error wraps
// ErrMalformed, and an accepted endpoint is valid and of the given service.
func fuzzDecode(t *testing.T, f Format, service, name string, value []byte) {
	e, err := f.Decode(service, name, value)
	if err != nil {
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("%s: error does not wrap ErrMalformed: %v", f.Name(), err)
		}
		return
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("%s: Decode accepted an invalid endpoint %+v: %v", f.Name(), e, err)
	}
	if e.Service != service {
		t.Fatalf("%s: Decode changed the service: %+v", f.Name(), e)
	}
	if _, _, err := f.Encode("ns", e, 1); err != nil {
		t.Fatalf("%s: cannot encode what it decoded (%+v): %v", f.Name(), e, err)
	}
}

func FuzzGoZeroDecode(f *testing.F) {
	for _, s := range []string{"10.0.0.7:8080", "[::1]:80", "", "garbage", "h:99999"} {
		f.Add("order.rpc", "7587868547466620931", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, name string, value []byte) { fuzzDecode(t, GoZero, service, name, value) })
}

func FuzzKitexDecode(f *testing.F) {
	for _, s := range []string{
		`{"network":"tcp","address":"127.0.0.1:8888","weight":10,"tags":null}`,
		`{"network":"tcp","address":"127.0.0.1:8888","weight":3,"tags":{"zone":"a","version":"1"}}`,
		`{"address":"h:1","weight":99999999999}`, `null`, `[]`, ``,
	} {
		f.Add("echo", "127.0.0.1:8888", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, name string, value []byte) { fuzzDecode(t, Kitex, service, name, value) })
}

func FuzzGoKitDecode(f *testing.F) {
	for _, s := range []string{"1.2.3.4:8080", "http://1.2.3.4:8080/x", "grpc://[::1]:1", "://", ""} {
		f.Add("foosvc", "i1", []byte(s))
	}
	f.Fuzz(func(t *testing.T, service, name string, value []byte) { fuzzDecode(t, GoKit, service, name, value) })
}
