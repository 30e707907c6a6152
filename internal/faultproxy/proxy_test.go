package faultproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// echoServer is a plain TCP echo server on loopback that counts what it
// received; it honours half-closes.
type echoServer struct {
	lis      net.Listener
	received atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
}

func startEcho(t *testing.T) *echoServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoServer{lis: lis, conns: map[net.Conn]struct{}{}}
	s.wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						s.received.Add(int64(n))
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						if errors.Is(err, io.EOF) {
							_ = c.(*net.TCPConn).CloseWrite()
						}
						return
					}
				}
			})
		}
	})
	t.Cleanup(s.stop)
	return s
}

func (s *echoServer) addr() string { return s.lis.Addr().String() }

func (s *echoServer) stop() {
	s.lis.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func newProxy(t *testing.T, upstream string, opts ...Option) *Proxy {
	t.Helper()
	p, err := New(upstream, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func setMode(t *testing.T, p *Proxy, m Mode) {
	t.Helper()
	if err := p.SetMode(m); err != nil {
		t.Fatal(err)
	}
}

// roundTrip writes msg and reads as many bytes back, within d.
func roundTrip(c net.Conn, msg []byte, d time.Duration) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return got, err
}

func mustEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	got, err := roundTrip(c, []byte(msg), 5*time.Second)
	if err != nil || string(got) != msg {
		t.Fatalf("echo of %q: got %q, %v", msg, got, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestPassForwardsBothWays(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		done <- err
	}()
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echoed bytes differ")
	}
	st := p.Stats()
	if st.Accepted != 1 || st.Active != 1 || st.BytesUp != int64(len(msg)) || st.BytesDown != int64(len(msg)) {
		t.Fatalf("stats %+v", st)
	}
	if p.Mode().Kind != KindPass || p.Upstream() != e.addr() {
		t.Fatalf("mode %v upstream %s", p.Mode(), p.Upstream())
	}
}

func TestHalfCloseIsForwarded(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c) // the echo, then EOF once the server closed too
	if err != nil || string(got) != "last words" {
		t.Fatalf("read %q, %v", got, err)
	}
	waitFor(t, "connection gone from the proxy", func() bool { return p.Stats().Active == 0 })
}

func TestDelayAddsLatencyWithoutLimitingThroughput(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	mustEcho(t, c, "warm")

	const d = 100 * time.Millisecond
	for _, tc := range []struct {
		dir  Direction
		want time.Duration
	}{{Both, 2 * d}, {Up, d}, {Down, d}} {
		setMode(t, p, Delay(d, tc.dir))
		start := time.Now()
		mustEcho(t, c, "ping")
		if took := time.Since(start); took < tc.want {
			t.Errorf("%v: round trip %v, want at least %v", tc.dir, took, tc.want)
		}
	}

	// Pipelined: ten writes in a row come back in about one round trip,
	// not ten.
	setMode(t, p, Delay(d, Both))
	start := time.Now()
	for range 10 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := make([]byte, 10)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	// Serially they would take 10 x 2d = 2s.
	if took := time.Since(start); took < 2*d || took > 15*d {
		t.Errorf("ten pipelined writes took %v, want about %v", took, 2*d+50*time.Millisecond)
	}

	setMode(t, p, Pass())
	best := time.Hour
	for range 3 { // the best of three, for a busy machine
		start = time.Now()
		mustEcho(t, c, "fast again")
		best = min(best, time.Since(start))
	}
	if best >= 2*d {
		t.Errorf("round trip after Pass took %v, as if still delayed", best)
	}
}

func TestDelayPerChunkThrottles(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	c := dial(t, p.Addr())
	mustEcho(t, c, "warm")
	// 10 KB down in 1 KB chunks, 20ms apart: at least 200ms.
	setMode(t, p, DelayPerChunk(20*time.Millisecond, Down, 1000))
	msg := bytes.Repeat([]byte("y"), 10000)
	start := time.Now()
	got, err := roundTrip(c, msg, 10*time.Second)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
	if took := time.Since(start); took < 190*time.Millisecond {
		t.Errorf("10 KB at 1 KB per 20ms took %v, want at least 200ms", took)
	}
}

func TestDropClosesNewConnectionsOnly(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	old := dial(t, p.Addr())
	mustEcho(t, old, "before")
	setMode(t, p, Drop())

	// The kernel accepts, the proxy resets at once: the dial itself may see
	// the reset, or else the first read.
	if c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if err == nil || isTimeout(err) {
			t.Fatalf("read on a dropped connection: %v, want EOF or reset", err)
		}
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("dial while dropping: %v, want success or a reset", err)
	}
	mustEcho(t, old, "still open")
	if st := p.Stats(); st.Dropped != 1 || st.Active != 1 {
		t.Fatalf("stats %+v", st)
	}
	setMode(t, p, Pass())
	mustEcho(t, dial(t, p.Addr()), "after")
}

func TestRefuseKeepsThePort(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	old := dial(t, p.Addr())
	mustEcho(t, old, "before")
	setMode(t, p, Refuse())
	setMode(t, p, Refuse()) // again: no-op
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("dial succeeded while refusing")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial while refusing: %v, want connection refused", err)
	}
	mustEcho(t, old, "open connections stay")
	setMode(t, p, Blackhole()) // leaving Refuse for any mode listens again
	setMode(t, p, Pass())
	mustEcho(t, dial(t, p.Addr()), "after")
	mustEcho(t, old, "old still fine")
}

func TestBlackholeForwardsNothingThenResumes(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	old := dial(t, p.Addr())
	mustEcho(t, old, "before")
	before := e.received.Load()

	setMode(t, p, Blackhole())
	fresh := dial(t, p.Addr()) // accepted, never answered
	for _, c := range []net.Conn{old, fresh} {
		if _, err := roundTrip(c, []byte("lost?"), 300*time.Millisecond); !isTimeout(err) {
			t.Fatalf("round trip through the blackhole: %v, want a timeout", err)
		}
	}
	if got := e.received.Load(); got != before {
		t.Fatalf("upstream received %d bytes during the blackhole", got-before)
	}
	if st := p.Stats(); st.Active != 2 {
		t.Fatalf("blackholed connections were closed: %+v", st)
	}

	// Like a healed partition, what was sent arrives now.
	setMode(t, p, Pass())
	for _, c := range []net.Conn{old, fresh} {
		got := make([]byte, 5)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "lost?" {
			t.Fatalf("after the blackhole: %q, %v", got, err)
		}
		mustEcho(t, c, "after")
	}
}

func TestCutAllClosesOpenConnections(t *testing.T) {
	e := startEcho(t)
	p := newProxy(t, e.addr())
	a, b := dial(t, p.Addr()), dial(t, p.Addr())
	mustEcho(t, a, "a")
	mustEcho(t, b, "b")
	setMode(t, p, Blackhole())
	held := dial(t, p.Addr())
	waitFor(t, "three connections", func() bool { return p.Stats().Active == 3 })
	p.CutAll()
	if st := p.Stats(); st.Active != 0 {
		t.Fatalf("after CutAll: %+v", st)
	}
	for _, c := range []net.Conn{a, b, held} {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("read after CutAll: %v, want EOF or reset", err)
		}
	}
	setMode(t, p, Pass())
	mustEcho(t, dial(t, p.Addr()), "new connections work")
}

func TestUpstreamDownClosesClient(t *testing.T) {
	e := startEcho(t)
	addr := e.addr()
	e.stop()
	p := newProxy(t, addr)
	c := dial(t, p.Addr())
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("read with the upstream down: %v, want EOF or reset", err)
	}
}

func TestCloseEndsEverything(t *testing.T) {
	e := startEcho(t)
	p, err := New(e.addr())
	if err != nil {
		t.Fatal(err)
	}
	plain, delayed := dial(t, p.Addr()), dial(t, p.Addr())
	mustEcho(t, plain, "x")
	mustEcho(t, delayed, "y")
	setMode(t, p, Delay(time.Hour, Both))
	if _, err := delayed.Write([]byte("stuck for an hour")); err != nil {
		t.Fatal(err)
	}
	setMode(t, p, Blackhole())
	held := dial(t, p.Addr())
	if _, err := held.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "three connections", func() bool { return p.Stats().Active == 3 })

	start := time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v", took)
	}
	if err := p.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := p.SetMode(Pass()); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetMode after Close: %v, want ErrClosed", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("dial succeeded after Close")
	}
	e.stop()
	goleak.VerifyNone(t) // the proxy's goroutines and the echo server's are gone
}

func TestRejectsBadArguments(t *testing.T) {
	for _, up := range []string{"10.1.2.3:80", "example.com:80", "127.0.0.1", "127.0.0.1:x"} {
		if p, err := New(up); err == nil {
			p.Close()
			t.Errorf("New(%q) succeeded", up)
		}
	}
	e := startEcho(t)
	if _, err := New(e.addr(), WithDialTimeout(0)); err == nil {
		t.Error("zero dial timeout accepted")
	}
	p := newProxy(t, e.addr())
	for _, m := range []Mode{Delay(-time.Second, Both), DelayPerChunk(time.Millisecond, Up, -1), {Kind: 42}, {Kind: KindDelay, Dir: 9}} {
		if err := p.SetMode(m); err == nil {
			t.Errorf("SetMode(%+v) accepted", m)
		}
	}
	if p.Mode().Kind != KindPass {
		t.Fatalf("mode changed to %v by invalid modes", p.Mode())
	}
}

func TestModeStrings(t *testing.T) {
	for m, want := range map[Mode]string{
		Pass():                                   "pass",
		Drop():                                   "drop",
		Refuse():                                 "refuse",
		Blackhole():                              "blackhole",
		Delay(200*time.Millisecond, Up):          "delay 200ms (up)",
		DelayPerChunk(time.Millisecond, Down, 0): "delay 1ms per 32768-byte chunk (down)",
		DelayPerChunk(time.Millisecond, Both, 512): "delay 1ms per 512-byte chunk (both)",
	} {
		if got := m.String(); got != want {
			t.Errorf("%+v: %q, want %q", m, got, want)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: still waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
