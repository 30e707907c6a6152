package gozero_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/zrpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/mustersd/muster"
	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/interop/internal/itest"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/resolver"
)

// publish registers addr under go-zero's key as a zrpc server does, with
// discov.NewPublisher(hosts, key, addr).KeepAlive(): a lease, and the key
// <key>/<lease id> = addr. The returned stop (also run when the test ends)
// stops the Publisher and waits until go-zero, in the background, has
// revoked the key.
func publish(t *testing.T, m *etcdtest.Member, cli *clientv3.Client, key, addr string) (stop func()) {
	t.Helper()
	before := itest.Keys(t, cli, key+"/")
	p := discov.NewPublisher(m.Endpoints(), key, addr)
	if err := p.KeepAlive(); err != nil {
		t.Fatal(err)
	}
	var mine string
	for k, v := range itest.Keys(t, cli, key+"/") {
		if _, old := before[k]; !old && v == addr {
			mine = k
		}
	}
	if mine == "" {
		t.Fatalf("go-zero's Publisher of %s = %s wrote no key", key, addr)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			p.Stop()
			itest.Eventually(t, 10*time.Second, "go-zero revokes "+mine, func() bool {
				resp, err := cli.Get(itest.Context(t, 5*time.Second), mine)
				return err == nil && len(resp.Kvs) == 0
			})
		})
	}
	t.Cleanup(stop)
	return stop
}

// subscribe is go-zero's discov.NewSubscriber on key, closed when the test
// ends.
func subscribe(t *testing.T, m *etcdtest.Member, key string) *discov.Subscriber {
	t.Helper()
	sub, err := discov.NewSubscriber(m.Endpoints(), key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	return sub
}

// waitValues waits until go-zero's Subscriber holds exactly want.
func waitValues(t *testing.T, sub *discov.Subscriber, want ...string) {
	t.Helper()
	slices.Sort(want)
	itest.Eventually(t, 10*time.Second, fmt.Sprintf("go-zero's Subscriber holds %q", want), func() bool {
		return slices.Equal(slices.Sorted(slices.Values(sub.Values())), want)
	})
}

// TestPublisherToMuster: servers registered by go-zero's Publisher under
// each shape of go-zero key are resolved by Muster's resolver with the
// go-zero format and RPCs reach them; a second key for an address (a
// server that re-registered before its old lease ended) neither doubles it
// nor, when it goes, removes it; a Publisher that stops is dropped.
func TestPublisherToMuster(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	for _, tc := range []struct{ key, target string }{
		{"order.rpc", "muster:///order.rpc?format=go-zero"},
		{"dev/order.rpc", "muster:///order.rpc?format=go-zero&namespace=dev"}, // <env>/<name>
		{"prod.order.rpc", "muster:///prod.order.rpc?format=go-zero"},         // dots: a name as it is
	} {
		t.Run(tc.key, func(t *testing.T) {
			b := itest.Backends(t, "b", 2)
			stop0 := publish(t, m, cli, tc.key, b[0].Addr)
			publish(t, m, cli, tc.key, b[1].Addr)
			again := publish(t, m, cli, tc.key, b[1].Addr)

			// A client moved to Muster, reading go-zero's registrations.
			cc := itest.Dial(t, tc.target, grpc.WithResolvers(resolver.NewBuilder(cli)))
			itest.WaitReached(t, cc, "b0", "b1")

			again()
			itest.WaitReached(t, cc, "b0", "b1")
			stop0()
			itest.WaitReached(t, cc, "b1")
		})
	}
}

// TestRegistrarToSubscriber: endpoints of a Muster Registrar with WithAlso
// go-zero (ParseAlso "go-zero" and "go-zero:dev/order.rpc") are seen by
// go-zero's own discov.Subscriber on the matching key, and leave it on
// Deregister and Close.
func TestRegistrarToSubscriber(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	for _, tc := range []struct{ also, key string }{
		{"go-zero", "order.rpc"},
		{"go-zero:dev/order.rpc", "dev/order.rpc"},
	} {
		t.Run(tc.also, func(t *testing.T) {
			also, err := registry.ParseAlso(tc.also)
			if err != nil {
				t.Fatal(err)
			}
			reg, err := registry.New(cli, registry.WithTTL(2*time.Second), registry.WithAlso(also))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = reg.Close() })
			sub := subscribe(t, m, tc.key)

			e0 := endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:18001"}
			e1 := endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:18002"}
			ctx := itest.Context(t, 10*time.Second)
			if err := reg.Register(ctx, e0); err != nil {
				t.Fatal(err)
			}
			waitValues(t, sub, e0.Addr)
			if err := reg.Register(ctx, e1); err != nil {
				t.Fatal(err)
			}
			waitValues(t, sub, e0.Addr, e1.Addr)
			if err := reg.Deregister(ctx, e0); err != nil {
				t.Fatal(err)
			}
			waitValues(t, sub, e1.Addr)
			_ = reg.Close()
			waitValues(t, sub)
		})
	}
}

// TestZrpcClientToMusterServer: a go-zero zrpc client configured with
// Etcd {Hosts, Key} calls a Muster server that publishes itself for it with
// Etcd.Also; when the server shuts down it leaves go-zero's view.
func TestZrpcClientToMusterServer(t *testing.T) {
	m := etcdtest.Single(t)
	for _, tc := range []struct{ also, key string }{
		{"go-zero", "order.rpc"},
		{"go-zero:dev/order.rpc", "dev/order.rpc"},
	} {
		t.Run(tc.also, func(t *testing.T) {
			// A server moved to Muster, still visible to zrpc clients.
			srv, err := muster.NewServer(muster.Config{
				Name:     "order.rpc",
				ListenOn: "127.0.0.1:0",
				Etcd:     muster.EtcdConfig{Hosts: m.Endpoints(), Also: []string{tc.also}},
				Shutdown: muster.ShutdownConfig{DrainDelay: 100 * time.Millisecond},
			}, muster.WithoutSignals())
			if err != nil {
				t.Fatal(err)
			}
			echo.New("m0").Register(srv)
			if err := srv.Start(itest.Context(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = srv.Shutdown(itest.Context(t, 5*time.Second)) })

			// A zrpc client, unchanged.
			client, err := zrpc.NewClient(zrpc.RpcClientConf{
				Etcd:     discov.EtcdConf{Hosts: m.Endpoints(), Key: tc.key},
				NonBlock: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = client.Conn().Close() })
			itest.WaitReached(t, client.Conn(), "m0") // testpb.NewTestServiceClient(client.Conn()).UnaryCall

			sub := subscribe(t, m, tc.key)
			waitValues(t, sub, srv.Endpoint().Addr)
			if err := srv.Shutdown(itest.Context(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			waitValues(t, sub)
		})
	}
}
