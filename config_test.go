package muster

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigRoundTrip: a YAML file that sets every field loads into the
// Config it describes, and marshals back into a file that loads the same.
func TestConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", "x")
	cert := writeFile(t, dir, "cert.pem", "x")
	key := writeFile(t, dir, "key.pem", "x")
	path := writeFile(t, dir, "order.yaml", `
Name: order.rpc
ListenOn: 0.0.0.0:8080
Advertise: 10.0.0.7
Balancer: muster_weighted
Etcd:
  Hosts:
    - 127.0.0.1:2379
    - https://10.0.0.2:2379
  Namespace: prod
  User: order
  Pass: secret
  CACertFile: `+ca+`
  CertFile: `+cert+`
  CertKeyFile: `+key+`
  InsecureSkipVerify: true
  DialTimeout: 3s
  TTL: 15s
  Also: [go-zero, "kitex:order"]
  Formats: [native, go-zero]
Metadata:
  Weight: 20
  Zone: eu-1a
  Version: 1.4.2
  Tags:
    canary: "true"
Shutdown:
  DrainDelay: 2500ms
  Timeout: 30s
`)
	want := Config{
		Name:      "order.rpc",
		ListenOn:  "0.0.0.0:8080",
		Advertise: "10.0.0.7",
		Balancer:  "muster_weighted",
		Etcd: EtcdConfig{
			Hosts:              []string{"127.0.0.1:2379", "https://10.0.0.2:2379"},
			Namespace:          "prod",
			User:               "order",
			Pass:               "secret",
			CACertFile:         ca,
			CertFile:           cert,
			CertKeyFile:        key,
			InsecureSkipVerify: true,
			DialTimeout:        3 * time.Second,
			TTL:                15 * time.Second,
			Also:               []string{"go-zero", "kitex:order"},
			Formats:            []string{"native", "go-zero"},
		},
		Metadata: Metadata{Weight: 20, Zone: "eu-1a", Version: "1.4.2", Tags: map[string]string{"canary": "true"}},
		Shutdown: ShutdownConfig{DrainDelay: 2500 * time.Millisecond, Timeout: 30 * time.Second},
	}
	got, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadConfig:\n got %+v\nwant %+v", got, want)
	}
	b, err := got.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("re-parse of\n%s: %v", b, err)
	}
	if !reflect.DeepEqual(again, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v\nyaml:\n%s", again, want, b)
	}
	if !strings.Contains(string(b), "DrainDelay: 2.5s") {
		t.Errorf("durations should marshal as Go durations; got\n%s", b)
	}
}

// TestConfigDefaults: an empty file gets the documented defaults, and a
// go-zero style file (Etcd.Key) names the service.
func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(""))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Etcd:     EtcdConfig{DialTimeout: DefaultDialTimeout, TTL: DefaultTTL},
		Metadata: Metadata{Weight: 10},
		Shutdown: ShutdownConfig{DrainDelay: DefaultDrainDelay, Timeout: DefaultShutdownTimeout},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}
	c, err = ParseConfig([]byte("Etcd:\n  Hosts: [127.0.0.1:2379]\n  Key: user.rpc\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "user.rpc" {
		t.Fatalf("Etcd.Key did not name the service: Name = %q", c.Name)
	}
}

// TestConfigInvalid: each invalid field gives an error that names it.
func TestConfigInvalid(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.pem")
	for _, tc := range []struct {
		field string
		mod   func(*Config)
	}{
		{"Name", func(c *Config) { c.Name = "order/rpc" }},
		{"Name", func(c *Config) { c.Name = "order rpc" }},
		{"Etcd.Key", func(c *Config) { c.Etcd.Key = "other.rpc" }},
		{"ListenOn", func(c *Config) { c.ListenOn = "8080" }},
		{"ListenOn", func(c *Config) { c.ListenOn = "127.0.0.1:99999" }},
		{"Advertise", func(c *Config) { c.Advertise = "10.0.0.7:0" }},
		{"Advertise", func(c *Config) { c.Advertise = "a host" }},
		{"Etcd.Hosts[1]", func(c *Config) { c.Etcd.Hosts = []string{"127.0.0.1:2379", "127.0.0.1"} }},
		{"Etcd.Hosts[0]", func(c *Config) { c.Etcd.Hosts = []string{"ftp://127.0.0.1:2379"} }},
		{"Etcd.Hosts[0]", func(c *Config) { c.Etcd.Hosts = []string{" "} }},
		{"Etcd.Namespace", func(c *Config) { c.Etcd.Namespace = "a b" }},
		{"Etcd.Pass", func(c *Config) { c.Etcd.User = ""; c.Etcd.Pass = "secret" }},
		{"Etcd.CertKeyFile", func(c *Config) { c.Etcd.CertFile = missing }},
		{"Etcd.CertFile", func(c *Config) { c.Etcd.CertKeyFile = missing }},
		{"Etcd.CACertFile", func(c *Config) { c.Etcd.CACertFile = missing }},
		{"Etcd.DialTimeout", func(c *Config) { c.Etcd.DialTimeout = -time.Second }},
		{"Etcd.TTL", func(c *Config) { c.Etcd.TTL = 1500 * time.Millisecond }},
		{"Etcd.TTL", func(c *Config) { c.Etcd.TTL = time.Second }},
		{"Metadata.Weight", func(c *Config) { c.Metadata.Weight = 20000 }},
		{"Metadata.Weight", func(c *Config) { c.Metadata.Weight = -1 }},
		{"Metadata.Zone", func(c *Config) { c.Metadata.Zone = "eu 1" }},
		{"Metadata.Version", func(c *Config) { c.Metadata.Version = "1.0\n" }},
		{"Metadata.Tags", func(c *Config) { c.Metadata.Tags = map[string]string{"": "x"} }},
		{"Shutdown.Timeout", func(c *Config) { c.Shutdown.Timeout = -time.Second }},
		{"Balancer", func(c *Config) { c.Balancer = "p2c" }},
		{"Etcd.Also[1]", func(c *Config) { c.Etcd.Also = []string{"go-zero", "consul:x"} }},
		{"Etcd.Formats[0]", func(c *Config) { c.Etcd.Formats = []string{"consul"} }},
	} {
		c := Config{Name: "order.rpc", ListenOn: "127.0.0.1:0", Etcd: EtcdConfig{Hosts: []string{"127.0.0.1:2379"}}}
		tc.mod(&c)
		err := c.WithDefaults().Validate()
		if err == nil {
			t.Errorf("%s: Validate(%+v) = nil, want an error", tc.field, c)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.field+": ") {
			t.Errorf("%s: Validate = %q, want it to start with %q", tc.field, err, tc.field+": ")
		}
	}
}

func TestConfigUnknownField(t *testing.T) {
	_, err := ParseConfig([]byte("Name: a.rpc\nEtcd:\n  Hosts: [127.0.0.1:2379]\n  Passwd: x\n"))
	if err == nil || !strings.Contains(err.Error(), "Passwd") || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("ParseConfig with a misspelt field = %v, want an error naming Passwd and its line", err)
	}
	_, err = ParseConfig([]byte("Name: a.rpc\nEtcd:\n  TTL: ten\n"))
	if err == nil || !strings.Contains(err.Error(), "ten") {
		t.Fatalf("ParseConfig with a bad duration = %v, want an error naming the value", err)
	}
	_, err = LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("LoadConfig of a missing file = %v", err)
	}
}

func TestAdvertiseAddr(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	ifaces := func(ips ...string) func() ([]net.Addr, error) {
		return func() ([]net.Addr, error) {
			var as []net.Addr
			for _, s := range ips {
				as = append(as, &net.IPNet{IP: net.ParseIP(s), Mask: net.CIDRMask(24, 32)})
			}
			return as, nil
		}
	}
	none := env(nil)
	for _, tc := range []struct {
		name, advertise, host string
		getenv                func(string) string
		addrs                 func() ([]net.Addr, error)
		want                  string
	}{
		{"explicit host:port", "10.1.1.1:9000", "0.0.0.0", none, ifaces("10.0.0.1"), "10.1.1.1:9000"},
		{"explicit host takes the listen port", "svc.example", "0.0.0.0", none, ifaces("10.0.0.1"), "svc.example:8080"},
		{"specific listen host", "", "127.0.0.1", env(map[string]string{"POD_IP": "10.9.9.9"}), ifaces("10.0.0.1"), "127.0.0.1:8080"},
		{"POD_IP for 0.0.0.0", "", "0.0.0.0", env(map[string]string{"POD_IP": "10.9.9.9"}), ifaces("10.0.0.1"), "10.9.9.9:8080"},
		{"POD_IP for ::", "", "::", env(map[string]string{"POD_IP": "fd00::9"}), ifaces("10.0.0.1"), "[fd00::9]:8080"},
		{"first non-loopback, IPv4 first", "", "", none, ifaces("127.0.0.1", "fe80::1", "fd00::1", "10.0.0.1"), "10.0.0.1:8080"},
		{"IPv6 when there is no IPv4", "", "0.0.0.0", none, ifaces("127.0.0.1", "::1", "fd00::1"), "[fd00::1]:8080"},
	} {
		got, err := advertiseAddr(tc.advertise, tc.host, 8080, tc.getenv, tc.addrs)
		if err != nil || got != tc.want {
			t.Errorf("%s: advertiseAddr = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if _, err := advertiseAddr("", "0.0.0.0", 8080, none, ifaces("127.0.0.1", "::1")); err == nil || !strings.Contains(err.Error(), "Advertise") {
		t.Errorf("only loopback addresses: err = %v, want one that says to set Advertise", err)
	}
	if _, err := advertiseAddr("", "0.0.0.0", 8080, env(map[string]string{"POD_IP": "pod"}), ifaces("10.0.0.1")); err == nil || !strings.Contains(err.Error(), "POD_IP") {
		t.Errorf("bad POD_IP: err = %v, want one naming POD_IP", err)
	}
}

func TestServiceConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, `{"loadBalancingConfig":[{"muster_p2c":{}}],"healthCheckConfig":{"serviceName":""}}`},
		{Config{Metadata: Metadata{Zone: "eu-1a"}}, `{"loadBalancingConfig":[{"muster_p2c":{"zone":"eu-1a"}}],"healthCheckConfig":{"serviceName":""}}`},
		{Config{Balancer: "muster_weighted", Metadata: Metadata{Zone: "b"}}, `{"loadBalancingConfig":[{"muster_weighted":{"zone":"b"}}],"healthCheckConfig":{"serviceName":""}}`},
		{Config{Balancer: "round_robin", Metadata: Metadata{Zone: "b"}}, `{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`},
	} {
		if got := ServiceConfig(tc.cfg); got != tc.want {
			t.Errorf("ServiceConfig(%+v) =\n %s\nwant\n %s", tc.cfg, got, tc.want)
		}
	}
}
