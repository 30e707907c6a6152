package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaderTimeout bounds how long Leader and WaitLeader wait for a stable
// leader.
const leaderTimeout = 20 * time.Second

// Group is a set of embedded etcd members forming one cluster, started by
// Cluster (or, with one member, by Single). Its methods are safe for
// concurrent use.
type Group struct {
	t       testing.TB
	token   string
	ports   []int
	members []*Member

	tlsFiles       *TLSFiles // WithTLS; nil otherwise
	user, password string    // WithAuth: what clients authenticate as
	rootPassword   string    // WithAuth: the root user's password
}

// Cluster starts an n-member etcd cluster on 127.0.0.1, each member with
// its own t.TempDir() data directory, and waits until every member serves a
// linearizable Get. If a port turns out to be taken, the whole cluster is
// started again on fresh ports, a bounded number of times. The members are
// stopped by t.Cleanup.
func Cluster(t testing.TB, n int, opts ...Option) *Group {
	t.Helper()
	return startGroup(t, n, buildOptions(opts))
}

func startGroup(t testing.TB, n int, o *options) *Group {
	t.Helper()
	if n < 1 {
		t.Fatalf("etcdtest: cluster size must be at least 1, got %d", n)
	}
	if o.auth && (o.authUser == "" || o.authPassword == "") {
		t.Fatalf("etcdtest: WithAuth needs a user and a password, got user %q and a password of %d bytes", o.authUser, len(o.authPassword))
	}
	var tf *TLSFiles
	if o.tls {
		f := NewTLSFiles(t)
		tf = &f
	}
	for attempt := 1; ; attempt++ {
		g, detail, err := tryStartGroup(t, n, o, tf)
		if err == nil {
			t.Cleanup(g.cleanup)
			return g
		}
		if !isAddrInUse(err) || attempt >= maxStartAttempts {
			t.Fatalf("etcdtest: starting %d member(s) failed (attempt %d of at most %d): %v\n%s",
				n, attempt, maxStartAttempts, err, detail)
		}
	}
}

// tryStartGroup makes one attempt on fresh ports and a fresh directory.
// On failure everything it started is stopped and detail describes the
// members.
func tryStartGroup(t testing.TB, n int, o *options, tf *TLSFiles) (*Group, string, error) {
	ports, err := allocPortsFunc(2 * n)
	if err != nil {
		return nil, "", err
	}
	base := t.TempDir()
	g := &Group{
		t:        t,
		token:    fmt.Sprintf("etcdtest-%016x", rand.Uint64()),
		ports:    ports,
		tlsFiles: tf,
	}
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		g.members = append(g.members, &Member{
			t:          t,
			name:       name,
			dir:        filepath.Join(base, name),
			clientPort: ports[2*i],
			peerPort:   ports[2*i+1],
			group:      g,
			opts:       o,
			logs:       &logRing{},
		})
	}
	fail := func(err error) (*Group, string, error) {
		detail := g.describe()
		g.stopAll()
		releasePorts(ports)
		_ = os.RemoveAll(base)
		return nil, detail, err
	}
	for _, m := range g.members {
		if err := m.start(); err != nil {
			return fail(fmt.Errorf("%s: %w", m.name, err))
		}
	}
	if err := g.waitAllReady(); err != nil {
		return fail(err)
	}
	if o.auth {
		if err := g.enableAuth(o.authUser, o.authPassword); err != nil {
			return fail(fmt.Errorf("enabling auth: %w", err))
		}
	}
	return g, "", nil
}

// enableAuth creates the root user (and user, with the root role, unless
// user is root), enables authentication, and from then on makes the
// group's clients authenticate as user.
func (g *Group) enableAuth(user, password string) error {
	rootPassword := password
	if user != "root" {
		rootPassword = fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
	}
	var tc *tls.Config
	for _, m := range g.members {
		m.mu.Lock()
		if m.tlsCfg != nil {
			tc = m.tlsCfg
		}
		m.mu.Unlock()
	}
	c, err := clientv3.New(clientConfig(g.Endpoints(), tc))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	steps := []func() error{
		func() error { _, err := c.RoleAdd(ctx, "root"); return err },
		func() error { _, err := c.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
	}
	if user != "root" {
		steps = append(steps,
			func() error { _, err := c.UserAdd(ctx, user, password); return err },
			func() error { _, err := c.UserGrantRole(ctx, user, "root"); return err },
		)
	}
	steps = append(steps, func() error { _, err := c.AuthEnable(ctx); return err })
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	g.user, g.password, g.rootPassword = user, password, rootPassword
	return nil
}

// TLS returns the certificate files of a group started WithTLS (or
// WithClientCertAuth); without TLS it returns the zero TLSFiles.
func (g *Group) TLS() TLSFiles {
	if g.tlsFiles == nil {
		return TLSFiles{}
	}
	return *g.tlsFiles
}

// Auth returns the user and password clients authenticate with, as given
// to WithAuth, and the root user's password (equal to password when user
// is "root"). Without WithAuth all three are empty.
func (g *Group) Auth() (user, password, rootPassword string) {
	return g.user, g.password, g.rootPassword
}

func (g *Group) waitAllReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	errs := make([]error, len(g.members))
	var wg sync.WaitGroup
	for i, m := range g.members {
		wg.Go(func() {
			if err := m.waitReady(ctx); err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (g *Group) cleanup() {
	g.stopAll()
	// A request in flight while a member stopped may have parked its
	// connection in an idle pool after that member closed its pools; with
	// every member down, close them all once more (see peerconns.go).
	for _, m := range g.members {
		m.mu.Lock()
		e := m.last
		m.mu.Unlock()
		if e != nil {
			closePeerIdleConns(e.Server)
		}
	}
	releasePorts(g.ports)
}

// stopAll stops the members one at a time, the current leader last, so that
// no stopping member tries to hand leadership to a member that is itself
// shutting down.
func (g *Group) stopAll() {
	var leader *Member
	for _, m := range g.members {
		if e := m.Server(); e != nil && e.Server.Leader() == e.Server.MemberID() {
			leader = m
			continue
		}
		m.Stop()
	}
	if leader != nil {
		leader.Stop()
	}
}

func (g *Group) describe() string {
	var b strings.Builder
	for _, m := range g.members {
		b.WriteString(m.describe())
	}
	return b.String()
}

// Members returns the members in creation order (names m0, m1, ...).
func (g *Group) Members() []*Member {
	return append([]*Member(nil), g.members...)
}

// Endpoints returns the client addresses of all members, stopped ones
// included, in the form Member.Endpoints uses ("127.0.0.1:PORT", or
// "https://127.0.0.1:PORT" with TLS).
func (g *Group) Endpoints() []string {
	var eps []string
	for _, m := range g.members {
		eps = append(eps, m.endpoint())
	}
	return eps
}

// Client returns a new client balancing over all members, configured like
// Member.Client. It is closed by t.Cleanup.
func (g *Group) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	for _, m := range g.members {
		m.mu.Lock()
		tc := m.tlsCfg
		m.mu.Unlock()
		if tc != nil {
			return newClient(t, g.Endpoints(), tc, g.user, g.password)
		}
	}
	return newClient(t, g.Endpoints(), nil, g.user, g.password)
}

// Leader is WaitLeader using the testing.TB given to Cluster, so it must be
// called from that test's goroutine.
func (g *Group) Leader() *Member {
	g.t.Helper()
	return g.WaitLeader(g.t)
}

// WaitLeader waits until exactly one running member considers itself the
// leader and every running member agrees on it, and returns that member.
// It calls t.Fatal if that does not happen within 20 seconds.
func (g *Group) WaitLeader(t testing.TB) *Member {
	t.Helper()
	deadline := time.Now().Add(leaderTimeout)
	for {
		if m := g.stableLeader(); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcdtest: no stable leader after %v: %s", leaderTimeout, g.leaderView())
		}
		time.Sleep(pollInterval)
	}
}

func (g *Group) stableLeader() *Member {
	var leader *Member
	var running []*Member
	for _, m := range g.members {
		e := m.Server()
		if e == nil {
			continue
		}
		running = append(running, m)
		if e.Server.Leader() == e.Server.MemberID() {
			if leader != nil {
				return nil
			}
			leader = m
		}
	}
	if leader == nil {
		return nil
	}
	le := leader.Server()
	if le == nil {
		return nil
	}
	id := le.Server.MemberID()
	for _, m := range running {
		e := m.Server()
		if e == nil || e.Server.Leader() != id {
			return nil
		}
	}
	return leader
}

func (g *Group) leaderView() string {
	var parts []string
	for _, m := range g.members {
		e := m.Server()
		if e == nil {
			parts = append(parts, m.name+": stopped")
			continue
		}
		parts = append(parts, fmt.Sprintf("%s: id %s sees leader %s", m.name, e.Server.MemberID(), e.Server.Leader()))
	}
	return strings.Join(parts, "; ")
}

// Stop stops all members; stopped members are skipped.
func (g *Group) Stop() { g.stopAll() }

// Restart stops every running member and starts all members again at the
// same time, which also brings back a cluster that lost quorum. It waits
// until every member serves a linearizable Get and calls t.Fatal (of the
// test given to Cluster) on failure.
func (g *Group) Restart() {
	g.t.Helper()
	g.stopAll()
	for _, m := range g.members {
		m.opMu.Lock()
	}
	defer func() {
		for _, m := range g.members {
			m.opMu.Unlock()
		}
	}()
	for _, m := range g.members {
		if err := m.startRetryBind(); err != nil {
			detail := g.describe()
			for _, m := range g.members {
				m.stopLocked()
			}
			g.t.Fatalf("etcdtest: restarting %s: %v\n%s", m.name, err, detail)
		}
	}
	if err := g.waitAllReady(); err != nil {
		detail := g.describe()
		for _, m := range g.members {
			m.stopLocked()
		}
		g.t.Fatalf("etcdtest: restarting cluster: %v\n%s", err, detail)
	}
}
