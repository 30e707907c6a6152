package etcdclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/mustersd/muster/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}

// hostPort strips the scheme of an etcdtest endpoint.
func hostPort(ep string) string { return strings.TrimPrefix(ep, "https://") }

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func newClient(t *testing.T, c Config) *clientv3.Client {
	t.Helper()
	cli, err := New(c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func ping(t *testing.T, cli *clientv3.Client) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return Ping(ctx, cli)
}

// checkErr fails unless err is an *Error of the given kind with exactly
// the message want.
func checkErr(t *testing.T, err error, kind error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", want)
	}
	t.Logf("error: %v", err)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %q is not an *Error", err, err)
	}
	if !errors.Is(err, kind) {
		t.Errorf("errors.Is(err, %v) = false", kind)
	}
	for _, k := range []error{ErrAuth, ErrTLS, ErrUnreachable} {
		if k != kind && errors.Is(err, k) {
			t.Errorf("errors.Is(err, %v) = true", k)
		}
	}
	if got := err.Error(); got != want {
		t.Errorf("message\n got: %s\nwant: %s", got, want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Error("message has more than one line")
	}
}

func TestPingOK(t *testing.T) {
	plain := etcdtest.Single(t)
	tlsM := etcdtest.Single(t, etcdtest.WithTLS())
	both := etcdtest.Single(t, etcdtest.WithClientCertAuth(), etcdtest.WithAuth("alice", "pw"))
	f := both.TLS()
	for name, c := range map[string]Config{
		"plain":                {Endpoints: plain.Endpoints()},
		"plain user, no auth":  {Endpoints: plain.Endpoints(), Username: "alice", Password: "whatever"},
		"tls":                  {Endpoints: tlsM.Endpoints(), CACert: tlsM.TLS().CA},
		"tls bare endpoint":    {Endpoints: []string{hostPort(tlsM.Endpoints()[0])}, CACert: tlsM.TLS().CA},
		"mtls and auth":        {Endpoints: both.Endpoints(), CACert: f.CA, Cert: f.ClientCert, Key: f.ClientKey, Username: "alice", Password: "pw"},
		"one of two endpoints": {Endpoints: []string{deadAddr(t), plain.Endpoints()[0]}},
		"insecure skip verify": {Endpoints: tlsM.Endpoints(), InsecureSkipVerify: true},
	} {
		t.Run(name, func(t *testing.T) {
			if err := ping(t, newClient(t, c)); err != nil {
				t.Fatalf("Ping: %v", err)
			}
		})
	}
}

func TestAuthErrors(t *testing.T) {
	m := etcdtest.Single(t, etcdtest.WithTLS(), etcdtest.WithAuth("alice", "pw"))
	ep := m.Endpoints()[0]
	ca := m.TLS().CA
	cfg := func(user, pass string) Config {
		return Config{Endpoints: m.Endpoints(), CACert: ca, Username: user, Password: pass}
	}

	t.Run("wrong password", func(t *testing.T) {
		_, err := New(cfg("alice", "wrong"))
		checkErr(t, err, ErrAuth, fmt.Sprintf(`etcd at %s rejected user "alice": invalid user name or password (check Etcd.User/Etcd.Pass)`, ep))
		if !errors.Is(err, rpctypes.ErrAuthFailed) {
			t.Errorf("errors.Is(err, rpctypes.ErrAuthFailed) = false")
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, err := New(cfg("bob", "pw"))
		checkErr(t, err, ErrAuth, fmt.Sprintf(`etcd at %s rejected user "bob": invalid user name or password (check Etcd.User/Etcd.Pass)`, ep))
	})
	t.Run("no user", func(t *testing.T) {
		err := ping(t, newClient(t, cfg("", "")))
		checkErr(t, err, ErrAuth, fmt.Sprintf(`etcd at %s requires authentication, but no user is configured (set Etcd.User/Etcd.Pass)`, ep))
		if !errors.Is(err, rpctypes.ErrUserEmpty) {
			t.Errorf("errors.Is(err, rpctypes.ErrUserEmpty) = false")
		}
	})
	t.Run("user without password", func(t *testing.T) {
		err := ping(t, newClient(t, cfg("alice", "")))
		checkErr(t, err, ErrAuth, fmt.Sprintf(`etcd at %s requires authentication, but user "alice" has no password configured (set Etcd.Pass)`, ep))
	})
	t.Run("password changed after New", func(t *testing.T) {
		admin := m.Client(t)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := admin.UserAdd(ctx, "carol", "pw"); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.UserGrantRole(ctx, "carol", "root"); err != nil {
			t.Fatal(err)
		}
		cli := newClient(t, cfg("carol", "pw"))
		if err := ping(t, cli); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.UserChangePassword(ctx, "carol", "pw2"); err != nil {
			t.Fatal(err)
		}
		// A restart drops etcd's simple tokens; the client's re-login
		// with its old password fails.
		m.Restart()
		checkErr(t, ping(t, cli), ErrAuth, fmt.Sprintf(`etcd at %s rejected user "carol": invalid user name or password (check Etcd.User/Etcd.Pass)`, ep))
	})
}

func TestTLSErrors(t *testing.T) {
	tlsM := etcdtest.Single(t, etcdtest.WithTLS())
	mtls := etcdtest.Single(t, etcdtest.WithClientCertAuth())
	plain := etcdtest.Single(t)
	other := etcdtest.NewTLSFiles(t) // an unrelated CA
	tlsEP, plainEP := tlsM.Endpoints()[0], plain.Endpoints()[0]

	t.Run("wrong CA", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: tlsM.Endpoints(), CACert: other.CA}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("TLS handshake with etcd at %s failed: x509: certificate signed by unknown authority (check Etcd.CACertFile)", tlsEP))
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) {
			t.Errorf("errors.As(err, x509.UnknownAuthorityError) = false")
		}
	})
	t.Run("wrong CA with user", func(t *testing.T) {
		// clientv3.New authenticates, and without a connection that ends
		// in a bare "context deadline exceeded"; New explains it.
		_, err := New(Config{Endpoints: tlsM.Endpoints(), CACert: other.CA, Username: "alice", Password: "pw", DialTimeout: 500 * time.Millisecond})
		checkErr(t, err, ErrTLS, fmt.Sprintf("TLS handshake with etcd at %s failed: x509: certificate signed by unknown authority (check Etcd.CACertFile)", tlsEP))
	})
	t.Run("wrong CA, client not made by New", func(t *testing.T) {
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: tlsM.Endpoints(), DialTimeout: time.Second, Logger: zap.NewNop(),
			TLS: other.ClientTLSConfig(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		checkErr(t, ping(t, cli), ErrTLS, fmt.Sprintf("TLS handshake with etcd at %s failed: x509: certificate signed by unknown authority (check Etcd.CACertFile)", tlsEP))
	})
	t.Run("name mismatch", func(t *testing.T) {
		// The certificate is for 127.0.0.1, ::1 and localhost; etcd
		// listens on 127.0.0.1 only, so forward 127.0.0.2 to it.
		ep := forward(t, hostPort(tlsEP))
		err := ping(t, newClient(t, Config{Endpoints: []string{"https://" + ep}, CACert: tlsM.TLS().CA}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("TLS handshake with etcd at https://%s failed: x509: certificate is valid for 127.0.0.1, ::1, not 127.0.0.2 (check Etcd.Hosts against the names in etcd's certificate)", ep))
	})
	t.Run("TLS client, plain etcd", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: plain.Endpoints(), CACert: other.CA}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("TLS handshake with etcd at %s failed: etcd serves plain text there, not TLS (use http:// in Etcd.Hosts, or leave Etcd.CACertFile, Etcd.CertFile and Etcd.CertKeyFile empty)", plainEP))
	})
	t.Run("https endpoint, plain etcd", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: []string{"https://" + plainEP}}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("TLS handshake with etcd at https://%s failed: etcd serves plain text there, not TLS (use http:// in Etcd.Hosts, or leave Etcd.CACertFile, Etcd.CertFile and Etcd.CertKeyFile empty)", plainEP))
	})
	t.Run("plain client, TLS etcd", func(t *testing.T) {
		ep := hostPort(tlsEP)
		err := ping(t, newClient(t, Config{Endpoints: []string{ep}}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("etcd at %s requires TLS, but the client connects in plain text (set Etcd.CACertFile, or use https:// in Etcd.Hosts)", ep))
	})
	t.Run("http endpoint, TLS etcd", func(t *testing.T) {
		ep := "http://" + hostPort(tlsEP)
		err := ping(t, newClient(t, Config{Endpoints: []string{ep}, CACert: tlsM.TLS().CA}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("etcd at %s requires TLS, but the client connects in plain text (set Etcd.CACertFile, or use https:// in Etcd.Hosts)", ep))
	})
	t.Run("plain client with user, TLS etcd", func(t *testing.T) {
		ep := hostPort(tlsEP)
		_, err := New(Config{Endpoints: []string{ep}, Username: "alice", Password: "pw", DialTimeout: 500 * time.Millisecond})
		checkErr(t, err, ErrTLS, fmt.Sprintf("etcd at %s requires TLS, but the client connects in plain text (set Etcd.CACertFile, or use https:// in Etcd.Hosts)", ep))
	})
	t.Run("client certificate missing", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: mtls.Endpoints(), CACert: mtls.TLS().CA}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("etcd at %s requires a TLS client certificate: remote error: tls: certificate required (set Etcd.CertFile/Etcd.CertKeyFile)", mtls.Endpoints()[0]))
	})
	t.Run("client certificate of another CA", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: mtls.Endpoints(), CACert: mtls.TLS().CA, Cert: other.ClientCert, Key: other.ClientKey}))
		checkErr(t, err, ErrTLS, fmt.Sprintf("etcd at %s rejected the TLS client certificate: remote error: tls: certificate required (check Etcd.CertFile/Etcd.CertKeyFile)", mtls.Endpoints()[0]))
	})
}

// forward listens on 127.0.0.2 and relays connections to addr; it returns
// its address.
func forward(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", addr)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			relay := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				dst.Close()
				src.Close()
			}
			wg.Go(func() { relay(out, in) })
			wg.Go(func() { relay(in, out) })
		}
	})
	return ln.Addr().String()
}

func TestUnreachable(t *testing.T) {
	dead := deadAddr(t)
	t.Run("Ping", func(t *testing.T) {
		err := ping(t, newClient(t, Config{Endpoints: []string{dead}}))
		checkErr(t, err, ErrUnreachable, fmt.Sprintf("cannot reach etcd at %s: connection refused (check Etcd.Hosts)", dead))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("errors.Is(err, syscall.ECONNREFUSED) = false")
		}
	})
	t.Run("New with user", func(t *testing.T) {
		_, err := New(Config{Endpoints: []string{dead}, Username: "alice", Password: "pw", DialTimeout: 500 * time.Millisecond})
		checkErr(t, err, ErrUnreachable, fmt.Sprintf("cannot reach etcd at %s: connection refused (check Etcd.Hosts)", dead))
	})
	t.Run("two endpoints", func(t *testing.T) {
		dead2 := deadAddr(t)
		err := ping(t, newClient(t, Config{Endpoints: []string{dead, dead2}}))
		checkErr(t, err, ErrUnreachable, fmt.Sprintf("cannot reach etcd at %s, %s: connection refused (check Etcd.Hosts)", dead, dead2))
	})
	t.Run("silent listener", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var held []net.Conn
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		})
		defer func() {
			ln.Close()
			wg.Wait()
			for _, c := range held {
				c.Close()
			}
		}()
		addr := ln.Addr().String()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		err = Ping(ctx, newClient(t, Config{Endpoints: []string{addr}}))
		t.Logf("took %v", time.Since(start))
		checkErr(t, err, ErrUnreachable, fmt.Sprintf("etcd at %s does not answer gRPC: i/o timeout (check Etcd.Hosts)", addr))
	})
}

// TestMixedEndpoints: endpoints that fail differently each get their
// cause, in one line.
func TestMixedEndpoints(t *testing.T) {
	tlsM := etcdtest.Single(t, etcdtest.WithTLS())
	dead := deadAddr(t)
	other := etcdtest.NewTLSFiles(t)
	err := ping(t, newClient(t, Config{Endpoints: []string{tlsM.Endpoints()[0], dead}, CACert: other.CA}))
	want := fmt.Sprintf("TLS handshake with etcd at %s failed: x509: certificate signed by unknown authority (check Etcd.CACertFile); cannot reach etcd at %s: connection refused (check Etcd.Hosts)", tlsM.Endpoints()[0], dead)
	if err == nil || err.Error() != want {
		t.Fatalf("error\n got: %v\nwant: %s", err, want)
	}
	if !errors.Is(err, ErrTLS) || !errors.Is(err, ErrUnreachable) || errors.Is(err, ErrAuth) {
		t.Errorf("errors.Is: TLS %v, unreachable %v, auth %v", errors.Is(err, ErrTLS), errors.Is(err, ErrUnreachable), errors.Is(err, ErrAuth))
	}
	var e *Error
	if !errors.As(err, &e) || len(e.Endpoints) != 2 {
		t.Fatalf("*Error %+v", e)
	}
}

// TestPingAfterOutage: after etcd was down, a client whose connection is
// still backing off passes Ping once etcd is back (Ping waits for the
// connection instead of reporting the stale failure).
func TestPingAfterOutage(t *testing.T) {
	m := etcdtest.Single(t)
	cli := newClient(t, Config{Endpoints: m.Endpoints()})
	if err := ping(t, cli); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	checkErr(t, ping(t, cli), ErrUnreachable, fmt.Sprintf("cannot reach etcd at %s: connection refused (check Etcd.Hosts)", m.Endpoints()[0]))
	m.Restart()
	if err := ping(t, cli); err != nil {
		t.Fatalf("Ping after restart: %v", err)
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, tc := range []struct {
		ep                        string
		network, addr, name, schm string
	}{
		{"127.0.0.1:2379", "tcp", "127.0.0.1:2379", "127.0.0.1", ""},
		{"https://etcd-0:2379", "tcp", "etcd-0:2379", "etcd-0", "https"},
		{"http://[::1]:2379", "tcp", "[::1]:2379", "::1", "http"},
		{"unix:///run/etcd.sock", "unix", "/run/etcd.sock", "etcd.sock", "unix"},
		{"unixs://etcd.sock", "unix", "etcd.sock", "etcd.sock", "unixs"},
		{"unix:local.sock", "unix", "local.sock", "local.sock", "unix"},
	} {
		got := parseEndpoint(tc.ep)
		if got.network != tc.network || got.addr != tc.addr || got.serverName != tc.name || got.scheme != tc.schm {
			t.Errorf("parseEndpoint(%q) = %+v", tc.ep, got)
		}
	}
}

func TestConfigErrorsUnchanged(t *testing.T) {
	if _, err := New(Config{}); err == nil || err.Error() != "etcd: no endpoints" {
		t.Errorf("New(Config{}) = %v", err)
	}
	if _, err := New(Config{Endpoints: []string{"x:1"}, Password: "p"}); err == nil || !strings.Contains(err.Error(), "password given without a user") {
		t.Errorf("password without user: %v", err)
	}
}
