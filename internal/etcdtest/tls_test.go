package etcdtest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func putGet(t *testing.T, c *clientv3.Client, key, value string) {
	t.Helper()
	if _, err := c.Put(ctxTimeout(t, 5*time.Second), key, value); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	if v, err := getValue(ctxTimeout(t, 5*time.Second), c, key); err != nil || v != value {
		t.Fatalf("get %s = %q, %v; want %q", key, v, err, value)
	}
}

// newTestClient is a client with this package's settings and the given
// TLS config and credentials; clientv3.New's error is returned.
func newTestClient(t *testing.T, endpoints []string, tc *tls.Config, user, password string) (*clientv3.Client, error) {
	t.Helper()
	cfg := clientConfig(endpoints, tc)
	cfg.Username, cfg.Password = user, password
	c, err := clientv3.New(cfg)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func TestNewTLSFiles(t *testing.T) {
	a, b := NewTLSFiles(t), NewTLSFiles(t)
	for _, p := range []string{a.CA, a.Cert, a.Key, a.ClientCert, a.ClientKey} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
	if a.CA == b.CA {
		t.Fatal("two calls share a CA file")
	}
	// The server certificate verifies against its own CA for 127.0.0.1
	// and localhost, and not against another call's CA.
	srv, err := tls.LoadX509KeyPair(a.Cert, a.Key)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1", "localhost", "::1"} {
		if err := verifyLeaf(a.ClientTLSConfig(t), srv, name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := verifyLeaf(b.ClientTLSConfig(t), srv, "127.0.0.1"); err == nil {
		t.Error("server certificate verified against an unrelated CA")
	}
}

func verifyLeaf(tc *tls.Config, cert tls.Certificate, name string) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}}).Handshake()
	}()
	tc = tc.Clone()
	tc.ServerName = name
	c, err := tls.Dial("tcp", l.Addr().String(), tc)
	if err != nil {
		return err
	}
	return c.Close()
}

func TestWithTLS(t *testing.T) {
	m := Single(t, WithTLS())
	f := m.TLS()
	if f.CA == "" || f.Cert == "" || f.Key == "" || f.ClientCert == "" || f.ClientKey == "" {
		t.Fatalf("TLS() = %+v", f)
	}
	ep := m.Endpoints()[0]
	if !strings.HasPrefix(ep, "https://127.0.0.1:") {
		t.Fatalf("endpoint %q, want https://127.0.0.1:PORT", ep)
	}
	putGet(t, m.Client(t), "k", "tls")

	// A client that only trusts the CA (no client certificate) works.
	tc := f.ClientTLSConfig(t)
	tc.Certificates = nil
	c, err := newTestClient(t, m.Endpoints(), tc, "", "")
	if err != nil {
		t.Fatal(err)
	}
	putGet(t, c, "k2", "ca-only")

	// A plain-text client does not get through.
	plain, err := newTestClient(t, []string{strings.TrimPrefix(ep, "https://")}, nil, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Get(ctxTimeout(t, 500*time.Millisecond), "k"); err == nil {
		t.Fatal("plain-text Get from a TLS member succeeded")
	}

	m.Restart()
	if v, err := getValue(ctxTimeout(t, 5*time.Second), m.Client(t), "k"); err != nil || v != "tls" {
		t.Fatalf("get after restart = %q, %v", v, err)
	}
}

func TestWithClientCertAuth(t *testing.T) {
	m := Single(t, WithClientCertAuth())
	putGet(t, m.Client(t), "k", "mtls")

	tc := m.TLS().ClientTLSConfig(t)
	tc.Certificates = nil
	c, err := newTestClient(t, m.Endpoints(), tc, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctxTimeout(t, 500*time.Millisecond), "k"); err == nil {
		t.Fatal("Get without a client certificate succeeded")
	}
}

func TestWithAuth(t *testing.T) {
	m := Single(t, WithAuth("alice", "s3cret"))
	if u, p, rp := m.Auth(); u != "alice" || p != "s3cret" || rp == "" || rp == p {
		t.Fatalf("Auth() = %q, %q, %q", u, p, rp)
	}
	cli := m.Client(t)
	putGet(t, cli, "k", "auth")

	// Authentication is really on.
	if status, err := cli.AuthStatus(ctxTimeout(t, 5*time.Second)); err != nil || !status.Enabled {
		t.Fatalf("AuthStatus = %+v, %v", status, err)
	}
	if _, err := newTestClient(t, m.Endpoints(), nil, "alice", "wrong"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("client with a wrong password: err %v, want %v", err, rpctypes.ErrAuthFailed)
	}
	if _, err := newTestClient(t, m.Endpoints(), nil, "mallory", "s3cret"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("client of an unknown user: err %v, want %v", err, rpctypes.ErrAuthFailed)
	}
	anon, err := newTestClient(t, m.Endpoints(), nil, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.Get(ctxTimeout(t, 5*time.Second), "k"); !errors.Is(err, rpctypes.ErrUserEmpty) {
		t.Fatalf("Get without credentials: err %v, want %v", err, rpctypes.ErrUserEmpty)
	}
	_, _, rootPassword := m.Auth()
	root, err := newTestClient(t, m.Endpoints(), nil, "root", rootPassword)
	if err != nil {
		t.Fatalf("root client: %v", err)
	}
	putGet(t, root, "r", "root")

	// Auth survives a restart; the old client gets a new token by itself.
	m.Restart()
	eventually(t, "get with the old client after restart", func() error {
		_, err := getValue(ctxTimeout(t, time.Second), cli, "k")
		return err
	})
	putGet(t, m.Client(t), "k", "after-restart")
	if _, err := newTestClient(t, m.Endpoints(), nil, "alice", "wrong"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("after restart, client with a wrong password: err %v", err)
	}
}

func TestWithTLSAndAuth(t *testing.T) {
	t.Run("single root", func(t *testing.T) {
		m := Single(t, WithTLS(), WithAuth("root", "rootpw"))
		if u, p, rp := m.Auth(); u != "root" || p != "rootpw" || rp != "rootpw" {
			t.Fatalf("Auth() = %q, %q, %q", u, p, rp)
		}
		putGet(t, m.Client(t), "k", "v")
		if _, err := newTestClient(t, m.Endpoints(), m.TLS().ClientTLSConfig(t), "root", "nope"); !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Fatalf("wrong password over TLS: err %v", err)
		}
		m.Restart()
		putGet(t, m.Client(t), "k", "v2")
	})
	t.Run("cluster", func(t *testing.T) {
		c := Cluster(t, 3, WithClientCertAuth(), WithAuth("bob", "pw"))
		for _, ep := range c.Endpoints() {
			if !strings.HasPrefix(ep, "https://") {
				t.Fatalf("endpoints %v", c.Endpoints())
			}
		}
		if c.TLS() != c.Members()[1].TLS() || c.TLS().CA == "" {
			t.Fatalf("TLS files: group %+v, member %+v", c.TLS(), c.Members()[1].TLS())
		}
		cli := c.Client(t)
		putGet(t, cli, "k", "v")
		old := c.Leader()
		old.Stop()
		c.Leader()
		old.Restart()
		putGet(t, old.Client(t), "k", "v3")
	})
}

func TestWithAuthNeedsPassword(t *testing.T) {
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Single(ft, WithAuth("alice", ""))
	}()
	<-done
	if !strings.Contains(ft.msg, "WithAuth needs a user and a password") {
		t.Fatalf("fatal message %q", ft.msg)
	}
}

// fatalRecorder records Fatalf and ends the goroutine, like testing.T.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
