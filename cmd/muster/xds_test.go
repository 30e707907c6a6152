package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/keyfmt"
	"github.com/mustersd/muster/xds"
)

func TestXDSBootstrap(t *testing.T) {
	var out, errOut syncBuffer
	code := execute(context.Background(), []string{"xds", "bootstrap", "--server", "xds.internal:18000", "--zone", "eu-1a", "--node-id", "n1"}, &out, &errOut, func(string) string { return "" })
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var got struct {
		XDSServers []struct {
			ServerURI      string              `json:"server_uri"`
			ChannelCreds   []map[string]string `json:"channel_creds"`
			ServerFeatures []string            `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID       string            `json:"id"`
			Locality map[string]string `json:"locality"`
		} `json:"node"`
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("%v in:\n%s", err, out.String())
	}
	if len(got.XDSServers) != 1 || got.XDSServers[0].ServerURI != "xds.internal:18000" ||
		got.XDSServers[0].ChannelCreds[0]["type"] != "insecure" ||
		strings.Join(got.XDSServers[0].ServerFeatures, ",") != "xds_v3,ignore_resource_deletion" ||
		got.Node.ID != "n1" || got.Node.Locality["zone"] != "eu-1a" {
		t.Errorf("bootstrap:\n%s", out.String())
	}

	out, errOut = syncBuffer{}, syncBuffer{}
	code = execute(context.Background(), []string{"xds", "bootstrap", "--server", "nope"}, &out, &errOut, func(string) string { return "" })
	if code != exitUsage || !strings.HasPrefix(errOut.String(), `muster xds bootstrap: --server "nope": want host:port`+"\n") {
		t.Errorf("bad --server: exit %d, stderr %q", code, errOut.String())
	}
}

func TestXDSFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"xds", "--policy", "random"}, `muster xds: --policy "random": want muster_p2c, round_robin or ring_hash`},
		{[]string{"xds", "--listen", "18000"}, `muster xds: --listen "18000": want host:port`},
		{[]string{"xds", "--metrics-addr", "x"}, `muster xds: --metrics-addr "x": want host:port`},
		{[]string{"xds", "--linger", "-1s"}, `muster xds: --linger -1s: want 0 or more`},
		{[]string{"xds", "--endpoints", "127.0.0.1:1", "--dial-timeout", "300ms", "--metrics-addr", "off", "--listen", "127.0.0.1:0"}, `muster: cannot reach etcd at 127.0.0.1:1`},
	} {
		var out, errOut syncBuffer
		code := execute(context.Background(), tc.args, &out, &errOut, func(string) string { return "" })
		if code == exitOK || !strings.HasPrefix(errOut.String(), tc.want) || strings.Count(strings.TrimSpace(errOut.String()), "\n") > 1 {
			t.Errorf("%v: exit %d, stderr %q, want it to start with %q", tc.args, code, errOut.String(), tc.want)
		}
	}
}

// TestXDSServes runs `muster xds` as a user would, resolves a service
// through it with grpc-go's xDS client, reads its metrics, and stops it
// with SIGTERM.
func TestXDSServes(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := echo.Start("backend-1", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	k, v, err := keyfmt.Native.Encode("services", endpoint.Endpoint{Service: "order.rpc", Addr: b.Addr, Zone: "z1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, k, string(v)); err != nil {
		t.Fatal(err)
	}

	p := start(t, "xds", "--endpoints", m.Endpoints()[0], "--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-level", "debug")
	line := p.waitLine("xDS server ready at", startTimeout)
	match := regexp.MustCompile(`ready at (127\.0\.0\.1:\d+) .*metrics at (http://\S+/metrics)\)`).FindStringSubmatch(line)
	if match == nil {
		t.Fatalf("ready line: %q", line)
	}
	addr, metricsURL := match[1], match[2]

	js, err := xds.Bootstrap{Server: addr}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(js)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///order.rpc", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	name, err := echo.Call(ctx, cc, grpc.WaitForReady(true))
	if err != nil || name != "backend-1" {
		t.Fatalf("RPC through xds:///order.rpc: %q, %v\n%s", name, err, p.transcript())
	}

	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"muster_xds_streams 1", "muster_xds_etcd_watchers 1", `muster_xds_resources{type="endpoint"} 1`, "muster_xds_push_latency_seconds_count", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}

	cc.Close()
	if code := p.signal(syscall.SIGTERM); code != exitOK {
		t.Fatalf("exit %d after SIGTERM\n%s", code, p.transcript())
	}
	if !strings.Contains(p.stdout.String(), "xDS server stopped") {
		t.Errorf("no stop line\n%s", p.transcript())
	}
}
