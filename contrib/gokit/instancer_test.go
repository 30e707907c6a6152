package gokit_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/kit/sd"

	"github.com/mustersd/muster/contrib/gokit"
	"github.com/mustersd/muster/discovery"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
)

func newInstancer(t *testing.T, m *etcdtest.Member, service string, opts ...gokit.Option) *gokit.Instancer {
	t.Helper()
	inst, err := gokit.NewInstancer(m.Client(t), service, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inst.Stop)
	return inst
}

func newRegistrar(t *testing.T, m *etcdtest.Member, ep endpoint.Endpoint, opts ...gokit.Option) *gokit.Registrar {
	t.Helper()
	r, err := gokit.NewRegistrar(m.Client(t), ep, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// TestEndpointerFollowsInstancer: go-kit's usual client stack (Endpointer,
// round robin, Retry) on a Muster Instancer calls exactly the instances
// registered through Muster Registrars, follows an instance added, one
// deregistered and one whose registrar stopped (lease revoked) while their
// servers still serve, and receives no Event for a change that leaves the
// instance strings as they were (a second instance on a known address).
func TestEndpointerFollowsInstancer(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 3)
	var regs []*gokit.Registrar
	for _, s := range b {
		regs = append(regs, newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: s.Addr}))
	}
	regs[0].Register()
	regs[1].Register()

	inst := newInstancer(t, m, "order.rpc")
	// NewInstancer returned with the first snapshot: a channel registering
	// now gets both instances at once.
	if st := inst.State(); !instancesAre(b[0].Addr, b[1].Addr)(st) {
		t.Fatalf("first state %+v, want %s and %s", st, b[0].Addr, b[1].Addr)
	}
	ev := collect(t, inst)
	ev.wait(t, 0, time.Second, "the first state on Register", instancesAre(b[0].Addr, b[1].Addr))

	call := balanced(t, inst)
	waitReached(t, call, "b0", "b1")

	regs[2].Register()
	waitReached(t, call, "b0", "b1", "b2")
	i := ev.wait(t, 0, 5*time.Second, "b0, b1, b2", instancesAre(b[0].Addr, b[1].Addr, b[2].Addr))

	// b2's address registers once more, as another instance with another
	// weight: the snapshot changes, the instance strings (one per address)
	// do not, so no Event is sent. The next Event is the one for b0
	// leaving.
	w := newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", ID: "b2-again", Addr: b[2].Addr, Weight: 50})
	w.Register()
	regs[0].Deregister()
	waitReached(t, call, "b1", "b2")
	j := ev.wait(t, i+1, 5*time.Second, "b1, b2", instancesAre(b[1].Addr, b[2].Addr))
	if j != i+1 {
		t.Fatalf("events between the two changes (a duplicate was sent): %+v", ev.list()[i:j+1])
	}

	regs[1].Stop() // revokes its lease
	waitReached(t, call, "b2")
	regs[2].Deregister()
	w.Deregister()
	waitReached(t, call) // none left: the calls fail for want of endpoints
	regs[0].Register()   // a deregistered instance comes back
	waitReached(t, call, "b0")
}

// TestEtcdOutageKeepsInstances: while etcd is down the Instancer sends an
// Event with the error and the last instances (never an empty list), the
// Endpointer keeps its endpoints and calls keep reaching the backends; when
// etcd is back it sends the instances without error.
func TestEtcdOutageKeepsInstances(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 2)
	for _, s := range b {
		newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: s.Addr}).Register()
	}
	inst := newInstancer(t, m, "order.rpc")
	ev := collect(t, inst)
	call := balanced(t, inst)
	waitReached(t, call, "b0", "b1")

	m.Stop()
	i := ev.wait(t, 0, 15*time.Second, "an etcd error", func(e sd.Event) bool { return e.Err != nil })
	got := ev.list()[i]
	want := []string{b[0].Addr, b[1].Addr}
	slices.Sort(want)
	if !errors.Is(got.Err, discovery.ErrUnreachable) || !slices.Equal(got.Instances, want) {
		t.Fatalf("error event %+v: want ErrUnreachable beside both instances", got)
	}
	waitReached(t, call, "b0", "b1") // go-kit keeps the endpoints on an error

	m.Restart()
	ev.wait(t, i+1, 15*time.Second, "both instances without error", instancesAre(b[0].Addr, b[1].Addr))
	for _, e := range ev.list() {
		if len(e.Instances) == 0 {
			t.Fatalf("an Event emptied the set: %+v", ev.list())
		}
	}
	waitReached(t, call, "b0", "b1")
}

// TestNewInstancerWithEtcdDown: with etcd down, NewInstancer returns once
// the first list has failed, with that error and no instances (there never
// were any); when etcd comes back, the instances follow.
func TestNewInstancerWithEtcdDown(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 1)
	newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: b[0].Addr}).Register()
	m.Stop()
	start := time.Now()
	inst := newInstancer(t, m, "order.rpc")
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("NewInstancer took %v with etcd down", took)
	}
	if st := inst.State(); st.Err == nil || len(st.Instances) != 0 {
		t.Fatalf("first state with etcd down: %+v", st)
	}
	call := balanced(t, inst)
	m.Restart()
	waitReached(t, call, "b0")
}

// TestInstancerReadsGoKitRegistrar: instances registered by go-kit's own
// sd/etcdv3 Registrar (value "host:port" or a URL) are read by a Muster
// Instancer in the go-kit format, so a go-kit client can move to Muster
// before its servers do.
func TestInstancerReadsGoKitRegistrar(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 2)
	reg0 := kitRegistrar(t, m, "/services/order/"+b[0].Addr, b[0].Addr)
	reg1 := kitRegistrar(t, m, "/services/order/"+b[1].Addr, "http://"+b[1].Addr)
	reg0.Register()
	reg1.Register()

	inst := newInstancer(t, m, "order", gokit.WithDiscoveryOptions(discovery.WithFormat("go-kit"), discovery.WithNamespace("/services")))
	call := balanced(t, inst)
	waitReached(t, call, "b0", "b1")
	if st := inst.State(); !instancesAre(b[0].Addr, b[1].Addr)(st) {
		t.Fatalf("state %+v: the URL value should come out as host:port", st)
	}
	reg0.Deregister()
	waitReached(t, call, "b1")
}

func TestNewInstancerErrors(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	if _, err := gokit.NewInstancer(nil, "order.rpc"); err == nil {
		t.Error("NewInstancer(nil client) succeeded")
	}
	if _, err := gokit.NewInstancer(cli, "a/b"); err == nil || !strings.Contains(err.Error(), "gokit:") {
		t.Errorf("NewInstancer(a/b) = %v", err)
	}
	if _, err := gokit.NewInstancer(cli, "order", gokit.WithDiscoveryOptions(discovery.WithFormat("consul"))); err == nil {
		t.Error("NewInstancer with an unknown format succeeded")
	}
}
