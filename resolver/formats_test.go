package resolver

import (
	"testing"
	"time"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
)

// TestMixedFormats: one service with instances registered natively, by
// go-zero (two keys for one address, as after a re-registration) and by
// Kitex is resolved as one set through a target that names the formats, and
// follows removals in any of them.
func TestMixedFormats(t *testing.T) {
	cli := etcdtest.Single(t).Client(t)
	b := startBackends(t, 4)
	register(t, cli, "order.rpc", b[0])
	put := func(k, v string) {
		t.Helper()
		if _, err := cli.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	put("order.rpc/7587868547466620931", b[1].Addr) // go-zero: <Key>/<lease id> = host:port
	put("order.rpc/7587868547466620999", b[1].Addr)
	put("order.rpc/7587868547466621000", b[2].Addr)
	k, v, err := keyfmt.Kitex.Encode(keyfmt.DefaultNamespaceOf(keyfmt.Kitex), endpoint.Endpoint{Service: "order.rpc", Addr: b[3].Addr}, 0)
	if err != nil {
		t.Fatal(err)
	}
	put(k, string(v))
	// The same address in two formats counts once.
	put("services/order.rpc/dup", `{"Addr":"`+b[2].Addr+`"}`)

	cc := dial(t, cli, "muster:///order.rpc?format=native,go-zero,kitex", rr)
	waitReached(t, cc, "b0", "b1", "b2", "b3")

	only := dial(t, cli, "muster:///order.rpc?format=go-zero", rr)
	waitReached(t, only, "b1", "b2")

	if _, err := cli.Delete(ctxT(t, 5*time.Second), "order.rpc/7587868547466621000"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctxT(t, 5*time.Second), "services/order.rpc/dup"); err != nil {
		t.Fatal(err)
	}
	waitReached(t, cc, "b0", "b1", "b3")
	waitReached(t, only, "b1")
}
