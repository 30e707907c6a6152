package endpoint

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	good := Endpoint{Service: "order.rpc", Addr: "10.0.0.7:8080"}
	tests := []struct {
		name    string
		mutate  func(*Endpoint)
		wantErr string // substring; "" means valid
	}{
		{"minimal", func(*Endpoint) {}, ""},
		{"ipv6", func(e *Endpoint) { e.Addr = "[::1]:9000" }, ""},
		{"hostname", func(e *Endpoint) { e.Addr = "order-0.order.svc:443" }, ""},
		{"full", func(e *Endpoint) {
			e.ID, e.Zone, e.Version, e.Weight, e.Tags = "i-1", "eu-1a", "1.4.2", 10000, map[string]string{"canary": "true"}
		}, ""},
		{"empty service", func(e *Endpoint) { e.Service = "" }, "service: empty"},
		{"slash in service", func(e *Endpoint) { e.Service = "order/v2" }, "contains '/'"},
		{"space in service", func(e *Endpoint) { e.Service = "order rpc" }, "white space"},
		{"empty addr", func(e *Endpoint) { e.Addr = "" }, "addr: empty"},
		{"no port", func(e *Endpoint) { e.Addr = "10.0.0.7" }, "want host:port"},
		{"port zero", func(e *Endpoint) { e.Addr = "10.0.0.7:0" }, "port \"0\""},
		{"port too big", func(e *Endpoint) { e.Addr = "10.0.0.7:70000" }, "port \"70000\""},
		{"port not number", func(e *Endpoint) { e.Addr = "10.0.0.7:http" }, "port \"http\""},
		{"empty host", func(e *Endpoint) { e.Addr = ":8080" }, "empty host"},
		{"negative weight", func(e *Endpoint) { e.Weight = -1 }, "weight -1 out of range"},
		{"weight too big", func(e *Endpoint) { e.Weight = 10001 }, "weight 10001 out of range"},
		{"control char in id", func(e *Endpoint) { e.ID = "a\nb" }, "id \"a\\nb\""},
		{"space in zone", func(e *Endpoint) { e.Zone = "eu 1" }, "zone"},
		{"empty tag name", func(e *Endpoint) { e.Tags = map[string]string{"": "x"} }, "empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := good
			tt.mutate(&e)
			err := e.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestNormalizeAndWeight(t *testing.T) {
	e := Endpoint{Service: "s", Addr: "127.0.0.1:1"}.Normalize()
	if e.ID != "127.0.0.1:1" {
		t.Fatalf("ID = %q, want the address", e.ID)
	}
	if got := e.EffectiveWeight(); got != DefaultWeight {
		t.Fatalf("EffectiveWeight() = %d, want %d", got, DefaultWeight)
	}
	e.Weight = 3
	if got := e.EffectiveWeight(); got != 3 {
		t.Fatalf("EffectiveWeight() = %d, want 3", got)
	}
}

func TestEqualAndClone(t *testing.T) {
	a := Endpoint{Service: "s", ID: "i", Addr: "h:1", Tags: map[string]string{"k": "v"}}
	b := a.Clone()
	if !Equal(a, b) {
		t.Fatal("clone not equal")
	}
	b.Tags["k"] = "w"
	if a.Tags["k"] != "v" {
		t.Fatal("Clone shares Tags")
	}
	if Equal(a, b) {
		t.Fatal("different tags compare equal")
	}
	c := a
	c.Weight = DefaultWeight
	if !Equal(a, c) {
		t.Fatal("weight 0 and the default weight should be equal")
	}
}

func TestSort(t *testing.T) {
	eps := []Endpoint{{Service: "b", ID: "h:1", Addr: "h:1"}, {Service: "a", ID: "2", Addr: "h:2"}, {Service: "a", ID: "1", Addr: "h:3"}}
	Sort(eps)
	got := eps[0].String() + " " + eps[1].String() + " " + eps[2].String()
	if got != "a/1(h:3) a/2(h:2) b/h:1" {
		t.Fatalf("sorted = %s", got)
	}
}
