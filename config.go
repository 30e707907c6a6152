package muster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdclient"
	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/registry"
)

// Defaults of Config, applied by WithDefaults.
const (
	// DefaultNamespace is the first segment of every key Muster writes.
	DefaultNamespace = keyfmt.DefaultNamespace
	// DefaultTTL is the lease TTL: an instance that dies without
	// deregistering is dropped by every client within this time.
	DefaultTTL = 10 * time.Second
	// DefaultDialTimeout bounds the first connection to etcd.
	DefaultDialTimeout = 5 * time.Second
	// DefaultDrainDelay is how long a stopping server keeps serving after its
	// key left etcd, so that every client has dropped it before it closes.
	// Measured: grpc-go clients lose nothing even with no delay (muster
	// demo --drain-delay 0 --health-check=false, 500 requests/s: 0 failed
	// in every run), because GracefulStop's GOAWAY makes them retry the
	// refused streams elsewhere; and Muster's resolvers see a deletion in
	// a few milliseconds (bench/cmd/resolve: p99 14-34 ms across 1,000
	// ClientConns on 2 cores). The delay is for the clients that have
	// neither: other languages' clients and proxies that do not retry
	// refused streams, and resolvers on an etcd member that lags the
	// leader (by up to an election timeout, 1s by default). One second
	// covers both, and adds one second per instance to a rolling restart.
	DefaultDrainDelay = time.Second
	// DefaultBalancer is the load-balancing policy of clients.
	DefaultBalancer = "muster_p2c"
	// DefaultShutdownTimeout bounds how long the RPCs in flight may take to
	// finish (GracefulStop) before the server closes their connections.
	DefaultShutdownTimeout = 10 * time.Second
)

// Config configures a Muster server or client. Its YAML shape follows
// go-zero's (Name, ListenOn, Etcd: {Hosts, Key, User, Pass, CertFile,
// CertKeyFile, CACertFile}), so that a go-zero service configuration needs
// few changes. Zero values mean the documented defaults.
type Config struct {
	// Name is the service name: the one a server registers, or the one a
	// client calls, e.g. "order.rpc". It contains no '/'. Etcd.Key is
	// accepted instead, as go-zero writes it.
	Name string `yaml:"Name,omitempty"`
	// ListenOn is the server's listen address, "host:port"; "0.0.0.0:8080"
	// or ":8080" listen on every interface, port 0 picks a free port.
	ListenOn string `yaml:"ListenOn,omitempty"`
	// Advertise is the address registered in etcd, "host" or "host:port"
	// (the listen port is used when it has none). When it is empty and
	// ListenOn's host is a specific address, that address is advertised;
	// when ListenOn listens on every interface, the environment variable
	// POD_IP is used, else the machine's first non-loopback address.
	Advertise string `yaml:"Advertise,omitempty"`
	// Etcd says how to reach etcd and where the service lives in it.
	Etcd EtcdConfig `yaml:"Etcd"`
	// Endpoints, for a client without etcd, is a fixed list of instances:
	// "host:port", optionally followed by ";key=value" metadata, where the
	// keys weight, zone and version set those fields and any other key is a
	// tag: "10.0.0.7:8080;weight=5;zone=eu-1a;canary=true". A client uses
	// exactly one of Etcd.Hosts, Endpoints and Target.
	Endpoints []string `yaml:"Endpoints,omitempty"`
	// Target, for a client without etcd, is any gRPC target, e.g.
	// "dns:///order-rpc.default.svc.cluster.local:8080" for a Kubernetes
	// headless service.
	Target string `yaml:"Target,omitempty"`
	// Balancer is a client's load-balancing policy: muster_p2c (the
	// default: power of two choices on latency and load), muster_weighted
	// (the registered weights), round_robin or pick_first.
	Balancer string `yaml:"Balancer,omitempty"`
	// Metadata is what a server registers beside its address; a client's
	// Metadata.Zone is the zone its balancer prefers.
	Metadata Metadata `yaml:"Metadata,omitempty"`
	// Shutdown is how a server leaves.
	Shutdown ShutdownConfig `yaml:"Shutdown,omitempty"`
}

// EtcdConfig says how to reach etcd, in go-zero's field names.
type EtcdConfig struct {
	// Hosts are the etcd members, "host:port" or "https://host:port".
	Hosts []string `yaml:"Hosts,omitempty"`
	// Key is go-zero's name for the service name; use Config.Name or Key,
	// not two different ones.
	Key string `yaml:"Key,omitempty"`
	// Namespace is the key prefix the services live under. Unset, it is
	// "services" for Muster's own keys ("services/<name>/<instance>"), and
	// each format's own for Formats (none for go-zero and go-kit,
	// "kitex/registry-etcd" for Kitex, "/microservices" for Kratos,
	// "/micro/registry" for go-micro).
	Namespace string `yaml:"Namespace,omitempty"`
	// User and Pass are the etcd user's credentials, when etcd has
	// authentication on.
	User string `yaml:"User,omitempty"`
	// Pass is User's password.
	Pass string `yaml:"Pass,omitempty"`
	// CACertFile is the PEM file of the CA that signed etcd's certificate;
	// setting it (or CertFile) turns TLS on.
	CACertFile string `yaml:"CACertFile,omitempty"`
	// CertFile and CertKeyFile are the client's PEM certificate and key, for
	// etcd's client certificate authentication.
	CertFile string `yaml:"CertFile,omitempty"`
	// CertKeyFile is CertFile's private key.
	CertKeyFile string `yaml:"CertKeyFile,omitempty"`
	// InsecureSkipVerify turns off the verification of etcd's certificate.
	InsecureSkipVerify bool `yaml:"InsecureSkipVerify,omitempty"`
	// DialTimeout bounds the first connection to etcd. Default 5s.
	DialTimeout time.Duration `yaml:"DialTimeout,omitempty"`
	// TTL is the lease TTL of a server's registration, whole seconds, at
	// least 2s. Default 10s.
	TTL time.Duration `yaml:"TTL,omitempty"`
	// Also, for a server during a migration, publishes its endpoint in other
	// systems' formats too, each written FORMAT[:KEY]: "go-zero" (go-zero
	// clients with Etcd.Key = Name find it), "go-zero:dev/order.rpc",
	// "kitex:order", "go-kit:/services/order". See registry.ParseAlso.
	Also []string `yaml:"Also,omitempty"`
	// Formats, for a client during a migration, are the formats whose
	// instances it reads and merges, one per address: e.g. [native,
	// go-zero] for a service registered partly by Muster and partly by
	// go-zero (whose Key is then Name, or Namespace/Name). Default [native].
	Formats []string `yaml:"Formats,omitempty"`
}

// Metadata is registered with a server's address; balancers read it.
type Metadata struct {
	// Weight is the instance's relative share of traffic, 1..10000.
	// Default 10.
	Weight int `yaml:"Weight,omitempty"`
	// Zone is the failure domain the instance runs in, e.g. "eu-1a".
	Zone string `yaml:"Zone,omitempty"`
	// Version is the version of the software the instance runs.
	Version string `yaml:"Version,omitempty"`
	// Tags are free-form labels, e.g. {canary: "true"}.
	Tags map[string]string `yaml:"Tags,omitempty"`
}

// ShutdownConfig is how a server leaves.
type ShutdownConfig struct {
	// DrainDelay is how long the server keeps serving after its key left
	// etcd. Default 1s (see DefaultDrainDelay); a negative value skips it.
	DrainDelay time.Duration `yaml:"DrainDelay,omitempty"`
	// Timeout bounds how long the RPCs in flight may take to finish once
	// the server stops accepting new ones; after it their connections are
	// closed. Default 10s.
	Timeout time.Duration `yaml:"Timeout,omitempty"`
}

// LoadConfig reads a YAML configuration file, applies the defaults and
// validates it. Unknown fields are errors, so that a misspelt field is not
// silently ignored.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses a YAML configuration, applies the defaults and
// validates it.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Marshal returns c as YAML, in the shape LoadConfig reads.
func (c Config) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// WithDefaults returns c with every unset field that has a default set to it.
func (c Config) WithDefaults() Config {
	if c.Name == "" {
		c.Name = c.Etcd.Key
	}
	if c.Etcd.DialTimeout == 0 {
		c.Etcd.DialTimeout = DefaultDialTimeout
	}
	if c.Etcd.TTL == 0 {
		c.Etcd.TTL = DefaultTTL
	}
	if c.Metadata.Weight == 0 {
		c.Metadata.Weight = endpoint.DefaultWeight
	}
	if c.Shutdown.DrainDelay == 0 {
		c.Shutdown.DrainDelay = DefaultDrainDelay
	}
	if c.Shutdown.Timeout == 0 {
		c.Shutdown.Timeout = DefaultShutdownTimeout
	}
	return c
}

// Validate reports every field of c that is not valid; each error names the
// field, in its YAML spelling (e.g. "Etcd.TTL"). Unset fields are valid:
// what a server or a client needs on top is checked by NewServer and
// NewClient.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fieldError(field, fmt.Sprintf(format, args...)))
	}
	if c.Name != "" {
		if err := endpoint.ValidateService(c.Name); err != nil {
			bad("Name", "%v", err)
		}
	}
	if c.Etcd.Key != "" && c.Name != "" && c.Etcd.Key != c.Name {
		bad("Etcd.Key", "%q differs from Name %q; set one of them", c.Etcd.Key, c.Name)
	} else if c.Etcd.Key != "" && c.Name == "" {
		if err := endpoint.ValidateService(c.Etcd.Key); err != nil {
			bad("Etcd.Key", "%v", err)
		}
	}
	if c.ListenOn != "" {
		if _, port, err := net.SplitHostPort(c.ListenOn); err != nil {
			bad("ListenOn", "%q is not host:port: %v", c.ListenOn, stripAddrErr(err))
		} else if !validPort(port) {
			bad("ListenOn", "%q: port %q is not a number from 0 to 65535", c.ListenOn, port)
		}
	}
	if c.Advertise != "" {
		if err := validateAdvertise(c.Advertise); err != nil {
			bad("Advertise", "%v", err)
		}
	}
	var sources []string
	for _, src := range []struct {
		field string
		set   bool
	}{{"Etcd.Hosts", len(c.Etcd.Hosts) > 0}, {"Endpoints", len(c.Endpoints) > 0}, {"Target", c.Target != ""}} {
		if src.set {
			sources = append(sources, src.field)
		}
	}
	if len(sources) > 1 {
		bad(strings.Join(sources, ", "), "set only one source of instances: Etcd.Hosts, Endpoints or Target")
	}
	for i, e := range c.Endpoints {
		if _, err := parseStaticEndpoint("x", e); err != nil {
			bad(fmt.Sprintf("Endpoints[%d]", i), "%v", err)
		}
	}
	if c.Target != "" {
		if u, err := url.Parse(c.Target); err != nil || u.Scheme == "" {
			bad("Target", "%q is not a gRPC target such as dns:///host:port", c.Target)
		}
	}
	for i, h := range c.Etcd.Hosts {
		if err := validateHost(h); err != nil {
			bad(fmt.Sprintf("Etcd.Hosts[%d]", i), "%v", err)
		}
	}
	if c.Etcd.Namespace != "" {
		if err := keyfmt.ValidateNamespace(c.Etcd.Namespace); err != nil {
			bad("Etcd.Namespace", "%v", err)
		}
	}
	switch c.Balancer {
	case "", "muster_p2c", "muster_weighted", "round_robin", "pick_first":
	default:
		bad("Balancer", "%q is not one of muster_p2c, muster_weighted, round_robin, pick_first", c.Balancer)
	}
	for i, a := range c.Etcd.Also {
		if _, err := registry.ParseAlso(a); err != nil {
			bad(fmt.Sprintf("Etcd.Also[%d]", i), "%v", strings.TrimPrefix(err.Error(), "registry: "))
		}
	}
	for i, f := range c.Etcd.Formats {
		if _, err := keyfmt.Lookup(f); err != nil || strings.TrimSpace(f) == "" {
			bad(fmt.Sprintf("Etcd.Formats[%d]", i), "%q is not one of %s", f, strings.Join(keyfmt.Names(), ", "))
		}
	}
	if c.Etcd.Pass != "" && c.Etcd.User == "" {
		bad("Etcd.Pass", "set without Etcd.User")
	}
	if (c.Etcd.CertFile == "") != (c.Etcd.CertKeyFile == "") {
		if c.Etcd.CertFile == "" {
			bad("Etcd.CertFile", "required with Etcd.CertKeyFile")
		} else {
			bad("Etcd.CertKeyFile", "required with Etcd.CertFile")
		}
	}
	for _, f := range []struct{ field, path string }{
		{"Etcd.CACertFile", c.Etcd.CACertFile},
		{"Etcd.CertFile", c.Etcd.CertFile},
		{"Etcd.CertKeyFile", c.Etcd.CertKeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			bad(f.field, "%v", err)
		}
	}
	if c.Etcd.DialTimeout < 0 {
		bad("Etcd.DialTimeout", "%v is negative", c.Etcd.DialTimeout)
	}
	if ttl := c.Etcd.TTL; ttl != 0 && (ttl < 2*time.Second || ttl%time.Second != 0) {
		bad("Etcd.TTL", "%v: must be whole seconds, at least 2s", ttl)
	}
	if w := c.Metadata.Weight; w < 0 || w > endpoint.MaxWeight {
		bad("Metadata.Weight", "%d is out of range 1..%d", w, endpoint.MaxWeight)
	}
	// Zone, version and tags are checked the way an endpoint checks them,
	// one field at a time so that the error names the field.
	base := endpoint.Endpoint{Service: "x", Addr: "127.0.0.1:1"}
	for _, f := range []struct {
		field string
		set   func(*endpoint.Endpoint)
	}{
		{"Metadata.Zone", func(e *endpoint.Endpoint) { e.Zone = c.Metadata.Zone }},
		{"Metadata.Version", func(e *endpoint.Endpoint) { e.Version = c.Metadata.Version }},
		{"Metadata.Tags", func(e *endpoint.Endpoint) { e.Tags = c.Metadata.Tags }},
	} {
		e := base
		f.set(&e)
		if err := e.Validate(); err != nil {
			_, detail, _ := strings.Cut(err.Error(), `": `)
			bad(f.field, "%s", detail)
		}
	}
	if c.Shutdown.Timeout < 0 {
		bad("Shutdown.Timeout", "%v is negative", c.Shutdown.Timeout)
	}
	return errors.Join(errs...)
}

// fieldError is an error about a configuration field, named in its YAML
// spelling: "Etcd.TTL: ...".
func fieldError(field, msg string) error { return fmt.Errorf("%s: %s", field, msg) }

// validateServer checks what a server needs beyond Validate.
func (c Config) validateServer() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, fieldError("Name", "required: the service name to register, e.g. order.rpc"))
	}
	if c.ListenOn == "" {
		errs = append(errs, fieldError("ListenOn", "required: the address to listen on, e.g. 0.0.0.0:8080"))
	}
	return errors.Join(append([]error{c.Validate()}, errs...)...)
}

// parseStaticEndpoint parses one entry of Config.Endpoints.
func parseStaticEndpoint(service, s string) (endpoint.Endpoint, error) {
	parts := strings.Split(s, ";")
	e := endpoint.Endpoint{Service: service, Addr: strings.TrimSpace(parts[0])}
	for _, kv := range parts[1:] {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return endpoint.Endpoint{}, fmt.Errorf("%q: metadata %q is not key=value", s, kv)
		}
		switch k {
		case "weight":
			w, err := strconv.Atoi(v)
			if err != nil || w < 1 || w > endpoint.MaxWeight {
				return endpoint.Endpoint{}, fmt.Errorf("%q: weight %q is not a number from 1 to %d", s, v, endpoint.MaxWeight)
			}
			e.Weight = w
		case "zone":
			e.Zone = v
		case "version":
			e.Version = v
		default:
			if e.Tags == nil {
				e.Tags = map[string]string{}
			}
			e.Tags[k] = v
		}
	}
	e = e.Normalize()
	if err := e.Validate(); err != nil {
		return endpoint.Endpoint{}, fmt.Errorf("%q: %w", s, err)
	}
	return e, nil
}

// namespace returns the namespace Muster's own keys live under.
func (c Config) namespace() string {
	if c.Etcd.Namespace == "" {
		return DefaultNamespace
	}
	return c.Etcd.Namespace
}

// etcdConfig turns c's etcd settings into the client configuration.
func (c Config) etcdConfig() etcdclient.Config {
	return etcdclient.Config{
		Endpoints:          slices.Clone(c.Etcd.Hosts),
		Username:           c.Etcd.User,
		Password:           c.Etcd.Pass,
		CACert:             c.Etcd.CACertFile,
		Cert:               c.Etcd.CertFile,
		Key:                c.Etcd.CertKeyFile,
		InsecureSkipVerify: c.Etcd.InsecureSkipVerify,
		DialTimeout:        c.Etcd.DialTimeout,
	}
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	n := 0
	for _, r := range p {
		if r < '0' || r > '9' {
			return false
		}
		n = n*10 + int(r-'0')
	}
	return n <= 65535
}

func validateHost(h string) error {
	if strings.TrimSpace(h) == "" {
		return errors.New("empty")
	}
	rest := h
	if scheme, after, ok := strings.Cut(h, "://"); ok {
		if scheme != "http" && scheme != "https" && scheme != "unix" && scheme != "unixs" {
			return fmt.Errorf("%q: scheme %q is not http or https", h, scheme)
		}
		rest = after
		if scheme == "unix" || scheme == "unixs" {
			return nil
		}
	}
	_, port, err := net.SplitHostPort(rest)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %s", h, stripAddrErr(err))
	}
	if !validPort(port) || port == "0" {
		return fmt.Errorf("%q: port %q is not a number from 1 to 65535", h, port)
	}
	return nil
}

func validateAdvertise(a string) error {
	if _, port, err := net.SplitHostPort(a); err == nil {
		if !validPort(port) || port == "0" {
			return fmt.Errorf("%q: port %q is not a number from 1 to 65535", a, port)
		}
		return nil
	}
	if strings.ContainsAny(a, " /:") && net.ParseIP(a) == nil {
		return fmt.Errorf("%q is neither a host nor host:port", a)
	}
	return nil
}

// stripAddrErr drops the address net's errors repeat ("address x: missing
// port in address" becomes "missing port in address").
func stripAddrErr(err error) string {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return ae.Err
	}
	return err.Error()
}
