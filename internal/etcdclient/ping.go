package etcdclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// DefaultPingTimeout bounds Ping when its context has no deadline.
	DefaultPingTimeout = 5 * time.Second
	// diagnoseTimeout bounds the extra connections Ping makes to find out
	// why a request failed.
	diagnoseTimeout = 2 * time.Second
)

// Hints name the settings of Muster's YAML configuration.
const (
	hintHosts    = "check Etcd.Hosts"
	hintCreds    = "check Etcd.User/Etcd.Pass"
	hintCA       = "check Etcd.CACertFile"
	hintCert     = "check Etcd.CertFile/Etcd.CertKeyFile"
	hintSetCert  = "set Etcd.CertFile/Etcd.CertKeyFile"
	hintSetCreds = "set Etcd.User/Etcd.Pass"
)

// Ping checks that etcd serves cli: it sends one cheap request (a
// Maintenance Status, which needs authentication when etcd has it turned on,
// but no permission on any key, and no raft round trip) and returns nil
// when any endpoint answers.
//
// Otherwise it returns an *Error (see ErrAuth, ErrTLS, ErrUnreachable) with
// a one-line message naming the endpoints, the cause and the setting to
// check, for example
//
//	etcd at https://10.0.0.5:2379 rejected user "bob": invalid user name or password (check Etcd.User/Etcd.Pass)
//	TLS handshake with etcd at https://10.0.0.5:2379 failed: x509: certificate signed by unknown authority (check Etcd.CACertFile)
//	cannot reach etcd at 10.0.0.5:2379: connection refused (check Etcd.Hosts)
//
// gRPC hides why a connection failed behind "context deadline exceeded"
// for a request that waits for a connection, so Ping does not wait: once
// every endpoint failed to connect it opens its own TCP and TLS
// connections to the endpoints (for at most 2 more seconds, even if ctx is
// done by then) to find the cause. It knows the TLS configuration of
// clients made by New; for other clients it infers it from the endpoints
// and gRPC's error message. If that finds nothing wrong, Ping waits for a
// connection until ctx is done.
//
// Without a deadline in ctx, Ping gives up after DefaultPingTimeout.
func Ping(ctx context.Context, cli *clientv3.Client) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	info := lookup(cli)
	eps := cli.Endpoints()
	if len(eps) == 0 {
		return errors.New("etcd: the client has no endpoints")
	}
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())

	// Fail fast: an RPC that does not wait for ready fails as soon as every
	// endpoint is in transient failure, with the connection error in its
	// status message.
	_, err := mc.Status(ctx, &pb.StatusRequest{}, grpc.WaitForReady(false))
	if err == nil {
		return nil
	}
	if e := serverError(eps, info, err); e != nil {
		return e
	}
	if errors.Is(context.Cause(ctx), context.Canceled) {
		return fmt.Errorf("etcd at %s: %w", strings.Join(eps, ", "), ctx.Err())
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), diagnoseTimeout)
	defer cancel()
	if e := diagnose(dctx, eps, info, status.Convert(err).Message()); e != nil {
		return e
	}

	// Every endpoint looks fine from here: the client's connections may
	// still be backing off after an earlier failure. Wait for them.
	_, err2 := mc.Status(ctx, &pb.StatusRequest{}, grpc.WaitForReady(true))
	if err2 == nil {
		return nil
	}
	if e := serverError(eps, info, err2); e != nil {
		return e
	}
	var cause error = errors.New(status.Convert(err2).Message())
	if ctx.Err() != nil {
		cause = ctx.Err()
	}
	return newError(forAll(eps, ErrUnreachable, cause,
		"etcd at "+epsMark+" did not answer: "+causeText(cause)+" ("+hintHosts+")"))
}

// serverError returns the error for a failure that is not about the
// connection (etcd answered), or nil for connection failures.
func serverError(eps []string, info clientInfo, err error) error {
	code := status.Code(err)
	if code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.Canceled ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return nil
	}
	err = rpctypes.Error(err)
	if e := authError(eps, info.user, err); e != nil {
		return e
	}
	return fmt.Errorf("etcd at %s: %w", strings.Join(eps, ", "), err)
}

// authError turns etcd's authentication errors into *Error, and returns
// nil for other errors.
func authError(eps []string, user string, err error) *Error {
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return newError(forAll(eps, ErrAuth, err,
			fmt.Sprintf("etcd at %s rejected user %q: invalid user name or password (%s)", epsMark, user, hintCreds)))
	case errors.Is(err, rpctypes.ErrUserEmpty):
		msg := fmt.Sprintf("etcd at %s requires authentication, but no user is configured (%s)", epsMark, hintSetCreds)
		if user != "" {
			msg = fmt.Sprintf("etcd at %s requires authentication, but user %q has no password configured (set Etcd.Pass)", epsMark, user)
		}
		return newError(forAll(eps, ErrAuth, err, msg))
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthOldRevision), errors.Is(err, rpctypes.ErrUserNotFound):
		return newError(forAll(eps, ErrAuth, err,
			fmt.Sprintf("etcd at %s refused user %q: %s (%s)", epsMark, user, rpctypes.ErrorDesc(err), hintCreds)))
	}
	return nil
}

func forAll(eps []string, kind, cause error, msg string) []finding {
	fs := make([]finding, len(eps))
	for i, ep := range eps {
		fs[i] = finding{endpoint: ep, kind: kind, cause: cause, msg: msg}
	}
	return fs
}

// clientInfo is what Ping knows about a client beyond clientv3.Client.
type clientInfo struct {
	known bool        // the client was made by New
	tls   *tls.Config // its TLS configuration (nil: none)
	user  string      // Config.Username (clientv3 drops it without a password)
	mon   *monitor    // the member health monitor, if any
}

// clients maps the *clientv3.Client made by New to their clientInfo, until
// they are closed.
var clients sync.Map

func register(cli *clientv3.Client, info clientInfo) {
	info.known = true
	clients.Store(cli, info)
	context.AfterFunc(cli.Ctx(), func() { clients.Delete(cli) })
}

func lookup(cli *clientv3.Client) clientInfo {
	if v, ok := clients.Load(cli); ok {
		return v.(clientInfo)
	}
	return clientInfo{user: cli.Username}
}

// target is one endpoint as clientv3 dials it.
type target struct {
	endpoint   string // as configured
	network    string // "tcp" or "unix"
	addr       string
	serverName string // for TLS verification
	scheme     string // "", "http", "https", "unix" or "unixs"
}

func parseEndpoint(ep string) target {
	t := target{endpoint: ep, network: "tcp", addr: ep}
	for _, s := range []string{"unixs", "unix"} {
		if rest, ok := strings.CutPrefix(ep, s+":"); ok {
			// unix:path, unix://path and unix:///abs/path, as clientv3
			// reads them.
			p := strings.TrimPrefix(rest, "//")
			t.network, t.addr, t.scheme = "unix", p, s
			t.serverName = p[strings.LastIndex(p, "/")+1:]
			return t
		}
	}
	if strings.Contains(ep, "://") {
		if u, err := url.Parse(ep); err == nil {
			t.scheme, t.addr = u.Scheme, u.Host
		}
	}
	t.serverName = t.addr
	if h, _, err := net.SplitHostPort(t.addr); err == nil {
		t.serverName = h
	}
	return t
}

// useTLS reports whether clientv3 connects to the endpoints with TLS, and
// the TLS configuration if known. clientv3 picks the transport for all
// endpoints from the first one's scheme: TLS for https and unixs (with
// the system's roots when no TLS config is given), plain for http, and
// otherwise TLS if a TLS config is given.
func useTLS(first target, info clientInfo, grpcMsg string) (bool, *tls.Config) {
	switch first.scheme {
	case "http":
		return false, nil
	case "https", "unixs":
		if info.known && info.tls == nil {
			return true, &tls.Config{MinVersion: tls.VersionTLS12}
		}
		return true, info.tls
	}
	if info.known {
		return info.tls != nil, info.tls
	}
	return strings.Contains(grpcMsg, "authentication handshake failed") || strings.Contains(grpcMsg, "tls: "), nil
}

// diagnose connects to every endpoint itself to find out why the client
// could not, and returns nil if it finds nothing wrong.
func diagnose(ctx context.Context, eps []string, info clientInfo, grpcMsg string) *Error {
	if len(eps) == 0 {
		return nil
	}
	secure, tc := useTLS(parseEndpoint(eps[0]), info, grpcMsg)
	results := make([]*finding, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { results[i] = probe(ctx, parseEndpoint(ep), secure, tc, grpcMsg) })
	}
	wg.Wait()
	var fs []finding
	for _, f := range results {
		if f != nil {
			fs = append(fs, *f)
		}
	}
	return newError(fs)
}

// probe finds out what is wrong with one endpoint, if anything. tc is the
// client's TLS configuration when secure and known, nil otherwise.
func probe(ctx context.Context, t target, secure bool, tc *tls.Config, grpcMsg string) *finding {
	f := func(kind, cause error, msg string) *finding {
		return &finding{endpoint: t.endpoint, kind: kind, cause: cause, msg: msg}
	}
	conn, err := dial(ctx, t)
	if err != nil {
		cause := netCause(err)
		return f(ErrUnreachable, cause, "cannot reach etcd at "+epsMark+": "+causeText(cause)+" ("+hintHosts+")")
	}
	defer conn.Close()

	if !secure {
		herr := h2Check(ctx, conn)
		if herr == nil {
			return nil
		}
		if servesTLS(ctx, t) {
			return f(ErrTLS, herr, "etcd at "+epsMark+" requires TLS, but the client connects in plain text (set Etcd.CACertFile, or use https:// in Etcd.Hosts)")
		}
		herr = netCause(herr)
		return f(ErrUnreachable, herr, "etcd at "+epsMark+" does not answer gRPC: "+causeText(herr)+" ("+hintHosts+")")
	}

	known := tc != nil
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // only to tell TLS from plain text
	if known {
		cfg = tc.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = t.serverName
	}
	cfg.NextProtos = []string{"h2"}
	tconn := tls.Client(conn, cfg)
	herr := tconn.HandshakeContext(ctx)
	if herr == nil {
		// With TLS 1.3 a client certificate is checked after the client's
		// handshake is done; the rejection arrives on the first read.
		herr = h2Check(ctx, tconn)
		if herr == nil {
			if !known {
				if c := grpcHandshakeCause(grpcMsg); c != "" {
					return tlsFinding(t, errors.New(c), nil)
				}
			}
			return nil
		}
		if !isRemoteTLSAlert(herr) {
			herr = netCause(herr)
			return f(ErrUnreachable, herr, "etcd at "+epsMark+" does not answer gRPC over TLS: "+causeText(herr)+" ("+hintHosts+")")
		}
		return tlsFinding(t, herr, tc)
	}
	if c2, err := dial(ctx, t); err == nil {
		plain := h2Check(ctx, c2) == nil
		c2.Close()
		if plain {
			return f(ErrTLS, herr, "TLS handshake with etcd at "+epsMark+" failed: etcd serves plain text there, not TLS (use http:// in Etcd.Hosts, or leave Etcd.CACertFile, Etcd.CertFile and Etcd.CertKeyFile empty)")
		}
	}
	if !known {
		if c := grpcHandshakeCause(grpcMsg); c != "" {
			herr = errors.New(c)
		}
	}
	return tlsFinding(t, herr, tc)
}

// tlsFinding describes a TLS failure; tc is the client's TLS configuration
// if known.
func tlsFinding(t target, err error, tc *tls.Config) *finding {
	cause := err
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) {
		cause = cve.Err
	}
	text := strings.TrimPrefix(causeText(cause), "tls: failed to verify certificate: ")
	hint := hintCA
	var hostErr x509.HostnameError
	var invErr x509.CertificateInvalidError
	switch {
	case errors.As(cause, &hostErr) || strings.Contains(text, "x509: certificate is valid for"):
		hint = hintHosts + " against the names in etcd's certificate"
	case errors.As(cause, &invErr) && invErr.Reason == x509.Expired:
		hint = "etcd's certificate has expired or is not yet valid"
	case isRemoteTLSAlert(err) && strings.Contains(text, "certificate"):
		msg := "etcd at " + epsMark + " rejected the TLS client certificate: " + text + " (" + hintCert + ")"
		if tc != nil && len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
			msg = "etcd at " + epsMark + " requires a TLS client certificate: " + text + " (" + hintSetCert + ")"
		}
		return &finding{endpoint: t.endpoint, kind: ErrTLS, cause: cause, msg: msg}
	case !strings.Contains(text, "x509:"):
		hint = "check Etcd.CACertFile/Etcd.CertFile/Etcd.CertKeyFile"
	}
	return &finding{endpoint: t.endpoint, kind: ErrTLS, cause: cause,
		msg: "TLS handshake with etcd at " + epsMark + " failed: " + text + " (" + hint + ")"}
}

func isRemoteTLSAlert(err error) bool {
	return err != nil && strings.Contains(err.Error(), "remote error: tls: ")
}

// grpcHandshakeCause extracts the TLS handshake error from a gRPC
// connection error message, or returns "".
func grpcHandshakeCause(msg string) string {
	const marker = "authentication handshake failed: "
	i := strings.Index(msg, marker)
	if i < 0 {
		return ""
	}
	c := strings.TrimSuffix(msg[i+len(marker):], `"`)
	return strings.TrimPrefix(c, "tls: failed to verify certificate: ")
}

func dial(ctx context.Context, t target) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, t.network, t.addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return c, nil
}

// servesTLS reports whether a TLS handshake with the endpoint succeeds,
// without verifying its certificate.
func servesTLS(ctx context.Context, t target) bool {
	c, err := dial(ctx, t)
	if err != nil {
		return false
	}
	defer c.Close()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: t.serverName, NextProtos: []string{"h2"}}) //nolint:gosec // only to tell TLS from plain text
	return tc.HandshakeContext(ctx) == nil
}

// h2Preface is HTTP/2's client connection preface followed by an empty
// SETTINGS frame.
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")

// h2Check sends HTTP/2's client preface on conn and checks that the peer
// answers with an HTTP/2 SETTINGS frame, as gRPC servers do.
func h2Check(ctx context.Context, conn net.Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	_, werr := conn.Write(h2Preface)
	// Read even if the write failed: the peer's reason (a TLS alert, say)
	// may be waiting.
	hdr := make([]byte, 9)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			if werr != nil {
				return werr
			}
			return errors.New("connection closed without an HTTP/2 answer")
		}
		return err
	}
	if hdr[3] != 0x4 {
		if bytes.HasPrefix(hdr, []byte("HTTP/")) {
			return errors.New("an HTTP/1 server answered, not HTTP/2")
		}
		return fmt.Errorf("not an HTTP/2 server (first bytes %q)", hdr)
	}
	return nil
}

// netCause strips a dial error down to its reason ("connection refused",
// "i/o timeout", "lookup etcd: no such host").
func netCause(err error) error {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		return se.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		if oe.Timeout() {
			return os.ErrDeadlineExceeded
		}
		return oe.Err
	}
	return err
}

func causeText(err error) string {
	if err == nil {
		return "unknown error"
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}
