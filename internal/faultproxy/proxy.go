package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by the methods of a closed Proxy.
var ErrClosed = errors.New("faultproxy: proxy closed")

// Kind is what a Mode does.
type Kind int

// The kinds of mode; see the package documentation.
const (
	KindPass Kind = iota
	KindDelay
	KindDrop
	KindRefuse
	KindBlackhole
)

// Direction selects the bytes a delay applies to.
type Direction int

const (
	// Both delays the bytes going either way.
	Both Direction = iota
	// Up delays the bytes from the client to the upstream (requests).
	Up
	// Down delays the bytes from the upstream to the client (responses).
	Down
)

func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	default:
		return "both"
	}
}

func (d Direction) has(dir Direction) bool { return d == Both || d == dir }

// Mode is what the proxy does to connections. Build one with Pass, Delay,
// DelayPerChunk, Drop, Refuse or Blackhole.
type Mode struct {
	Kind Kind
	// Delay is the delay of KindDelay.
	Delay time.Duration
	// Dir is the direction a delay applies to.
	Dir Direction
	// PerChunk makes the delay serial: at most ChunkSize bytes are written
	// at a time, each Delay after the previous one.
	PerChunk bool
	// ChunkSize bounds a chunk with PerChunk. Default (0) 32 KiB.
	ChunkSize int
}

// Pass forwards everything as it comes.
func Pass() Mode { return Mode{Kind: KindPass} }

// Delay forwards every chunk of bytes going in dir d after the proxy read
// it. Chunks are pipelined: this adds latency, not a throughput limit.
func Delay(d time.Duration, dir Direction) Mode {
	return Mode{Kind: KindDelay, Delay: d, Dir: dir}
}

// DelayPerChunk forwards the bytes going in dir at most size bytes at a
// time (0: 32 KiB), each chunk d after the previous one: a throttle of
// size bytes per d. The proxy then holds back at most 256 chunks per
// direction of a connection before it stops reading, so the sender soon
// feels the back-pressure.
func DelayPerChunk(d time.Duration, dir Direction, size int) Mode {
	return Mode{Kind: KindDelay, Delay: d, Dir: dir, PerChunk: true, ChunkSize: size}
}

// Drop accepts new connections and closes them at once with a reset.
// Open connections are not affected.
func Drop() Mode { return Mode{Kind: KindDrop} }

// Refuse stops listening, so that new connections are refused, keeping
// the port. Open connections are not affected.
func Refuse() Mode { return Mode{Kind: KindRefuse} }

// Blackhole accepts new connections and forwards nothing on any
// connection, new or open, without closing them.
func Blackhole() Mode { return Mode{Kind: KindBlackhole} }

func (m Mode) String() string {
	switch m.Kind {
	case KindPass:
		return "pass"
	case KindDelay:
		if m.PerChunk {
			return fmt.Sprintf("delay %v per %d-byte chunk (%v)", m.Delay, m.chunkSize(), m.Dir)
		}
		return fmt.Sprintf("delay %v (%v)", m.Delay, m.Dir)
	case KindDrop:
		return "drop"
	case KindRefuse:
		return "refuse"
	case KindBlackhole:
		return "blackhole"
	default:
		return fmt.Sprintf("Kind(%d)", int(m.Kind))
	}
}

func (m Mode) chunkSize() int {
	if m.ChunkSize > 0 {
		return m.ChunkSize
	}
	return readSize
}

func (m Mode) validate() error {
	if m.Kind < KindPass || m.Kind > KindBlackhole {
		return fmt.Errorf("faultproxy: unknown mode kind %d", int(m.Kind))
	}
	if m.Delay < 0 {
		return fmt.Errorf("faultproxy: delay %v is negative", m.Delay)
	}
	if m.ChunkSize < 0 {
		return fmt.Errorf("faultproxy: chunk size %d is negative", m.ChunkSize)
	}
	if m.Dir < Both || m.Dir > Down {
		return fmt.Errorf("faultproxy: unknown direction %d", int(m.Dir))
	}
	return nil
}

const (
	// readSize is the most a connection reads at once.
	readSize = 32 << 10
	// queueLen is how many chunks may wait to be written in each direction
	// of a connection; beyond it the proxy stops reading.
	queueLen = 256
	// defaultDialTimeout bounds the connection to the upstream.
	defaultDialTimeout = 2 * time.Second
)

// Option configures a Proxy.
type Option func(*Proxy)

// WithDialTimeout bounds how long the proxy waits for the upstream to
// accept a connection; when it does not, the client's connection is
// closed. Default 2s.
func WithDialTimeout(d time.Duration) Option { return func(p *Proxy) { p.dialTimeout = d } }

// Stats counts what a proxy did.
type Stats struct {
	// Accepted counts the connections accepted, dropped ones included.
	Accepted int64
	// Dropped counts the connections closed at once by Drop.
	Dropped int64
	// Active is the number of connections open now.
	Active int
	// BytesUp and BytesDown count the bytes forwarded to the upstream and
	// back to clients.
	BytesUp, BytesDown int64
}

// Proxy is a fault-injecting TCP proxy. Its methods are safe for concurrent
// use.
type Proxy struct {
	upstream    string
	dialTimeout time.Duration
	addr        string

	opMu sync.Mutex // serialises SetMode and Close

	mu       sync.Mutex
	mode     Mode
	changed  chan struct{} // closed and replaced when mode changes
	lis      net.Listener  // nil while refusing
	accepted chan struct{} // closed when the current acceptor returns
	conns    map[*conn]struct{}
	closed   bool

	wg sync.WaitGroup // every goroutine of the proxy

	nAccepted, nDropped atomic.Int64
	bytesUp, bytesDown  atomic.Int64
}

// New starts a proxy to upstream ("host:port", a loopback address)
// listening on 127.0.0.1 at a port the OS chooses, in Pass mode.
func New(upstream string, opts ...Option) (*Proxy, error) {
	host, port, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: upstream %q: %w", upstream, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return nil, fmt.Errorf("faultproxy: upstream %q: bad port", upstream)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: upstream %q is not a loopback address", upstream)
	}
	p := &Proxy{
		upstream:    upstream,
		dialTimeout: defaultDialTimeout,
		changed:     make(chan struct{}),
		conns:       map[*conn]struct{}{},
	}
	for _, o := range opts {
		o(p)
	}
	if p.dialTimeout <= 0 {
		return nil, fmt.Errorf("faultproxy: dial timeout %v is not positive", p.dialTimeout)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p.addr = lis.Addr().String()
	p.mu.Lock()
	p.startAcceptorLocked(lis)
	p.mu.Unlock()
	return p, nil
}

// Addr returns the address clients connect to, "127.0.0.1:PORT". It does
// not change, not even across Refuse.
func (p *Proxy) Addr() string { return p.addr }

// Upstream returns the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	active := len(p.conns)
	p.mu.Unlock()
	return Stats{
		Accepted:  p.nAccepted.Load(),
		Dropped:   p.nDropped.Load(),
		Active:    active,
		BytesUp:   p.bytesUp.Load(),
		BytesDown: p.bytesDown.Load(),
	}
}

// SetMode switches the proxy to m. It applies at once to new connections
// and, for Delay and Blackhole, to the bytes of open ones not yet
// forwarded. Leaving Refuse listens on the proxy's port again; if that
// fails, SetMode returns the error and the proxy stays refusing.
func (p *Proxy) SetMode(m Mode) error {
	if err := m.validate(); err != nil {
		return err
	}
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	old := p.mode
	if old.Kind == KindRefuse && m.Kind != KindRefuse {
		lis, err := listenAgain(p.addr)
		if err != nil {
			p.mu.Unlock()
			return fmt.Errorf("faultproxy: listening on %s again: %w", p.addr, err)
		}
		p.startAcceptorLocked(lis)
	}
	p.mode = m
	close(p.changed)
	p.changed = make(chan struct{})
	var lis net.Listener
	var acceptorDone chan struct{}
	if m.Kind == KindRefuse && old.Kind != KindRefuse {
		lis, acceptorDone = p.lis, p.accepted
		p.lis, p.accepted = nil, nil
	}
	p.mu.Unlock()
	if lis != nil {
		_ = lis.Close()
		<-acceptorDone
	}
	return nil
}

// listenAgain listens on addr, retrying briefly: the port may still be
// held for a moment by the socket just closed.
func listenAgain(addr string) (net.Listener, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return lis, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CutAll closes every open connection, on both sides, and returns once
// their goroutines have ended. New connections are handled by the mode as
// usual.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.cut()
	}
	for _, c := range cs {
		<-c.finished
	}
}

// Close stops listening, closes every connection and waits until every
// goroutine of the proxy has ended. It is idempotent.
func (p *Proxy) Close() error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.changed)
	p.changed = make(chan struct{})
	lis, acceptorDone := p.lis, p.accepted
	p.lis, p.accepted = nil, nil
	p.mu.Unlock()
	if lis != nil {
		_ = lis.Close()
		<-acceptorDone
	}
	p.CutAll()
	p.wg.Wait()
	return nil
}

// startAcceptorLocked serves lis. p.mu is held.
func (p *Proxy) startAcceptorLocked(lis net.Listener) {
	done := make(chan struct{})
	p.lis, p.accepted = lis, done
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(done)
		p.accept(lis)
	}()
}

func (p *Proxy) accept(lis net.Listener) {
	for {
		nc, err := lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and the like: back off briefly, as net/http does.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.nAccepted.Add(1)
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = nc.Close()
			continue
		}
		if k := p.mode.Kind; k == KindDrop || k == KindRefuse {
			p.mu.Unlock()
			p.nDropped.Add(1)
			reset(nc)
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		c := &conn{p: p, client: nc, ctx: ctx, cancel: cancel, done: ctx.Done(), finished: make(chan struct{})}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.run()
	}
}

// reset closes nc so that the peer sees a reset rather than an orderly end.
func reset(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = nc.Close()
}

// current returns the mode and the channel closed when it next changes.
func (p *Proxy) current() (Mode, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode, p.changed
}

// waitPassable blocks while the proxy is blackholed. It returns false when
// done is closed first.
func (p *Proxy) waitPassable(done <-chan struct{}) bool {
	for {
		m, changed := p.current()
		if m.Kind != KindBlackhole {
			select {
			case <-done:
				return false
			default:
				return true
			}
		}
		select {
		case <-changed:
		case <-done:
			return false
		}
	}
}

// conn is one proxied connection.
type conn struct {
	p        *Proxy
	client   net.Conn
	ctx      context.Context // ends with cut
	cancel   context.CancelFunc
	done     <-chan struct{} // ctx.Done()
	finished chan struct{}   // closed when every goroutine of the conn ended

	mu     sync.Mutex
	server net.Conn
	cutten bool
}

// chunk is a piece of the byte stream waiting to be written.
type chunk struct {
	data []byte
	due  time.Time // not before
	eof  bool      // the sender closed its side
}

// cut closes both sides of the connection. It is idempotent.
func (c *conn) cut() {
	c.mu.Lock()
	if c.cutten {
		c.mu.Unlock()
		return
	}
	c.cutten = true
	server := c.server
	c.mu.Unlock()
	c.cancel()
	_ = c.client.Close()
	if server != nil {
		_ = server.Close()
	}
}

func (c *conn) run() {
	p := c.p
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		close(c.finished)
		p.wg.Done()
	}()
	var rw sync.WaitGroup
	defer rw.Wait()
	defer c.cut()

	// Read from the client at once, so that a blackholed connection
	// notices the client leaving.
	upQ := make(chan chunk, queueLen)
	rw.Go(func() { c.read(c.client, upQ, Up) })

	if !p.waitPassable(c.done) {
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, p.dialTimeout)
	var d net.Dialer
	server, err := d.DialContext(ctx, "tcp", p.upstream)
	cancel()
	if err != nil {
		return // the upstream is not there: close the client, as it would
	}
	c.mu.Lock()
	if c.cutten {
		c.mu.Unlock()
		_ = server.Close()
		return
	}
	c.server = server
	c.mu.Unlock()

	downQ := make(chan chunk, queueLen)
	rw.Go(func() { c.read(server, downQ, Down) })
	var writers sync.WaitGroup
	writers.Go(func() { c.write(server, upQ, Up) })
	writers.Go(func() { c.write(c.client, downQ, Down) })
	writers.Wait()
}

// read moves the bytes of src into q, stamped with the delay that applies
// when they were read.
func (c *conn) read(src net.Conn, q chan<- chunk, dir Direction) {
	buf := make([]byte, readSize)
	for {
		// A throttle reads no more than a chunk at a time, so that what it
		// holds back stays small (queueLen chunks) and the sender feels
		// the back-pressure.
		size := readSize
		if m, _ := c.p.current(); m.Kind == KindDelay && m.PerChunk && m.Dir.has(dir) {
			size = min(size, m.chunkSize())
		}
		n, err := src.Read(buf[:size])
		if n > 0 {
			ch := chunk{data: append([]byte(nil), buf[:n]...)}
			if m, _ := c.p.current(); m.Kind == KindDelay && !m.PerChunk && m.Dir.has(dir) {
				ch.due = time.Now().Add(m.Delay)
			}
			select {
			case q <- ch:
			case <-c.done:
				return
			}
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if isEOF(err) {
				select {
				case q <- chunk{eof: true}:
				case <-c.done:
				}
				return
			}
			c.cut() // reset or other failure: the whole connection goes
			return
		}
	}
}

// write writes the chunks of q to dst, holding them while the proxy is
// blackholed and delaying them as the mode says.
func (c *conn) write(dst net.Conn, q <-chan chunk, dir Direction) {
	counter := &c.p.bytesUp
	if dir == Down {
		counter = &c.p.bytesDown
	}
	for {
		var ch chunk
		select {
		case ch = <-q:
		case <-c.done:
			return
		}
		if !ch.due.IsZero() && !sleepUntil(ch.due, c.done) {
			return
		}
		if ch.eof {
			if !c.p.waitPassable(c.done) {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
				return
			}
			c.cut()
			return
		}
		data := ch.data
		for len(data) > 0 {
			if !c.p.waitPassable(c.done) {
				return
			}
			piece := data
			if m, _ := c.p.current(); m.Kind == KindDelay && m.PerChunk && m.Dir.has(dir) {
				if len(piece) > m.chunkSize() {
					piece = piece[:m.chunkSize()]
				}
				if !sleepUntil(time.Now().Add(m.Delay), c.done) {
					return
				}
				if !c.p.waitPassable(c.done) {
					return
				}
			}
			n, err := dst.Write(piece)
			counter.Add(int64(n))
			if err != nil {
				c.cut()
				return
			}
			data = data[n:]
		}
	}
}

// sleepUntil waits until t; it returns false if done is closed first.
func sleepUntil(t time.Time, done <-chan struct{}) bool {
	d := time.Until(t)
	if d <= 0 {
		select {
		case <-done:
			return false
		default:
			return true
		}
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-done:
		return false
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF)
}
