package gokit_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/kit/sd/etcdv3"
	kitlog "github.com/go-kit/log"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/contrib/gokit"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/registry"
)

// kitRegistrar is go-kit's own etcdv3 Registrar of key = value, on its own
// go-kit client (a go-kit client holds one lease), deregistered when the
// test ends.
func kitRegistrar(t *testing.T, m *etcdtest.Member, key, value string) *etcdv3.Registrar {
	t.Helper()
	r := etcdv3.NewRegistrar(kitClient(t, m), etcdv3.Service{Key: key, Value: value}, kitlog.NewNopLogger())
	// Deregister is what closes the lease client go-kit made for Register.
	t.Cleanup(r.Deregister)
	return r
}

// kitInstancer is go-kit's own etcdv3 Instancer on prefix.
func kitInstancer(t *testing.T, m *etcdtest.Member, prefix string) *etcdv3.Instancer {
	t.Helper()
	inst, err := etcdv3.NewInstancer(kitClient(t, m), prefix, kitlog.NewNopLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inst.Stop)
	return inst
}

// TestGoKitInstancerSeesRegistrar: an instance registered by a Muster
// Registrar with WithGoKitPrefix is called by go-kit's own client stack on
// go-kit's sd/etcdv3 Instancer, and leaves it on Deregister; the same
// registration is Muster's native one, read by a Muster Instancer.
func TestGoKitInstancerSeesRegistrar(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 2)
	r0 := newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: b[0].Addr}, gokit.WithGoKitPrefix("/services/order/"))
	r1 := newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: b[1].Addr}, gokit.WithGoKitPrefix("/services/order/"))
	r0.Register()

	kitCall := balanced(t, kitInstancer(t, m, "/services/order/"))
	musterCall := balanced(t, newInstancer(t, m, "order.rpc"))
	waitReached(t, kitCall, "b0")
	waitReached(t, musterCall, "b0")

	r1.Register()
	waitReached(t, kitCall, "b0", "b1")
	r0.Deregister()
	waitReached(t, kitCall, "b1")
	waitReached(t, musterCall, "b1")

	// The keys: go-kit's under its prefix, Muster's native one.
	resp, err := m.Client(t).Get(ctxT(t, 5*time.Second), "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = string(kv.Value)
	}
	if len(got) != 2 || got["/services/order/"+b[1].Addr] != b[1].Addr || !strings.Contains(got["services/order.rpc/"+b[1].Addr], `"Addr":"`+b[1].Addr+`"`) {
		t.Fatalf("keys in etcd: %v", got)
	}

	r1.Stop() // revokes the lease: both keys go
	waitReached(t, kitCall)
	waitReached(t, musterCall)
}

func TestNewRegistrarErrors(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	for name, tc := range map[string]struct {
		ep   endpoint.Endpoint
		opts []gokit.Option
	}{
		"no address":       {endpoint.Endpoint{Service: "order.rpc"}, nil},
		"bad service":      {endpoint.Endpoint{Service: "a/b", Addr: "127.0.0.1:1"}, nil},
		"bad go-kit key":   {endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:1"}, []gokit.Option{gokit.WithGoKitPrefix("/services/a b/")}},
		"bad registry TTL": {endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:1"}, []gokit.Option{gokit.WithRegistryOptions(registry.WithTTL(time.Millisecond))}},
	} {
		if r, err := gokit.NewRegistrar(cli, tc.ep, tc.opts...); err == nil {
			r.Stop()
			t.Errorf("%s: NewRegistrar succeeded", name)
		} else if !strings.HasPrefix(err.Error(), "gokit: ") {
			t.Errorf("%s: error %q does not name the package", name, err)
		}
	}
	if _, err := gokit.NewRegistrar(cli, endpoint.Endpoint{Service: "order.rpc"}); !errors.Is(err, endpoint.ErrInvalid) {
		t.Errorf("NewRegistrar without address = %v, want endpoint.ErrInvalid", err)
	}
}

// TestRegisterTimesOutAndHeals: with etcd down, Register returns after the
// timeout (go-kit's Register has no error to return), and the instance is
// registered by itself once etcd is back.
func TestRegisterTimesOutAndHeals(t *testing.T) {
	m := etcdtest.Single(t)
	b := backends(t, 1)
	r := newRegistrar(t, m, endpoint.Endpoint{Service: "order.rpc", Addr: b[0].Addr}, gokit.WithTimeout(300*time.Millisecond))
	m.Stop()
	start := time.Now()
	r.Register()
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Register took %v with a 300ms timeout", took)
	}
	m.Restart()
	call := balanced(t, newInstancer(t, m, "order.rpc"))
	waitReached(t, call, "b0")
}

// TestGoKitInstancerSeesMusterServer: a gRPC server moved to Muster
// (muster.NewServer) with Etcd.Also "go-kit:/services/order" is called by
// go-kit's client stack on go-kit's own sd/etcdv3 Instancer, and leaves it
// when it shuts down.
func TestGoKitInstancerSeesMusterServer(t *testing.T) {
	m := etcdtest.Single(t)
	srv, err := muster.NewServer(muster.Config{
		Name:     "order.rpc",
		ListenOn: "127.0.0.1:0",
		Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Also: []string{"go-kit:/services/order"}},
		Shutdown: muster.ShutdownConfig{DrainDelay: 100 * time.Millisecond},
	}, muster.WithoutSignals())
	if err != nil {
		t.Fatal(err)
	}
	echo.New("m0").Register(srv)
	if err := srv.Start(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(ctxT(t, 5*time.Second)) })

	kitCall := balanced(t, kitInstancer(t, m, "/services/order/"))
	waitReached(t, kitCall, "m0")
	if err := srv.Shutdown(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitReached(t, kitCall)
}
