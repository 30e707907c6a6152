package chaosharness

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/faultproxy"
)

const (
	service = "echo.rpc"

	// pollEvery is how often the observer reads etcd.
	pollEvery = 50 * time.Millisecond
	// rpcTimeout bounds one RPC of the load; a slower one counts as failed.
	// The echo RPC takes well under a millisecond and none of the faults
	// touches the backends, so only a stalled process comes near it.
	rpcTimeout = 5 * time.Second
)

// Params shape a scenario run.
type Params struct {
	TTL      time.Duration // the backends' lease TTL
	Bound    time.Duration // slack allowed beyond the TTL
	Fault    time.Duration // how long a timed fault lasts
	Backends int           // in-process backends at the start
	Clients  int           // clients under test
	Workers  int           // RPC goroutines per client
	Maker    ClientMaker   // the clients under test
	Servers  BackendMaker  // the backends' registration; MusterBackends if zero

	// RecordOnly measures and reports without failing the test when a
	// bound is violated: for the peers, whose figures are recorded as
	// they come. After the fault it keeps watching for Observe (at least
	// TTL + bound + 1s), so that a slow recovery is told from none.
	RecordOnly bool
	Observe    time.Duration
}

// servers returns the backend maker in use.
func (p Params) servers() BackendMaker {
	if p.Servers.Start == nil {
		return MusterBackends
	}
	return p.Servers
}

// window is how long after the fault the run goes on: TTL + bound + 1s, or
// Observe in RecordOnly mode if that is longer.
func (p Params) window() time.Duration {
	w := p.TTL + p.Bound + time.Second
	if p.RecordOnly && p.Observe > w {
		w = p.Observe
	}
	return w
}

// env is one scenario's world: the cluster, fault proxies in front of its
// members, backends, clients under test, the load and the observer.
//
// The proxies come in groups, each with one proxy per member: the backends
// share the group "servers", and client i has the group "c<i>" to itself,
// so that a scenario can steer each onto a member of its choice. Faults
// apply to every group unless a scenario says otherwise.
type env struct {
	t       *testing.T
	p       Params
	cluster *etcdtest.Group
	direct  *clientv3.Client // straight to the members: the observer's and the admin's
	obs     *observer
	load    *load
	stalls  *stallMonitor
	started time.Time

	mu       sync.Mutex
	groups   map[string][]*faultproxy.Proxy // group -> one proxy per member, in member order
	order    []string                       // group names, in creation order
	backends []*backend
	clients  []*clientRun
	nextID   int

	faultStart, faultEnd time.Time
}

// serversGroup is the proxy group of the backends.
const serversGroup = "servers"

// clientRun is a client under test with its name, proxy group and logs.
type clientRun struct {
	name  string
	group string // its proxy group
	ClientUnderTest
	logs *logSink
}

func newEnv(t *testing.T, p Params) *env {
	t.Helper()
	e := &env{t: t, p: p, started: time.Now(), groups: map[string][]*faultproxy.Proxy{}}
	e.cluster = etcdtest.Cluster(t, 3)
	e.direct = e.cluster.Client(t)
	e.obs = startObserver(e.direct, p.servers())
	e.load = newLoad()
	e.stalls = startStallMonitor()
	t.Cleanup(e.closeProxies)
	t.Cleanup(e.teardown)
	return e
}

// group returns the proxies of the named group, one per member, starting
// them the first time.
func (e *env) group(name string) []*faultproxy.Proxy {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if g, ok := e.groups[name]; ok {
		return g
	}
	var g []*faultproxy.Proxy
	for i, m := range e.cluster.Members() {
		px, err := faultproxy.New(m.Endpoints()[0])
		if err != nil {
			e.t.Fatal(err)
		}
		// A group made during a fault (a backend with proxies of its own,
		// started meanwhile) starts in the fault's mode.
		if len(e.order) > 0 {
			if err := px.SetMode(e.groups[e.order[0]][i].Mode()); err != nil {
				e.t.Fatal(err)
			}
		}
		g = append(g, px)
	}
	e.groups[name] = g
	e.order = append(e.order, name)
	return g
}

// hosts returns the addresses of a group's proxies, starting with member
// first: what a backend or client of that group is configured with.
func (e *env) hosts(group string, first int) []string {
	var hs []string
	for _, px := range e.group(group) {
		hs = append(hs, px.Addr())
	}
	return rotate(hs, first)
}

// allProxies returns every proxy of every group.
func (e *env) allProxies() []*faultproxy.Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*faultproxy.Proxy
	for _, name := range e.order {
		out = append(out, e.groups[name]...)
	}
	return out
}

// memberProxies returns the proxies in front of member i, in every group.
func (e *env) memberProxies(i int) []*faultproxy.Proxy {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*faultproxy.Proxy
	for _, name := range e.order {
		out = append(out, e.groups[name][i])
	}
	return out
}

// memberIndex returns m's index in the cluster.
func (e *env) memberIndex(m *etcdtest.Member) int {
	for i, o := range e.cluster.Members() {
		if o == m {
			return i
		}
	}
	e.t.Fatalf("no member %s", m.Name())
	return -1
}

// setModes sets the mode of the given proxies, or of all of them.
func (e *env) setModes(m faultproxy.Mode, proxies ...*faultproxy.Proxy) {
	e.t.Helper()
	if len(proxies) == 0 {
		proxies = e.allProxies()
	}
	for _, px := range proxies {
		if err := px.SetMode(m); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) closeProxies() {
	for _, px := range e.allProxies() {
		_ = px.Close()
	}
}

// teardown runs before the proxies and the cluster stop: it lets the
// backends leave etcd properly.
func (e *env) teardown() {
	for _, px := range e.allProxies() {
		_ = px.SetMode(faultproxy.Pass())
	}
	e.load.stopAll()
	e.mu.Lock()
	clients, backends := e.clients, e.backends
	e.mu.Unlock()
	for _, c := range clients {
		_ = c.Close()
	}
	var wg sync.WaitGroup
	for _, b := range backends {
		wg.Go(b.stop)
	}
	wg.Wait()
	e.obs.stop()
	e.stalls.stop()
	if e.t.Failed() || os.Getenv("MUSTER_CHAOS_LOGS") != "" {
		if !e.faultEnd.IsZero() {
			e.t.Logf("fault from +%v to +%v", e.faultStart.Sub(e.started).Round(time.Millisecond), e.faultEnd.Sub(e.started).Round(time.Millisecond))
		}
		e.dumpLogs()
	}
}

func (e *env) dumpLogs() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range e.backends {
		e.t.Logf("--- backend %s (%s) log:\n%s", b.name, b.addr, b.logs.String(e.started))
	}
	for _, c := range e.clients {
		e.t.Logf("--- client %s log:\n%s", c.name, c.logs.String(e.started))
	}
}

// backend is a live echo server registered in etcd by the scenario's
// BackendMaker, in this process or in a child process.
type backend struct {
	name  string
	addr  string
	group string // its proxy group
	logs  *logSink
	run   Backend    // in this process
	cmd   *exec.Cmd  // a child process
	exit  chan error // the child's Wait

	mu   sync.Mutex
	died time.Time // when it was killed or began shutting down; zero while live
}

func (b *backend) diedAt() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.died
}

func (b *backend) markDied() {
	b.mu.Lock()
	if b.died.IsZero() {
		b.died = time.Now()
	}
	b.mu.Unlock()
}

func (b *backend) stop() {
	switch {
	case b.run != nil:
		b.markDied()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_ = b.run.Shutdown(ctx)
	case b.cmd != nil:
		b.markDied()
		_ = b.cmd.Process.Kill()
		<-b.exit
	}
}

// newBackendSlot names the next backend and picks its proxy group: the
// shared "servers", or one of its own if the BackendMaker asks for it.
func (e *env) newBackendSlot(kind string) (name, group string, i int) {
	e.mu.Lock()
	i = e.nextID
	e.nextID++
	e.mu.Unlock()
	name = fmt.Sprintf("%s%d", kind, i)
	group = serversGroup
	if e.p.servers().OwnProxies {
		group = serversGroup + "-" + name
	}
	return name, group, i
}

// startBackend starts an in-process backend and waits until etcd holds it.
func (e *env) startBackend() *backend {
	e.t.Helper()
	name, group, i := e.newBackendSlot("b")
	logs := &logSink{}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	run, err := e.p.servers().Start(ctx, BackendConfig{
		Name:    name,
		Service: service,
		Hosts:   e.hosts(group, i),
		TTL:     e.p.TTL,
		Log:     slog.New(logs.handler()),
	})
	if err != nil {
		e.t.Fatalf("starting backend %s: %v", name, err)
	}
	b := &backend{name: name, addr: run.Addr(), group: group, logs: logs, run: run}
	e.mu.Lock()
	e.backends = append(e.backends, b)
	e.mu.Unlock()
	e.waitInEtcd(b.addr)
	return b
}

// Environment of the child process backend.
const (
	helperEnv       = "MUSTER_CHAOS_HELPER"
	helperHostsEnv  = "MUSTER_CHAOS_HELPER_HOSTS"
	helperTTLEnv    = "MUSTER_CHAOS_HELPER_TTL"
	helperSystemEnv = "MUSTER_CHAOS_HELPER_SYSTEM"
)

// startProcessBackend starts a backend in a child process (this test
// binary, whose TestMain calls HelperMain) and waits until etcd holds it.
func (e *env) startProcessBackend() *backend {
	e.t.Helper()
	name, group, i := e.newBackendSlot("p")
	logs := &logSink{}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"="+name,
		helperHostsEnv+"="+strings.Join(e.hosts(group, i), ","),
		helperTTLEnv+"="+e.p.TTL.String(),
		helperSystemEnv+"="+e.p.servers().Name)
	cmd.Stderr = logs.writer()
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	b := &backend{name: name, group: group, logs: logs, cmd: cmd, exit: make(chan error, 1)}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
		b.exit <- cmd.Wait()
	}()
	e.mu.Lock()
	e.backends = append(e.backends, b)
	e.mu.Unlock()
	select {
	case line := <-lines:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ready ")
		if !ok {
			e.t.Fatalf("backend process %s said %q; its log:\n%s", name, line, logs.String(e.started))
		}
		b.addr = addr
	case <-time.After(30 * time.Second):
		e.t.Fatalf("backend process %s not ready after 30s; its log:\n%s", name, logs.String(e.started))
	}
	e.waitInEtcd(b.addr)
	return b
}

// IsHelper reports whether this process is a child process backend, started
// by a scenario; its TestMain must then call HelperMain instead of running
// the tests.
func IsHelper() bool { return os.Getenv(helperEnv) != "" }

// HelperMain is the child process backend: the BackendMaker of the given
// ones that the parent named starts an echo backend registered through the
// given etcd hosts. It prints "ready ADDR" and serves until it is killed.
func HelperMain(makers ...BackendMaker) {
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	ttl, err := time.ParseDuration(os.Getenv(helperTTLEnv))
	if err != nil {
		fail(err)
	}
	system := os.Getenv(helperSystemEnv)
	i := slices.IndexFunc(makers, func(m BackendMaker) bool { return m.Name == system })
	if i < 0 {
		fail(fmt.Errorf("no backend maker %q", system))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run, err := makers[i].Start(ctx, BackendConfig{
		Name:    os.Getenv(helperEnv),
		Service: service,
		Hosts:   strings.Split(os.Getenv(helperHostsEnv), ","),
		TTL:     ttl,
		Log:     slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		fail(err)
	}
	fmt.Println("ready", run.Addr())
	select {} // until SIGKILL
}

// kill kills a child process backend with SIGKILL: no deregistration.
func (e *env) kill(b *backend) time.Time {
	e.t.Helper()
	if b.cmd == nil {
		e.t.Fatalf("backend %s is not a process", b.name)
	}
	b.markDied()
	if err := b.cmd.Process.Kill(); err != nil {
		e.t.Fatal(err)
	}
	return b.diedAt()
}

// shutdown stops an in-process backend gracefully, as its BackendMaker does
// (muster.Server.Shutdown: NOT_SERVING, revoke, drain delay, GracefulStop).
func (e *env) shutdown(b *backend) { b.stop() }

func (e *env) live() []*backend {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*backend
	for _, b := range e.backends {
		if b.diedAt().IsZero() {
			out = append(out, b)
		}
	}
	return out
}

func (e *env) liveAddrs() []string {
	var out []string
	for _, b := range e.live() {
		out = append(out, b.addr)
	}
	slices.Sort(out)
	return out
}

// startClients makes n clients under test.
func (e *env) startClients(n int) {
	e.t.Helper()
	for i := range n {
		logs := &logSink{}
		name := fmt.Sprintf("%s-c%d", e.p.Maker.Name, i)
		group := fmt.Sprintf("c%d", i)
		c, err := e.p.Maker.New(e.hosts(group, i), service, i, slog.New(logs.handler()))
		if err != nil {
			e.t.Fatal(err)
		}
		cl := &clientRun{name: name, group: group, ClientUnderTest: c, logs: logs}
		e.mu.Lock()
		e.clients = append(e.clients, cl)
		e.mu.Unlock()
		e.load.start(cl, e.p.Workers)
	}
}

// waitServed waits until every client has been answered by every live
// backend.
func (e *env) waitServed() {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var missing []string
		for _, c := range e.clientList() {
			for _, b := range e.live() {
				if !e.load.servedBy(c.name, b.name) {
					missing = append(missing, c.name+"->"+b.name)
				}
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("not served after 30s: %v", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) clientList() []*clientRun {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.clients)
}

// etcdAddrs reads the service's addresses from etcd, directly.
func (e *env) etcdAddrs() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	set, err := readAddrs(ctx, e.direct, e.p.servers())
	if err != nil {
		return nil, err
	}
	out := slices.Collect(maps.Keys(set))
	slices.Sort(out)
	return out, nil
}

// readAddrs reads the addresses registered under the BackendMaker's
// prefix.
func readAddrs(ctx context.Context, cli *clientv3.Client, m BackendMaker) (map[string]bool, error) {
	resp, err := cli.Get(ctx, m.Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	for _, kv := range resp.Kvs {
		if a := m.Addr(kv.Key, kv.Value); a != "" {
			set[a] = true
		}
	}
	return set, nil
}

func (e *env) waitInEtcd(addr string) {
	e.t.Helper()
	wait := 30 * time.Second
	if e.p.RecordOnly && !e.faultStart.IsZero() && e.faultEnd.IsZero() {
		// A backend started during the fault, whose registration may
		// wait for the fault to end: recorded, without holding the
		// scenario up.
		wait = 2 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		if addrs, err := e.etcdAddrs(); err == nil && slices.Contains(addrs, addr) {
			return
		}
		if time.Now().After(deadline) {
			if e.p.RecordOnly {
				// Recorded: the backend's registration is missing.
				e.t.Logf("%s not in etcd after %v", addr, wait)
				return
			}
			e.t.Fatalf("%s not in etcd after 30s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Result is one scenario's figures.
type Result struct {
	Scenario    string
	Fault       string
	System      string // the clients' and backends' kind ("muster", or "etcd naming / etcd naming")
	OK          int64
	Failed      int64 // RPCs that failed, those cut by a SIGKILL excepted
	CutByKill   int64 // RPCs in flight on a backend when it was SIGKILLed
	MaxGap      time.Duration
	Healed      time.Duration // registrations all back, after the fault ended
	Converged   time.Duration // every resolver equal to etcd, after the fault ended
	DeadEtcd    time.Duration // longest a dead backend stayed in etcd
	DeadClients time.Duration // longest a dead backend stayed in a resolver
	Dead        int
	Took        time.Duration
	Stall       time.Duration // the longest the test process stalled
	Problems    []string

	// Limit is TTL + bound, and Window how long after the fault the run
	// watched (TTL + bound + 1s, longer in RecordOnly mode).
	Limit, Window time.Duration
	// NotHealed says which live backends were still missing from etcd at
	// the end of the window; "" if none.
	NotHealed string
	// NotConverged says how a resolver (or etcd) still differed at the end
	// of the window; "" if none did.
	NotConverged string
	// StoppedClients are the clients that differed from etcd at the end
	// and received no update after etcd's last change: their watch stopped.
	StoppedClients []string
	// LostAgain: the registrations healed after the fault, and were lost
	// again by the end (NotHealed says which).
	LostAgain bool
	// DeadHeld: a resolver still held a dead backend at the end
	// (RecordOnly mode; DeadClients is then the time until the end).
	DeadHeld bool
	// ReRegistered says whether the live backends whose key went missing
	// from etcd came back: "-" if none went missing.
	ReRegistered string
}

// beginFault and endFault bracket the fault.
func (e *env) beginFault() { e.faultStart = time.Now() }
func (e *env) endFault()   { e.faultEnd = time.Now() }

// finish measures the recovery, lets the scenario settle for TTL + bound
// after the fault (or Params.Observe, in RecordOnly mode), checks the end
// state and analyses the run.
func (e *env) finish(scenario, fault string) Result {
	e.t.Helper()
	r := Result{Scenario: scenario, Fault: fault, System: e.p.system()}
	limit := e.p.TTL + e.p.Bound
	window := e.p.window()
	r.Limit, r.Window = limit, window
	if e.faultEnd.IsZero() {
		e.endFault()
	}
	end := e.faultEnd

	// Registrations healed: every live backend in etcd.
	healedCond := func() error {
		got, err := e.etcdAddrs()
		if err != nil {
			return err
		}
		if missing := minus(e.liveAddrs(), got); len(missing) > 0 {
			return fmt.Errorf("not in etcd: %s", e.names(missing))
		}
		return nil
	}
	healed, err := e.waitUntil(end, limit, healedCond)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("registrations not healed within TTL+bound (%v) after the fault: %v", limit, err))
		if e.p.RecordOnly {
			healed, err = e.waitUntil(end, window, healedCond)
			if err != nil {
				r.NotHealed = err.Error()
			}
		}
	}
	r.Healed = max(healed, e.registrarsHealed(end))

	// Resolvers converged: every client holds what etcd holds, and etcd
	// holds the live backends.
	conv, err := e.waitUntil(end, limit, e.converged)
	if err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("resolvers not converged within TTL+bound (%v) after the fault: %v", limit, err))
		if e.p.RecordOnly {
			conv, err = e.waitUntil(end, window, e.converged)
			if err != nil {
				r.NotConverged = err.Error()
			}
		}
	}
	r.Converged = conv

	// Settle: a lease nobody keeps alive any more expires in this time.
	if d := time.Until(end.Add(window)); d > 0 {
		time.Sleep(d)
	}
	if _, err := e.waitUntil(time.Now(), e.p.Bound, e.converged); err != nil {
		r.Problems = append(r.Problems, fmt.Sprintf("at the end: %v", err))
		if r.NotConverged == "" {
			r.NotConverged = err.Error()
		}
		if r.NotHealed == "" && e.p.RecordOnly {
			if err := healedCond(); err != nil {
				// Healed, then lost again (a lease the client gave up on).
				r.NotHealed = "at the end, " + err.Error()
				r.LostAgain = true
			}
		}
	}
	e.load.stopAll()

	// The load.
	r.OK = e.load.ok.Load()
	for _, f := range e.load.failures() {
		if e.cutByKill(f) {
			r.CutByKill++
			continue
		}
		r.Failed++
		if r.Failed <= 5 {
			stall := ""
			if d := e.stalls.longest(f.start, f.at); d > 0 {
				stall = fmt.Sprintf(" (meanwhile the test process stalled for %v)", d.Round(time.Millisecond))
			}
			r.Problems = append(r.Problems, fmt.Sprintf("RPC by %s to %q failed at +%v after %v: %s%s",
				f.client, f.addr, f.at.Sub(e.started).Round(time.Millisecond), f.at.Sub(f.start).Round(time.Millisecond), f.err, stall))
		}
	}
	if r.Failed > 5 {
		r.Problems = append(r.Problems, fmt.Sprintf("... %d failed RPCs in all", r.Failed))
	}
	if r.OK == 0 {
		r.Problems = append(r.Problems, "no RPC succeeded: the load did not run")
	}

	// Registrations lost, and dead endpoints kept.
	polls := e.obs.history()
	e.mu.Lock()
	backends := slices.Clone(e.backends)
	clients := slices.Clone(e.clients)
	e.mu.Unlock()
	var back, lost []string // live backends that went missing from etcd, and came back or not
	for _, b := range backends {
		died := b.diedAt()
		gap, at := maxGap(polls, b.addr, died)
		if gap > r.MaxGap {
			r.MaxGap = gap
		}
		if gap > limit {
			r.Problems = append(r.Problems, fmt.Sprintf("backend %s (%s) missing from etcd for %v from +%v while alive (limit TTL+bound = %v)",
				b.name, b.addr, gap.Round(time.Millisecond), at.Sub(e.started).Round(time.Millisecond), limit))
		}
		if died.IsZero() {
			if gap > 0 {
				if n := len(polls); n > 0 && polls[n-1].addrs[b.addr] {
					back = append(back, b.name)
				} else {
					lost = append(lost, b.name)
				}
			}
			continue
		}
		r.Dead++
		inEtcd, ok := lastSeen(polls, b.addr, died)
		if !ok {
			r.Problems = append(r.Problems, fmt.Sprintf("dead backend %s (%s) still in etcd at the end", b.name, b.addr))
		}
		r.DeadEtcd = max(r.DeadEtcd, inEtcd)
		if inEtcd > limit {
			r.Problems = append(r.Problems, fmt.Sprintf("dead backend %s stayed in etcd %v after it died (limit %v)", b.name, inEtcd.Round(time.Millisecond), limit))
		}
		for _, c := range clients {
			stale, ok := lastHeld(c.History(), b.addr, died)
			if !ok {
				r.Problems = append(r.Problems, fmt.Sprintf("client %s still holds dead backend %s at the end", c.name, b.name))
				if e.p.RecordOnly {
					stale = time.Since(died)
					r.DeadHeld = true
				}
			}
			r.DeadClients = max(r.DeadClients, stale)
			if stale > limit {
				r.Problems = append(r.Problems, fmt.Sprintf("client %s held dead backend %s for %v after it died (limit %v)", c.name, b.name, stale.Round(time.Millisecond), limit))
			}
		}
	}
	switch {
	case len(back) == 0 && len(lost) == 0:
		r.ReRegistered = "-"
	case len(lost) == 0:
		r.ReRegistered = "yes"
	case len(back) == 0:
		r.ReRegistered = "no (" + strings.Join(lost, ", ") + ")"
	default:
		r.ReRegistered = fmt.Sprintf("%s yes; %s no", strings.Join(back, ", "), strings.Join(lost, ", "))
	}

	// Clients whose watch stopped: they differ from etcd at the end and
	// received nothing since etcd's set last changed.
	if want, err := e.etcdAddrs(); err == nil {
		changed := lastChange(polls)
		for _, c := range clients {
			h := c.History()
			if slices.Equal(c.Endpoints(), want) {
				continue
			}
			if len(h) == 0 || h[len(h)-1].At.Before(changed) {
				r.StoppedClients = append(r.StoppedClients, c.name)
			}
		}
	}
	if e.p.RecordOnly {
		e.settledTimes(&r, polls, clients, end)
	}
	r.Took = time.Since(e.started)
	r.Stall = e.stalls.longest(e.started, time.Now())
	return r
}

// settledTimes makes Healed and Converged, in RecordOnly mode, count up to
// the last time they were untrue after the fault rather than the first
// time they held: a system can heal at once and lose its registrations
// again a few seconds later (a lease its client gave up renewing).
// Healed becomes the time after end of the first poll from which etcd
// held every backend live at the end; Converged, if every resolver ended
// converged, is at least that and at least the time of the last update any
// resolver made after end.
func (e *env) settledTimes(r *Result, polls []poll, clients []*clientRun, end time.Time) {
	live := e.liveAddrs()
	var from time.Time // the first poll of the final run with every live backend
	for _, p := range polls {
		if !p.ok || p.at.Before(end) {
			continue
		}
		all := true
		for _, a := range live {
			all = all && p.addrs[a]
		}
		switch {
		case !all:
			from = time.Time{}
		case from.IsZero():
			from = p.at
		}
	}
	if r.NotHealed == "" && !from.IsZero() {
		r.Healed = max(r.Healed, from.Sub(end))
	}
	if r.NotConverged != "" {
		return
	}
	conv := r.Healed
	for _, c := range clients {
		if h := c.History(); len(h) > 0 && h[len(h)-1].At.After(end) {
			conv = max(conv, h[len(h)-1].At.Sub(end))
		}
	}
	r.Converged = max(r.Converged, conv)
}

// lastChange returns the time of the first poll that saw etcd's last set
// of addresses.
func lastChange(polls []poll) time.Time {
	var at time.Time
	var prev map[string]bool
	for _, p := range polls {
		if !p.ok {
			continue
		}
		if prev == nil || !maps.Equal(prev, p.addrs) {
			at = p.at
		}
		prev = p.addrs
	}
	return at
}

// names returns the backends' names for addrs ("b0 b2"), or an address for
// one that is no backend's.
func (e *env) names(addrs []string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, a := range addrs {
		n := a
		for _, b := range e.backends {
			if b.addr == a {
				n = b.name
			}
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, " ")
}

// converged reports whether etcd holds exactly the live backends and every
// client exactly what etcd holds.
func (e *env) converged() error {
	want, err := e.etcdAddrs()
	if err != nil {
		return err
	}
	if live := e.liveAddrs(); !slices.Equal(want, live) {
		return fmt.Errorf("etcd holds %s, the live backends are %s", e.names(want), e.names(live))
	}
	for _, c := range e.clientList() {
		if got := c.Endpoints(); !slices.Equal(got, want) {
			return fmt.Errorf("client %s holds %s, etcd %s", c.name, e.names(got), e.names(want))
		}
	}
	return nil
}

// waitUntil polls cond from now until it holds or from+limit passes, and
// returns how long after from it first held.
func (e *env) waitUntil(from time.Time, limit time.Duration, cond func() error) (time.Duration, error) {
	for {
		err := cond()
		if err == nil {
			return max(time.Since(from), 0), nil
		}
		if time.Since(from) > limit {
			return time.Since(from), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// registrarsHealed returns how long after end the in-process backends'
// registrars last recovered from an etcd failure ("etcd writes succeed
// again"), or 0 if none recovered after end.
func (e *env) registrarsHealed(end time.Time) time.Duration {
	var last time.Time
	for _, b := range e.live() {
		if t := b.logs.last("registry: etcd writes succeed again"); t.After(last) {
			last = t
		}
	}
	if last.After(end) {
		return last.Sub(end)
	}
	return 0
}

// killWindow is how long after a SIGKILL an RPC failing on the killed
// process's connection counts as cut by the kill.
const killWindow = time.Second

// cutByKill reports whether a failed RPC died with a SIGKILLed backend: it
// went to that backend's address and failed Unavailable right after the
// kill. Such an RPC was in flight on the process, or sent on its
// connection before the client could know the process was gone; no client
// can save it except by retrying. A later failure on that address would
// mean the balancer kept picking a dead backend, and counts as failed.
func (e *env) cutByKill(f failure) bool {
	if status.Code(f.errv) != codes.Unavailable || f.addr == "" {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, b := range e.backends {
		if d := b.diedAt(); b.cmd != nil && !d.IsZero() && f.addr == b.addr && !f.at.Before(d) && f.at.Sub(d) < killWindow {
			return true
		}
	}
	return false
}

// maxGap returns the longest time addr was missing from etcd while its
// backend lived: from the first poll that did not see it (after it was
// first seen) to the next that did, or to its death or the last poll.
func maxGap(polls []poll, addr string, died time.Time) (time.Duration, time.Time) {
	var longest time.Duration
	var longestAt, missingSince time.Time
	seen := false
	for _, p := range polls {
		if !died.IsZero() && p.at.After(died) {
			break
		}
		if !p.ok {
			continue
		}
		switch {
		case p.addrs[addr]:
			if !missingSince.IsZero() {
				if g := p.at.Sub(missingSince); g > longest {
					longest, longestAt = g, missingSince
				}
				missingSince = time.Time{}
			}
			seen = true
		case seen && missingSince.IsZero():
			missingSince = p.at
		}
	}
	if !missingSince.IsZero() {
		end := polls[len(polls)-1].at
		if !died.IsZero() {
			end = died
		}
		if g := end.Sub(missingSince); g > longest {
			longest, longestAt = g, missingSince
		}
	}
	return longest, longestAt
}

// lastSeen returns how long after died etcd last held addr (0 if never),
// and false if it still did at the end.
func lastSeen(polls []poll, addr string, died time.Time) (time.Duration, bool) {
	var gone time.Time
	for _, p := range polls {
		if !p.ok || p.at.Before(died) {
			continue
		}
		if p.addrs[addr] {
			gone = time.Time{}
		} else if gone.IsZero() {
			gone = p.at
		}
	}
	if gone.IsZero() {
		return 0, false
	}
	return max(gone.Sub(died), 0), true
}

// lastHeld returns how long after died the client's resolver last held
// addr (0 if it had dropped it before), and false if it still does.
func lastHeld(h []Update, addr string, died time.Time) (time.Duration, bool) {
	if len(h) == 0 {
		return 0, true
	}
	if slices.Contains(h[len(h)-1].Addrs, addr) {
		return 0, false
	}
	// The update that dropped it for good.
	for i := len(h) - 1; i > 0; i-- {
		if slices.Contains(h[i-1].Addrs, addr) {
			return max(h[i].At.Sub(died), 0), true
		}
	}
	return 0, true
}

// minus returns the elements of a not in b.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// report fails the test with the result's problems and logs its line; in
// RecordOnly mode it only logs them.
func (e *env) report(r Result) {
	e.t.Helper()
	if e.p.RecordOnly {
		e.t.Logf("%s", r.PeerLine())
	} else {
		e.t.Logf("%s", r.Line())
	}
	if r.Stall > 0 {
		e.t.Logf("the test process stalled for up to %v during the run (a busy machine)", r.Stall.Round(time.Millisecond))
	}
	for _, p := range r.Problems {
		if e.p.RecordOnly {
			e.t.Logf("%s (%s): %s", r.Scenario, r.System, p)
		} else {
			e.t.Errorf("%s: %s", r.Scenario, p)
		}
	}
}

func ms(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

func (r Result) dead() string {
	if r.Dead == 0 {
		return "-"
	}
	return fmt.Sprintf("%s / %s", ms(r.DeadEtcd), ms(r.DeadClients))
}

func (r Result) failed() string {
	failed := fmt.Sprint(r.Failed)
	if r.CutByKill > 0 {
		failed += fmt.Sprintf(" (+%d in flight on the killed process)", r.CutByKill)
	}
	return failed
}

// Line is the result's row of TableHeader: pass or fail on the bounds.
func (r Result) Line() string {
	verdict := "ok"
	if len(r.Problems) > 0 {
		verdict = "FAIL"
	}
	return fmt.Sprintf("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |",
		r.Scenario, r.Fault, r.OK, r.failed(), ms(r.MaxGap), ms(r.Healed), ms(r.Converged), r.dead(), ms(r.Took), verdict)
}

// TableHeader heads the rows of Result.Line.
const TableHeader = "| scenario | fault | RPCs ok | RPCs failed | longest registration gap | registrations healed | resolvers converged | dead endpoint gone (etcd / resolvers) | took | verdict |\n" +
	"|---|---|---:|---:|---:|---:|---:|---:|---:|---|"

// Verdict sums the result up in words: "recovers" (within TTL + bound),
// "recovers late" (within the window), or what went wrong: "fails RPCs",
// "lost registration" (a live backend not in etcd at the end), "stops
// updating" (a resolver that got nothing since etcd last changed), "stays
// stale" (a resolver that differs from etcd at the end, or kept a dead
// endpoint longer than TTL + bound).
func (r Result) Verdict() string {
	var words []string
	if r.Failed > 0 {
		words = append(words, "fails RPCs")
	}
	if r.NotHealed != "" {
		words = append(words, "lost registration")
	}
	switch {
	case len(r.StoppedClients) > 0:
		words = append(words, "stops updating")
	case r.NotConverged != "" && r.NotHealed == "", r.DeadHeld, r.DeadClients > r.Limit:
		words = append(words, "stays stale")
	}
	if len(words) > 0 {
		return strings.Join(words, ", ")
	}
	if r.Healed > r.Limit || r.Converged > r.Limit || r.DeadEtcd > r.Limit || r.MaxGap > r.Limit {
		return "recovers late"
	}
	return "recovers"
}

// PeerLine is the result's row of PeerTableHeader: figures and a verdict in
// words, without pass or fail.
func (r Result) PeerLine() string {
	healed := ms(r.Healed)
	switch {
	case r.LostAgain:
		healed += ", then lost (" + r.NotHealed + ")"
	case r.NotHealed != "":
		healed = "never (" + r.NotHealed + ")"
	}
	conv := ms(r.Converged)
	if r.NotConverged != "" {
		conv = "never (" + r.NotConverged + ")"
	}
	dead := r.dead()
	if r.DeadHeld {
		dead = ms(r.DeadEtcd) + " / never"
	}
	return fmt.Sprintf("| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |",
		r.Scenario, r.System, r.OK, r.failed(), ms(r.MaxGap), healed, conv, dead, r.ReRegistered, r.Verdict())
}

// PeerTableHeader heads the rows of Result.PeerLine.
const PeerTableHeader = "| scenario | system | RPCs ok | RPCs failed | longest registration gap | registrations healed | resolvers converged | dead endpoint gone (etcd / resolvers) | re-registered | verdict |\n" +
	"|---|---|---:|---:|---:|---|---|---:|---|---|"

// observer reads the service's keys from etcd every pollEvery, through a
// client that bypasses the proxies.
type observer struct {
	cli    *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	polls []poll
}

type poll struct {
	at    time.Time
	ok    bool
	addrs map[string]bool
}

func startObserver(cli *clientv3.Client, m BackendMaker) *observer {
	ctx, cancel := context.WithCancel(context.Background())
	o := &observer{cli: cli, cancel: cancel, done: make(chan struct{})}
	go o.run(ctx, m)
	return o
}

func (o *observer) run(ctx context.Context, m BackendMaker) {
	defer close(o.done)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		addrs, err := readAddrs(gctx, o.cli, m)
		cancel()
		p := poll{at: time.Now(), ok: err == nil, addrs: addrs}
		o.mu.Lock()
		o.polls = append(o.polls, p)
		o.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (o *observer) history() []poll {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.polls)
}

func (o *observer) stop() {
	o.cancel()
	<-o.done
}

// load keeps RPCs going from every client and records the outcomes.
type load struct {
	ok      atomic.Int64
	stop    chan struct{}
	stopped atomic.Bool
	wg      sync.WaitGroup

	mu     sync.Mutex
	fails  []failure
	served map[string]map[string]int64 // client -> backend -> answers
}

type failure struct {
	client    string
	addr      string // where the RPC went, if it got that far
	start, at time.Time
	errv      error
	err       string
}

func newLoad() *load {
	return &load{stop: make(chan struct{}), served: map[string]map[string]int64{}}
}

func (l *load) start(c *clientRun, workers int) {
	l.mu.Lock()
	l.served[c.name] = map[string]int64{}
	l.mu.Unlock()
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
				name, addr, err := c.Call(ctx)
				cancel()
				l.mu.Lock()
				if err != nil {
					l.fails = append(l.fails, failure{client: c.name, addr: addr, start: start, at: time.Now(), errv: err, err: err.Error()})
				} else {
					l.served[c.name][name]++
				}
				l.mu.Unlock()
				if err == nil {
					l.ok.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
}

func (l *load) servedBy(client, backend string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.served[client][backend] > 0
}

func (l *load) failures() []failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.fails)
}

func (l *load) stopAll() {
	if !l.stopped.Swap(true) {
		close(l.stop)
	}
	l.wg.Wait()
}

// logSink keeps a component's log records, with their times.
type logSink struct {
	mu   sync.Mutex
	recs []logRec
}

type logRec struct {
	at   time.Time
	text string
	msg  string
}

const logKeep = 2000

func (s *logSink) add(r logRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recs) >= logKeep {
		s.recs = s.recs[1:]
	}
	s.recs = append(s.recs, r)
}

// last returns the time of the last record whose message starts with msg.
func (s *logSink) last(msg string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.recs) - 1; i >= 0; i-- {
		if strings.HasPrefix(s.recs[i].msg, msg) {
			return s.recs[i].at
		}
	}
	return time.Time{}
}

func (s *logSink) String(since time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, r := range s.recs {
		fmt.Fprintf(&b, "  +%v %s\n", r.at.Sub(since).Round(time.Millisecond), r.text)
	}
	return b.String()
}

func (s *logSink) handler() slog.Handler { return &sinkHandler{sink: s} }

// writer returns an io.Writer that records every line written.
func (s *logSink) writer() *lineWriter { return &lineWriter{sink: s} }

type sinkHandler struct {
	sink  *logSink
	attrs string
}

func (h *sinkHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *sinkHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String())
	b.WriteString(" ")
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.sink.add(logRec{at: r.Time, msg: r.Message, text: b.String()})
	return nil
}

func (h *sinkHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	return &sinkHandler{sink: h.sink, attrs: b.String()}
}

func (h *sinkHandler) WithGroup(string) slog.Handler { return h }

type lineWriter struct {
	sink *logSink
	mu   sync.Mutex
	buf  []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := slices.Index(w.buf, '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		w.sink.add(logRec{at: time.Now(), msg: line, text: line})
	}
	return len(p), nil
}

// stallMonitor notices when the test process (etcd members, backends and
// clients alike) stops running for a while, as a loaded machine can make
// it: it sleeps 10ms at a time and records oversleeps beyond 100ms.
type stallMonitor struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	stalls []stall
}

type stall struct {
	from, to time.Time
}

func startStallMonitor() *stallMonitor {
	ctx, cancel := context.WithCancel(context.Background())
	m := &stallMonitor{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			start := time.Now()
			time.Sleep(10 * time.Millisecond)
			if now := time.Now(); now.Sub(start) > 110*time.Millisecond {
				m.mu.Lock()
				m.stalls = append(m.stalls, stall{start, now})
				m.mu.Unlock()
			}
		}
	}()
	return m
}

// longest returns the longest stall overlapping [from, to].
func (m *stallMonitor) longest(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var d time.Duration
	for _, s := range m.stalls {
		if s.to.After(from) && s.from.Before(to) {
			d = max(d, s.to.Sub(s.from))
		}
	}
	return d
}

func (m *stallMonitor) stop() {
	m.cancel()
	<-m.done
}
