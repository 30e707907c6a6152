package main

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/mustersd/muster/internal/etcdtest"
)

// TestProxyInProcess runs `muster proxy` in front of an embedded etcd: a
// client of the proxy reads a direct write and watches through it, the
// metrics are served, and cancelling the context (as a signal does) stops
// it with exit code 0.
func TestProxyInProcess(t *testing.T) {
	m := etcdtest.Single(t)
	direct := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	port := freePortPair(t)
	listen := "127.0.0.1:" + strconv.Itoa(port)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- execute(runCtx, []string{"proxy", "--endpoints", m.Endpoints()[0], "--listen", listen}, &out, &errOut, func(string) string { return "" })
	}()
	desc := func() string { return out.String() + errOut.String() }
	waitFor(t, ctx, func() bool { return strings.Contains(out.String(), "serving etcd's API on "+listen) }, desc)

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{listen}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	wch := cli.Watch(ctx, "services/", clientv3.WithPrefix())
	if _, err := direct.Put(ctx, "services/a/1", "x"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "services/a/1", clientv3.WithSerializable())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get through the proxy: %v %v", resp, err)
	}
	select {
	case wr := <-wch:
		if len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "services/a/1" {
			t.Fatalf("watch through the proxy: %+v", wr)
		}
	case <-ctx.Done():
		t.Fatal("no watch event through the proxy")
	}

	murl := "http://127.0.0.1:" + strconv.Itoa(port+1) + "/metrics"
	if !strings.Contains(out.String(), "proxy: metrics at "+murl) {
		t.Errorf("metrics URL not printed:\n%s", desc())
	}
	hresp, err := http.Get(murl)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	if !strings.Contains(string(body), "muster_proxy_watchers 1") {
		t.Errorf("metrics lack muster_proxy_watchers 1:\n%s", body)
	}

	stop()
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(out.String(), "proxy: stopped") {
			t.Fatalf("exit code %d\n%s", code, desc())
		}
	case <-ctx.Done():
		t.Fatalf("muster proxy did not stop\n%s", desc())
	}
}

func TestProxyUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy", "--listen", "nope"}, `muster proxy: --listen "nope": want host:port`},
		{[]string{"proxy", "--listen", "127.0.0.1:23790", "--metrics-addr", "127.0.0.1:23790"}, "the same address as --listen"},
		{[]string{"proxy", "--user", "alice"}, "give it none"},
	} {
		var out, errOut syncBuffer
		code := execute(context.Background(), c.args, &out, &errOut, func(string) string { return "" })
		if code != exitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut.String(), exitUsage, c.want)
		}
	}
}
