package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/mustersd/muster/endpoint"
	"github.com/mustersd/muster/internal/echo"
	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/registry"
	"github.com/mustersd/muster/xds"
)

// nodeDir holds the Node.js client (package.json and its lockfile; .ci/run
// runs npm ci there).
const nodeDir = "node-xds"

// nodeResult is what node-xds/client.js prints.
type nodeResult struct {
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Backends map[string]int `json:"backends"`
	Errors   []string       `json:"errors"`
}

// TestNodeClientThroughXDS has a gRPC client in another language, Node.js
// with @grpc/grpc-js and @grpc/grpc-js-xds from npm, resolve a Muster
// service through Muster's xDS server and call it. The server offers
// muster_p2c first; grpc-js does not know it and must fall back to
// round_robin, so the calls spread over every registered backend. A backend
// registered afterwards is called by the next client run.
func TestNodeClientThroughXDS(t *testing.T) {
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(nodeDir, "node_modules", "@grpc", "grpc-js-xds"))
	}
	if err != nil {
		if os.Getenv("MUSTER_E2E_OPTIONAL") == "1" {
			t.Skipf("no Node.js client (%v); run `npm ci` in e2e/%s", err, nodeDir)
		}
		t.Fatalf("no Node.js client (%v): install Node.js and run `npm ci` in e2e/%s (or set MUSTER_E2E_OPTIONAL=1 to skip)", err, nodeDir)
	}

	m := etcdtest.Single(t)
	cli := m.Client(t)
	reg, err := registry.New(cli, registry.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := func(name string) {
		b, err := echo.Start(name, "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Stop)
		if err := reg.Register(ctx, endpoint.Endpoint{Service: "order.rpc", Addr: b.Addr}); err != nil {
			t.Fatal(err)
		}
	}
	start("b0")
	start("b1")

	srv, err := xds.New(cli)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		srv.Close()
		<-served
	}()
	bs, err := xds.Bootstrap{Server: lis.Addr().String(), NodeID: "node-e2e"}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(bootstrap, bs, 0o644); err != nil {
		t.Fatal(err)
	}

	run := func(calls int) nodeResult {
		t.Helper()
		cmd := exec.CommandContext(ctx, node, "client.js", "xds:///order.rpc", strconv.Itoa(calls))
		cmd.Dir = nodeDir
		cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrap)
		out, err := cmd.Output()
		var res nodeResult
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			stderr := ""
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = string(ee.Stderr)
			}
			t.Fatalf("node client: %v; output %q; stderr %s", err, out, stderr)
		}
		if err != nil || res.Failed != 0 || res.OK != calls {
			t.Fatalf("node client: %v: %d ok, %d failed of %d; errors %v", err, res.OK, res.Failed, calls, res.Errors)
		}
		t.Logf("node client: %d calls, by backend %v", calls, res.Backends)
		return res
	}

	res := run(40)
	if len(res.Backends) != 2 || res.Backends["b0"] == 0 || res.Backends["b1"] == 0 {
		t.Fatalf("calls went to %v, want both b0 and b1 (round_robin, the fallback of muster_p2c)", res.Backends)
	}

	start("b2")
	res = run(60)
	if len(res.Backends) != 3 || res.Backends["b2"] == 0 {
		t.Fatalf("calls went to %v, want b0, b1 and the newly registered b2", res.Backends)
	}
}
