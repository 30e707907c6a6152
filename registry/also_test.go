package registry

import (
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
)

func TestParseAlso(t *testing.T) {
	for in, want := range map[string]Also{
		"go-zero":                 {Format: "go-zero"},
		"gozero:order.rpc":        {Format: "go-zero", Service: "order.rpc"},
		"go-zero:dev/order.rpc":   {Format: "go-zero", Namespace: "dev", Service: "order.rpc"},
		"kitex:echo":              {Format: "kitex", Service: "echo"},
		"go-kit:/services/foosvc": {Format: "go-kit", Namespace: "/services", Service: "foosvc"},
		"go-kit:/foosvc/":         {Format: "go-kit", Namespace: "/", Service: "foosvc"},
		"native:prod/order.rpc":   {Format: "native", Namespace: "prod", Service: "order.rpc"},
	} {
		got, err := ParseAlso(in)
		if err != nil || got != want {
			t.Errorf("ParseAlso(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "consul", ":order.rpc", "go-zero:a b"} {
		if _, err := ParseAlso(bad); err == nil {
			t.Errorf("ParseAlso(%q) succeeded", bad)
		}
	}
}

// TestAlso: a registrar publishing in go-zero and Kitex format too writes
// their keys under the same lease, removes them with the endpoint, and
// revokes them all on Close.
func TestAlso(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	r := newRegistrar(t, cli, WithTTL(2*time.Second), WithAlso(Also{Format: "go-zero"}, Also{Format: "kitex", Service: "order"}))
	e := endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:8080", Weight: 3}
	if err := r.Register(ctxT(t, 5*time.Second), e); err != nil {
		t.Fatal(err)
	}
	all := func() map[string]string {
		resp, err := cli.Get(ctxT(t, 5*time.Second), "", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, kv := range resp.Kvs {
			m[string(kv.Key)] = string(kv.Value)
		}
		return m
	}
	got := all()
	var goZeroKey string
	for k, v := range got {
		if strings.HasPrefix(k, "order.rpc/") {
			goZeroKey = k
			if v != "127.0.0.1:8080" {
				t.Errorf("go-zero value %q", v)
			}
		}
	}
	kitexVal := got["kitex/registry-etcd/order/127.0.0.1:8080"]
	if len(got) != 3 || goZeroKey == "" || got["services/order.rpc/127.0.0.1:8080"] == "" || kitexVal == "" {
		t.Fatalf("keys after Register: %v", got)
	}
	if ke, err := keyfmt.Kitex.Decode("order", "127.0.0.1:8080", []byte(kitexVal)); err != nil || ke.Weight != 3 {
		t.Fatalf("kitex value %s decodes to %+v, %v", kitexVal, ke, err)
	}
	resp, err := cli.Get(ctxT(t, 5*time.Second), goZeroKey)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 || resp.Kvs[0].Lease != int64(r.Status().LeaseID) {
		t.Fatalf("go-zero key not under the registrar's lease: %+v, %v", resp, err)
	}

	if err := r.Deregister(ctxT(t, 5*time.Second), e); err != nil {
		t.Fatal(err)
	}
	if got := all(); len(got) != 0 {
		t.Fatalf("keys after Deregister: %v", got)
	}
	if err := r.Register(ctxT(t, 5*time.Second), e); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if got := all(); len(got) != 0 {
		t.Fatalf("keys after Close: %v", got)
	}
}

func TestAlsoInvalid(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	if _, err := New(cli, WithAlso(Also{Format: "consul"})); err == nil || !strings.Contains(err.Error(), "consul") {
		t.Fatalf("New with an unknown format = %v", err)
	}
}
