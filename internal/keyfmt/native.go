package keyfmt

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/mustersd/muster/endpoint"
)

// Native is Muster's own format, which is also the format of etcd's gRPC
// naming (go.etcd.io/etcd/client/v3/naming): key <namespace>/<service>/<id>,
// value {"Addr": ..., "Metadata": {...}}.
var Native Format = native{}

type native struct{}

// nativeValue is the JSON value. Field names are capitalised because etcd's
// naming package marshals its struct without json tags.
type nativeValue struct {
	Addr     string          `json:"Addr"`
	Metadata json.RawMessage `json:"Metadata,omitempty"`
}

// nativeMeta is the part of Metadata that Muster understands. Other members
// of the object are ignored.
type nativeMeta struct {
	Weight  *json.Number      `json:"weight,omitempty"`
	Zone    string            `json:"zone,omitempty"`
	Version string            `json:"version,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"`
}

func (native) Name() string { return "native" }

func (native) Prefix(namespace, service string) string {
	return NamespacePrefix(namespace) + service + "/"
}

func (f native) Encode(namespace string, e endpoint.Endpoint, _ int64) (string, []byte, error) {
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return "", nil, err
	}
	w := json.Number(fmt.Sprint(e.EffectiveWeight()))
	meta, err := json.Marshal(nativeMeta{Weight: &w, Zone: e.Zone, Version: e.Version, Tags: e.Tags})
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", e, err)
	}
	v, err := json.Marshal(nativeValue{Addr: e.Addr, Metadata: meta})
	if err != nil {
		return "", nil, fmt.Errorf("encode %s: %w", e, err)
	}
	return f.Prefix(namespace, e.Service) + e.ID, v, nil
}

// Decode reads a value written by Muster or by etcd's endpoints.Manager. The
// instance id is name, the key under the service prefix. Metadata
// that is not a JSON object (etcd's naming allows any value) is ignored; in
// an object, weight, zone, version and tags must have the right types.
func (native) Decode(service, id string, value []byte) (endpoint.Endpoint, error) {
	fail := func(format string, args ...any) (endpoint.Endpoint, error) {
		return endpoint.Endpoint{}, fmt.Errorf("%w: %s/%s: %s", ErrMalformed, service, quote(id), fmt.Sprintf(format, args...))
	}
	if id == "" {
		return fail("empty instance id")
	}
	var v nativeValue
	dec := json.NewDecoder(bytes.NewReader(value))
	if err := dec.Decode(&v); err != nil {
		return fail("value is not a JSON object with Addr: %v", err)
	}
	if dec.More() {
		return fail("trailing data after the JSON value")
	}
	e := endpoint.Endpoint{Service: service, ID: id, Addr: v.Addr}
	if m := bytes.TrimSpace(v.Metadata); len(m) > 0 && m[0] == '{' {
		var meta nativeMeta
		d := json.NewDecoder(bytes.NewReader(m))
		d.UseNumber()
		if err := d.Decode(&meta); err != nil {
			return fail("Metadata: %v", err)
		}
		if meta.Weight != nil {
			w, err := meta.Weight.Int64()
			if err != nil || w < 0 || w > endpoint.MaxWeight {
				return fail("Metadata.weight %s is not an integer in 0..%d", *meta.Weight, endpoint.MaxWeight)
			}
			e.Weight = int(w)
		}
		e.Zone, e.Version, e.Tags = meta.Zone, meta.Version, meta.Tags
		if len(e.Tags) == 0 {
			e.Tags = nil
		}
	}
	if err := e.Validate(); err != nil {
		return fail("%v", err)
	}
	return e, nil
}
