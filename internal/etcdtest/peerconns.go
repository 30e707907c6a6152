package etcdtest

import (
	"reflect"
	"time"
	"unsafe"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
)

// Workaround for keep-alive peer connections that outlive a stopped member.
//
// etcd members talk to each other over HTTP keep-alive connections: raft
// pipeline messages and health probes go through the rafthttp transport's
// pipelineRt, /version and lease requests through EtcdServer.peerRt. Two
// things keep those connections (and four goroutines per connection:
// persistConn readLoop/writeLoop on the client, conn.serve and
// backgroundRead on the server) alive after a member stops:
//
//   - peerRt is never closed by EtcdServer.Stop, and the prober's in-flight
//     request can return its connection to pipelineRt's idle pool after
//     rafthttp.Transport.Stop already closed the idle connections;
//   - the peer listener wraps connections in a timeoutConn that resets the
//     read deadline on every Read, which races with net/http's
//     abortPendingRead: the serving goroutine then stays blocked until the
//     client sends or closes, or for up to rafthttp.ConnReadTimeout (5s).
//     Such a connection counts as active, so the member's Close waits its
//     full 1s peer-shutdown grace period for it.
//
// Closing the client side's idle connections ends all of them at once. The
// round trippers are unexported, so they are reached with reflect and
// unsafe; if a future etcd renames a field, that field is silently skipped
// (leaving only the slower, leakier upstream behaviour).

type idleCloser interface{ CloseIdleConnections() }

// unexported returns the value of the named (possibly unexported, possibly
// promoted) field of the addressable struct v, or an invalid Value.
func unexported(v reflect.Value, name string) reflect.Value {
	if !v.IsValid() || v.Kind() != reflect.Struct || !v.CanAddr() {
		return reflect.Value{}
	}
	f := v.FieldByName(name)
	if !f.IsValid() {
		return reflect.Value{}
	}
	return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
}

// peerRoundTrippers returns the HTTP transports s uses for peer traffic.
func peerRoundTrippers(s *etcdserver.EtcdServer) []idleCloser {
	if s == nil {
		return nil
	}
	var out []idleCloser
	add := func(v reflect.Value) {
		if v.IsValid() && v.Kind() == reflect.Interface && !v.IsNil() {
			if c, ok := v.Interface().(idleCloser); ok {
				out = append(out, c)
			}
		}
	}
	srv := reflect.ValueOf(s).Elem()
	add(unexported(srv, "peerRt"))
	tr := unexported(unexported(srv, "r"), "transport") // rafthttp.Transporter
	if tr.IsValid() && tr.Kind() == reflect.Interface && !tr.IsNil() {
		if p := tr.Elem(); p.Kind() == reflect.Pointer && !p.IsNil() {
			t := p.Elem()
			add(unexported(t, "pipelineRt"))
			add(unexported(t, "streamRt"))
		}
	}
	return out
}

// closePeerIdleConns closes the idle peer connections of s.
func closePeerIdleConns(s *etcdserver.EtcdServer) {
	for _, c := range peerRoundTrippers(s) {
		c.CloseIdleConnections()
	}
}

// transporter returns s's rafthttp transport (unexported field r.transport),
// or nil.
func transporter(s *etcdserver.EtcdServer) rafthttp.Transporter {
	if s == nil {
		return nil
	}
	tr := unexported(unexported(reflect.ValueOf(s).Elem(), "r"), "transport")
	if !tr.IsValid() || tr.Kind() != reflect.Interface || tr.IsNil() {
		return nil
	}
	t, _ := tr.Interface().(rafthttp.Transporter)
	return t
}

// waitInactive waits, up to timeout, until s's transport no longer reports
// any of the given peers as active.
//
// A leader hands leadership to its "longest connected" peer when it stops
// (EtcdServer.TryTransferLeadershipOnShutdown). Right after a peer stopped,
// the transport may still count it as connected; if the leader picks it,
// the transfer only gives up after the request timeout (5s + 2 election
// timeouts). Waiting until the stopped peers look inactive, which takes
// a few milliseconds, avoids that.
func waitInactive(s *etcdserver.EtcdServer, peers []types.ID, timeout time.Duration) {
	tr := transporter(s)
	if tr == nil || len(peers) == 0 {
		return
	}
	deadline := time.Now().Add(timeout)
	for {
		active := false
		for _, id := range peers {
			if !tr.ActiveSince(id).IsZero() {
				active = true
				break
			}
		}
		if !active || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
