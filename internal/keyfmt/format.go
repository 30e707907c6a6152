package keyfmt

import (
	"errors"
	"strings"

	"github.com/mustersd/muster/endpoint"
)

// DefaultNamespace is the key prefix under which services are registered when
// no namespace is configured.
const DefaultNamespace = "services"

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed endpoint")

// Format maps endpoints to etcd keys and values and back. Implementations are
// stateless and safe for concurrent use.
type Format interface {
	// Name is the format's name as used in configuration, e.g. "native".
	Name() string
	// Prefix is the etcd key prefix holding the instances of service in
	// namespace. It always ends in '/', so that "order" never sees
	// "order-v2".
	Prefix(namespace, service string) string
	// Decode turns one value found under Prefix(namespace, service) into an
	// endpoint of service. name is the key with that prefix cut off. It
	// returns an error wrapping ErrMalformed for anything it cannot use, and
	// never panics.
	Decode(service, name string, value []byte) (endpoint.Endpoint, error)
	// Encode returns the key and value that publish e in namespace. leaseID is
	// the lease the key will be attached to (some formats put it in the key).
	Encode(namespace string, e endpoint.Endpoint, leaseID int64) (key string, value []byte, err error)
}

// NamespacePrefix returns the prefix of every key in namespace: the namespace
// with exactly one trailing '/', or "" for the empty namespace.
func NamespacePrefix(namespace string) string {
	namespace = strings.TrimRight(namespace, "/")
	if namespace == "" {
		return ""
	}
	return namespace + "/"
}

// ValidateNamespace reports whether namespace can be used as a key prefix.
// It may contain '/' (e.g. "prod/services") and may start with one
// ("/microservices"), but has no white space or control characters.
func ValidateNamespace(namespace string) error {
	for _, r := range namespace {
		if r <= ' ' || r == 0x7f {
			return errors.New("namespace " + quote(namespace) + ": contains white space or a control character")
		}
	}
	return nil
}

// SplitKey splits a key found under NamespacePrefix(namespace) into its
// service and instance id. ok is false if key is not of the form
// <namespace>/<service>/<id> with a valid service and a non-empty id.
func SplitKey(namespace, key string) (service, id string, ok bool) {
	rest, found := strings.CutPrefix(key, NamespacePrefix(namespace))
	if !found {
		return "", "", false
	}
	service, id, found = strings.Cut(rest, "/")
	if !found || id == "" || endpoint.ValidateService(service) != nil {
		return "", "", false
	}
	return service, id, true
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
