package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
)

func TestWatchInProcess(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	eps := m.Endpoints()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	put := func(e endpoint.Endpoint) {
		k, v, err := keyfmt.Native.Encode("services", e, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, k, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	put(endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:8080", Zone: "z1"})

	for _, asJSON := range []bool{false, true} {
		wctx, stop := context.WithCancel(ctx)
		var out, errOut syncBuffer
		done := make(chan int, 1)
		args := []string{"watch", "order.rpc", "--endpoints", eps}
		if asJSON {
			args = append(args, "--json")
		}
		go func() { done <- execute(wctx, args, &out, &errOut, func(string) string { return "" }) }()
		desc := func() string { return out.String() + errOut.String() }
		has := func(s string) func() bool { return func() bool { return strings.Contains(out.String(), s) } }
		if asJSON {
			waitFor(t, ctx, has(`"event":"present"`), desc)
		} else {
			waitFor(t, ctx, has("watching for changes"), desc)
			if !strings.Contains(out.String(), "order.rpc: 1 instance(s) at revision") || !strings.Contains(out.String(), "  127.0.0.1:8080 zone=z1 weight=10\n") {
				t.Fatalf("initial listing:\n%s", out.String())
			}
		}
		put(endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:8081", Tags: map[string]string{"canary": "true"}})
		weight := 3
		if asJSON {
			weight = 5 // a change from the text pass's 3
		}
		put(endpoint.Endpoint{Service: "order.rpc", Addr: "127.0.0.1:8080", Zone: "z1", Weight: weight})
		if _, err := cli.Delete(ctx, "services/order.rpc/127.0.0.1:8081"); err != nil {
			t.Fatal(err)
		}
		if asJSON {
			waitFor(t, ctx, has(`"event":"removed"`), desc)
			var kinds []string
			for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var ev watchEvent
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				kinds = append(kinds, ev.Event+":"+ev.Addr)
				if ev.Revision == 0 || ev.Service != "order.rpc" {
					t.Fatalf("event %+v", ev)
				}
			}
			if got := strings.Join(kinds, " "); got != "present:127.0.0.1:8080 added:127.0.0.1:8081 updated:127.0.0.1:8080 removed:127.0.0.1:8081" {
				t.Fatalf("events: %s", got)
			}
		} else {
			waitFor(t, ctx, has("removed 127.0.0.1:8081"), desc)
			for _, want := range []string{"added   127.0.0.1:8081 weight=10 canary=true", "updated 127.0.0.1:8080 zone=z1 weight=3"} {
				if !strings.Contains(out.String(), want) {
					t.Fatalf("missing %q in:\n%s", want, out.String())
				}
			}
			// etcd goes away and comes back: both are reported.
			m.Stop()
			waitFor(t, ctx, has("etcd unreachable"), desc)
			m.Restart()
			waitFor(t, ctx, has("etcd reachable again"), desc)
		}
		stop()
		if code := <-done; code != 0 {
			t.Fatalf("exit %d: %s", code, desc())
		}
	}
}

func TestWatchUnreachable(t *testing.T) {
	var out, errOut syncBuffer
	code := execute(context.Background(), []string{"watch", "x", "--endpoints", "127.0.0.1:1", "--dial-timeout", "500ms"}, &out, &errOut, func(string) string { return "" })
	if code != exitFailure || !strings.Contains(errOut.String(), "cannot reach etcd at 127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}
