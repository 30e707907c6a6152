// Package faultproxy is a fault-injecting TCP proxy for tests: put one in
// front of a server (an etcd member's client URL, a gRPC backend) and make
// the path to it slow, broken or silent while the test runs.
//
// A Proxy listens on 127.0.0.1 at a port the OS chooses and forwards every
// connection it accepts to one upstream address on the loopback network.
// Its mode says what happens to the bytes:
//
//   - Pass: forward as they come.
//   - Delay(d, dir): forward every chunk d after it was read, in the given
//     direction(s), pipelined (latency without a throughput limit).
//   - DelayPerChunk(d, dir, size): forward at most size bytes at a time,
//     each d after the previous one (a throttle: the sender is slowed by
//     TCP back-pressure).
//   - Drop: accept new connections and close them at once (with a reset);
//     open ones are left alone.
//   - Refuse: stop listening, so new connections are refused; the port is
//     kept and listened on again when the mode changes.
//   - Blackhole: accept new connections and forward nothing, in either
//     direction, on new and open connections alike, without closing any.
//     Like a network partition under TCP, what was sent meanwhile (up to
//     a bounded buffer) is delivered when the mode changes back, unless
//     an endpoint gave up and closed the connection first.
//
// CutAll closes every open connection (both sides) and returns once their
// goroutines have ended; Close does that too, stops listening, and ends
// every goroutine the proxy started.
//
//	p, err := faultproxy.New(member.Endpoints()[0])
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer p.Close()
//	cli := connect(p.Addr())             // clients go through the proxy
//	p.SetMode(faultproxy.Blackhole())    // partitioned
//	p.SetMode(faultproxy.Delay(200*time.Millisecond, faultproxy.Both))
//	p.CutAll()                           // open connections broken
//	p.SetMode(faultproxy.Pass())
//
// The upstream must be a loopback address: the proxy is for tests on one
// machine. Its methods are safe for concurrent use.
package faultproxy
