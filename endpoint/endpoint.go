package endpoint

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Weight bounds. A weight of 0 means "not set" and counts as DefaultWeight.
const (
	DefaultWeight = 10
	MaxWeight     = 10000
)

// ErrInvalid is wrapped by every validation error, so callers can branch on it
// with errors.Is.
var ErrInvalid = errors.New("invalid endpoint")

// Endpoint is one instance of one service.
//
// An Endpoint is a value: copy it freely, but treat Tags as read-only once the
// endpoint has been handed to Muster (snapshots share it between readers).
type Endpoint struct {
	// Service is the logical service name, e.g. "order.rpc". It is not empty
	// and contains no '/'.
	Service string `json:"service"`
	// ID identifies the instance within the service. It defaults to Addr.
	ID string `json:"id"`
	// Addr is where clients connect: "host:port".
	Addr string `json:"addr"`
	// Zone is the failure domain the instance runs in, e.g. "eu-1a". Optional.
	Zone string `json:"zone,omitempty"`
	// Version is the version of the software the instance runs. Optional.
	Version string `json:"version,omitempty"`
	// Weight is the relative share of traffic the instance asks for, 1..10000;
	// 0 means DefaultWeight.
	Weight int `json:"weight,omitempty"`
	// Tags are free-form labels, e.g. {"canary": "true"}.
	Tags map[string]string `json:"tags,omitempty"`
}

// Normalize returns e with defaults filled in: ID defaults to Addr.
// Weight stays as given (0 remains "default"); use EffectiveWeight to read it.
func (e Endpoint) Normalize() Endpoint {
	if e.ID == "" {
		e.ID = e.Addr
	}
	return e
}

// EffectiveWeight returns the weight balancers should use: Weight, or
// DefaultWeight when Weight is 0 or negative.
func (e Endpoint) EffectiveWeight() int {
	if e.Weight <= 0 {
		return DefaultWeight
	}
	return e.Weight
}

// Validate reports the first field of e that is not valid. An empty ID is
// valid (it defaults to Addr).
func (e Endpoint) Validate() error {
	name := e.ID
	if name == "" {
		name = e.Addr
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalid, name, fmt.Sprintf(format, args...))
	}
	if err := ValidateService(e.Service); err != nil {
		return fail("%v", err)
	}
	if err := ValidateAddr(e.Addr); err != nil {
		return fail("%v", err)
	}
	if e.ID != "" {
		if err := validateText("id", e.ID); err != nil {
			return fail("%v", err)
		}
	}
	if e.Weight < 0 || e.Weight > MaxWeight {
		return fail("weight %d out of range 0..%d (0 means %d)", e.Weight, MaxWeight, DefaultWeight)
	}
	if err := validateText("zone", e.Zone); e.Zone != "" && err != nil {
		return fail("%v", err)
	}
	if err := validateText("version", e.Version); e.Version != "" && err != nil {
		return fail("%v", err)
	}
	for k, v := range e.Tags {
		if k == "" {
			return fail("tag with an empty name")
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fail("tag %q is not valid UTF-8", k)
		}
	}
	return nil
}

// ValidateService reports whether name can be used as a service name: not
// empty, no '/', no white space or control characters, valid UTF-8.
func ValidateService(name string) error {
	if name == "" {
		return errors.New("service: empty name")
	}
	if strings.Contains(name, "/") {
		return fmt.Errorf("service %q: contains '/'", name)
	}
	return validateText("service", name)
}

// ValidateAddr reports whether addr is "host:port" with a non-empty host and
// a port in 1..65535. IPv6 hosts are written in brackets: "[::1]:8080".
func ValidateAddr(addr string) error {
	if addr == "" {
		return errors.New("addr: empty")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("addr %q: want host:port: %v", addr, stripAddrErr(err))
	}
	if host == "" {
		return fmt.Errorf("addr %q: empty host", addr)
	}
	if err := validateText("addr", host); err != nil {
		return err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("addr %q: port %q is not a number in 1..65535", addr, port)
	}
	return nil
}

func stripAddrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}

func validateText(field, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q: not valid UTF-8", field, s)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return fmt.Errorf("%s %q: contains white space or a control character", field, s)
		}
	}
	return nil
}

// Equal reports whether a and b describe the same instance with the same
// metadata.
func Equal(a, b Endpoint) bool {
	return a.Service == b.Service && a.ID == b.ID && a.Addr == b.Addr &&
		a.Zone == b.Zone && a.Version == b.Version &&
		a.EffectiveWeight() == b.EffectiveWeight() && maps.Equal(a.Tags, b.Tags)
}

// Clone returns a copy of e that shares no memory with it.
func (e Endpoint) Clone() Endpoint {
	e.Tags = maps.Clone(e.Tags)
	return e
}

// String returns a short human-readable form, e.g. "order.rpc/10.0.0.7:8080".
func (e Endpoint) String() string {
	id := e.ID
	if id == "" {
		id = e.Addr
	}
	if id == e.Addr {
		return e.Service + "/" + e.Addr
	}
	return e.Service + "/" + id + "(" + e.Addr + ")"
}

// Sort orders endpoints by service, then ID, so that snapshots compare and
// print in a stable order.
func Sort(eps []Endpoint) {
	slices.SortFunc(eps, func(a, b Endpoint) int {
		if c := strings.Compare(a.Service, b.Service); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
