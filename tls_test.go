package muster

import (
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

// TestTLSAndAuth: a server registers and a client resolves through an etcd
// that requires TLS and a password, configured only through Config.
func TestTLSAndAuth(t *testing.T) {
	m := etcdtest.Single(t, etcdtest.WithTLS(), etcdtest.WithAuth("order", "s3cret"))
	cfg := Config{
		Name:     "secure.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd: EtcdConfig{
			Hosts:      m.Endpoints(),
			User:       "order",
			Pass:       "s3cret",
			CACertFile: m.TLS().CA,
			TTL:        2 * time.Second,
		},
	}
	if !strings.HasPrefix(m.Endpoints()[0], "https://") {
		t.Fatalf("etcd endpoints %v are not TLS", m.Endpoints())
	}
	srv := startServer(t, cfg, "secure")
	cc, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if name, err := echo.Call(testx.Context(t, 15*time.Second), cc); err != nil || name != "secure" {
		t.Fatalf("RPC through TLS+auth etcd = %q, %v", name, err)
	}
	if got := keys(t, m.Client(t), "services/secure.rpc/"); len(got) != 1 || got["services/secure.rpc/"+srv.Endpoint().Addr] == "" {
		t.Fatalf("keys in etcd: %v", got)
	}
}

// TestWrongCredentials: a wrong password or a wrong CA fails Start with one
// line that names the setting to check, and a client's RPCs carry the same.
func TestWrongCredentials(t *testing.T) {
	m := etcdtest.Single(t, etcdtest.WithTLS(), etcdtest.WithAuth("order", "s3cret"))
	good := Config{
		Name:     "secure.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd: EtcdConfig{
			Hosts:       m.Endpoints(),
			User:        "order",
			Pass:        "s3cret",
			CACertFile:  m.TLS().CA,
			DialTimeout: 2 * time.Second,
		},
	}
	wrongPass := good
	wrongPass.Etcd.Pass = "guess"
	wrongCA := good
	wrongCA.Etcd.CACertFile = etcdtest.NewTLSFiles(t).CA
	noUser := good
	noUser.Etcd.User, noUser.Etcd.Pass = "", ""
	noUser.Etcd.CACertFile = etcdtest.NewTLSFiles(t).CA

	for _, tc := range []struct {
		name string
		cfg  Config
		want []string
	}{
		{"wrong password", wrongPass, []string{`rejected user "order"`, "Etcd.Pass"}},
		{"wrong CA", wrongCA, []string{"certificate signed by unknown authority", "Etcd.CACertFile"}},
		{"wrong CA, no user", noUser, []string{"certificate signed by unknown authority", "Etcd.CACertFile"}},
	} {
		srv, err := NewServer(tc.cfg, WithoutSignals())
		if err != nil {
			t.Fatal(err)
		}
		err = srv.Start(testx.Context(t, 20*time.Second))
		if err == nil {
			srv.Shutdown(testx.Context(t, 5*time.Second))
			t.Errorf("%s: Start succeeded", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Start = %q, want it to contain %q", tc.name, err, w)
			}
		}
		if strings.Count(err.Error(), "\n") > 0 {
			t.Errorf("%s: the error spans several lines: %q", tc.name, err)
		}
		if testing.Verbose() {
			t.Logf("%s: %v", tc.name, err)
		}
		if addr := srv.Addr(); addr != nil {
			t.Errorf("%s: a server that failed to start still listens on %v", tc.name, addr)
		}
	}

	cc, err := NewClient(wrongPass)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = echo.Call(testx.Context(t, 10*time.Second), cc)
	if err == nil || !strings.Contains(err.Error(), `rejected user "order"`) {
		t.Fatalf("RPC with a wrong etcd password = %v, want the etcd error", err)
	}
}
