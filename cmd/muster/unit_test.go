package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdtest"
)

// probe runs args in-process with a command "probe" added to the tree that
// records the global options it sees.
func probe(t *testing.T, env map[string]string, args ...string) (globalOptions, int, string) {
	t.Helper()
	var stderr syncBuffer
	a := newApp(&syncBuffer{}, &stderr, func(k string) string { return env[k] })
	root := newRootCmd(a)
	var got globalOptions
	root.AddCommand(&cobra.Command{Use: "probe", RunE: func(*cobra.Command, []string) error {
		got = a.global
		return nil
	}})
	code := a.execute(context.Background(), root, append([]string{"probe"}, args...))
	return got, code, stderr.String()
}

func TestGlobalFlagsFromEnv(t *testing.T) {
	env := map[string]string{
		"MUSTER_ENDPOINTS":    "10.0.0.1:2379,10.0.0.2:2379",
		"MUSTER_NAMESPACE":    "prod/services",
		"MUSTER_USER":         "u",
		"MUSTER_PASSWORD":     "p",
		"MUSTER_CACERT":       "ca.pem",
		"MUSTER_CERT":         "c.pem",
		"MUSTER_KEY":          "k.pem",
		"MUSTER_DIAL_TIMEOUT": "3s",
	}
	t.Run("defaults", func(t *testing.T) {
		g, code, _ := probe(t, nil)
		want := globalOptions{endpoints: "127.0.0.1:2379", namespace: "services", dialTimeout: 5 * time.Second, logLevel: "info"}
		if code != 0 || g != want {
			t.Fatalf("code %d, options %+v; want %+v", code, g, want)
		}
	})
	t.Run("env", func(t *testing.T) {
		g, code, _ := probe(t, env)
		want := globalOptions{endpoints: "10.0.0.1:2379,10.0.0.2:2379", namespace: "prod/services", user: "u", password: "p",
			cacert: "ca.pem", cert: "c.pem", key: "k.pem", dialTimeout: 3 * time.Second, logLevel: "info"}
		if code != 0 || g != want {
			t.Fatalf("code %d, options %+v; want %+v", code, g, want)
		}
	})
	t.Run("flags win", func(t *testing.T) {
		g, code, _ := probe(t, env, "--endpoints", "e:1", "--namespace", "ns", "--user", "u2", "--password", "p2",
			"--cacert", "ca2", "--cert", "c2", "--key", "k2", "--dial-timeout", "1s")
		want := globalOptions{endpoints: "e:1", namespace: "ns", user: "u2", password: "p2",
			cacert: "ca2", cert: "c2", key: "k2", dialTimeout: time.Second, logLevel: "info"}
		if code != 0 || g != want {
			t.Fatalf("code %d, options %+v; want %+v", code, g, want)
		}
	})
	t.Run("flag before the command", func(t *testing.T) {
		var stderr syncBuffer
		a := newApp(&syncBuffer{}, &stderr, func(k string) string { return env[k] })
		root := newRootCmd(a)
		var got string
		root.AddCommand(&cobra.Command{Use: "probe", Run: func(*cobra.Command, []string) { got = a.global.endpoints }})
		if code := a.execute(context.Background(), root, []string{"--endpoints", "x:1", "probe"}); code != 0 || got != "x:1" {
			t.Fatalf("code %d, endpoints %q: %s", code, got, stderr.String())
		}
	})
	t.Run("bad env", func(t *testing.T) {
		_, code, stderr := probe(t, map[string]string{"MUSTER_DIAL_TIMEOUT": "soon"})
		if code != exitUsage || !strings.Contains(stderr, `MUSTER_DIAL_TIMEOUT="soon"`) {
			t.Fatalf("code %d, stderr %q", code, stderr)
		}
	})
	t.Run("bad namespace", func(t *testing.T) {
		_, code, stderr := probe(t, map[string]string{"MUSTER_NAMESPACE": "a b"})
		if code != exitUsage || !strings.Contains(stderr, "--namespace") {
			t.Fatalf("code %d, stderr %q", code, stderr)
		}
	})
}

func TestParseTags(t *testing.T) {
	for _, tt := range []struct {
		in      []string
		want    map[string]string
		wantErr string
	}{
		{in: nil, want: nil},
		{in: []string{"canary=true", "b=1"}, want: map[string]string{"canary": "true", "b": "1"}},
		{in: []string{"empty="}, want: map[string]string{"empty": ""}},
		{in: []string{"expr=a=b,c"}, want: map[string]string{"expr": "a=b,c"}},
		{in: []string{"canary"}, wantErr: `tag "canary": want key=value`},
		{in: []string{"=x"}, wantErr: `tag "=x": empty key`},
		{in: []string{"a=1", "a=2"}, wantErr: `key "a" given twice`},
	} {
		got, err := parseTags(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseTags(%q) = %v, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !maps.Equal(got, tt.want) {
			t.Errorf("parseTags(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatTags(t *testing.T) {
	if got := formatTags(map[string]string{"z": "1", "a": "2", "m": ""}); got != "a=2,m=,z=1" {
		t.Fatalf("formatTags = %q", got)
	}
	if got := formatTags(nil); got != "" {
		t.Fatalf("formatTags(nil) = %q", got)
	}
}

func TestDevAddrs(t *testing.T) {
	for _, tt := range []struct {
		listen, peer, metrics string
		wantListen, wantPe    string
		wantAdvertise         string
		wantMetrics           string
		wantErr               string
	}{
		{listen: "127.0.0.1:2379", wantListen: "127.0.0.1:2379", wantPe: "127.0.0.1:2380", wantAdvertise: "127.0.0.1:2379", wantMetrics: "127.0.0.1:2381"},
		{listen: "127.0.0.1:2379", metrics: "off", wantListen: "127.0.0.1:2379", wantPe: "127.0.0.1:2380", wantAdvertise: "127.0.0.1:2379"},
		{listen: "127.0.0.1:2379", metrics: "0.0.0.0:9100", wantListen: "127.0.0.1:2379", wantPe: "127.0.0.1:2380", wantAdvertise: "127.0.0.1:2379", wantMetrics: "0.0.0.0:9100"},
		{listen: "127.0.0.1:65534", peer: "127.0.0.1:1", wantErr: "--metrics-addr"},
		{listen: "127.0.0.1:2379", metrics: "127.0.0.1:2380", wantErr: "same address"},
		{listen: "127.0.0.1:2379", metrics: "9100", wantErr: "want host:port"},
		{listen: "http://127.0.0.1:3000", peer: "127.0.0.1:4000", wantListen: "127.0.0.1:3000", wantPe: "127.0.0.1:4000", wantAdvertise: "127.0.0.1:3000", wantMetrics: "127.0.0.1:3002"},
		{listen: "0.0.0.0:2379", wantListen: "0.0.0.0:2379", wantPe: "0.0.0.0:2380", wantAdvertise: "127.0.0.1:2379", wantMetrics: "0.0.0.0:2381"},
		{listen: ":2379", wantErr: "want host:port"},
		{listen: "127.0.0.1:0", wantErr: "want host:port"},
		{listen: "127.0.0.1:65535", wantErr: "--peer-listen"},
		{listen: "127.0.0.1:1", peer: "127.0.0.1:1", wantErr: "same address"},
	} {
		d, err := devOptions{listen: tt.listen, peerListen: tt.peer, metricsAddr: tt.metrics}.resolveAddrs()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s %s: %+v, %v; want error %q", tt.listen, tt.peer, d, err, tt.wantErr)
			}
			continue
		}
		if err != nil || d.listen != tt.wantListen || d.peer != tt.wantPe || d.advertise != tt.wantAdvertise || d.metrics != tt.wantMetrics {
			t.Errorf("%s %s: %+v, %v", tt.listen, tt.peer, d, err)
		}
	}
}

// runInProcess runs the command line args in-process against endpoints.
func runInProcess(ctx context.Context, endpoints string, args ...string) (stdout, stderr string, code int) {
	var out, errOut syncBuffer
	code = execute(ctx, append(args, "--endpoints", endpoints), &out, &errOut, func(string) string { return "" })
	return out.String(), errOut.String(), code
}

// TestLsInProcess checks ls against an embedded etcd holding good and
// malformed values, under the race detector.
func TestLsInProcess(t *testing.T) {
	m := etcdtest.Single(t)
	cli := m.Client(t)
	eps := m.Endpoints()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"services/b/2":        `{"Addr":"127.0.0.1:2","Metadata":{"weight":5,"zone":"z2","version":"1.0","tags":{"y":"1","x":"2"}}}`,
		"services/b/1":        `{"Op":0,"Addr":"127.0.0.1:1","Metadata":null}`,
		"services/a/x":        `{"Addr":"127.0.0.1:3"}`,
		"services/bad/v":      `garbage`,
		"services/bad/w":      `{"Addr":"nope"}`,
		"services/noid":       `{"Addr":"127.0.0.1:4"}`,
		"services-v2/other/1": `{"Addr":"127.0.0.1:5"}`,
		"prod/a/1":            `{"Addr":"127.0.0.1:6"}`,
		"solo/s/1":            `garbage`,
	} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "services/b/3", `{"Addr":"127.0.0.1:7"}`, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	t.Run("all", func(t *testing.T) {
		out, errOut, code := runInProcess(ctx, eps, "ls")
		if code != 0 {
			t.Fatalf("code %d: %s", code, errOut)
		}
		rows := tableRows(t, out)
		var ids []string
		for _, r := range rows {
			ids = append(ids, r["SERVICE"]+"/"+r["ID"])
		}
		if got := strings.Join(ids, " "); got != "a/x b/1 b/2 b/3" {
			t.Fatalf("rows %s\n%s", got, out)
		}
		if r := rows[2]; r["ZONE"] != "z2" || r["WEIGHT"] != "5" || r["VERSION"] != "1.0" || r["TAGS"] != "x=2,y=1" || r["TTL"] != "-" {
			t.Fatalf("row b/2 = %v", r)
		}
		if r := rows[1]; r["ZONE"] != "-" || r["WEIGHT"] != "10" || r["TAGS"] != "-" {
			t.Fatalf("row b/1 = %v", r)
		}
		if ttl := rows[3]["TTL"]; ttl != "60s" && ttl != "59s" && ttl != "58s" {
			t.Fatalf("TTL of b/3 = %q", ttl)
		}
		lines := strings.Split(strings.TrimRight(errOut, "\n"), "\n")
		if len(lines) != 4 || lines[0] != "muster ls: skipped 3 malformed values:" ||
			!strings.HasPrefix(lines[1], "  services/bad/v: ") || !strings.HasPrefix(lines[2], "  services/bad/w: ") ||
			!strings.Contains(lines[3], `"services/noid"`) {
			t.Fatalf("stderr:\n%s", errOut)
		}
	})
	t.Run("one malformed", func(t *testing.T) {
		out, errOut, code := runInProcess(ctx, eps, "ls", "bad")
		if code != 0 || out != "no instances of bad registered under services/bad/\n" {
			t.Fatalf("code %d, stdout %q", code, out)
		}
		if !strings.HasPrefix(errOut, "muster ls: skipped 2 malformed values:\n") {
			t.Fatalf("stderr %q", errOut)
		}
		out, errOut, code = runInProcess(ctx, eps, "ls", "--namespace", "solo")
		if code != 0 || out != "no services registered under solo/\n" ||
			!strings.HasPrefix(errOut, "muster ls: skipped 1 malformed value: solo/s/1: malformed endpoint") || strings.Count(errOut, "\n") != 1 {
			t.Fatalf("code %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
	t.Run("service and json", func(t *testing.T) {
		out, errOut, code := runInProcess(ctx, eps, "ls", "b", "--json")
		if code != 0 || errOut != "" {
			t.Fatalf("code %d, stderr %q", code, errOut)
		}
		var rows []lsRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) != 3 || rows[0].ID != "1" || rows[2].Lease == nil || rows[2].TTLSeconds == nil || rows[0].Lease != nil || rows[0].TTLSeconds != nil {
			t.Fatalf("rows:\n%s", out)
		}
		if rows[0].Tags == nil || len(rows[0].Tags) != 0 {
			t.Fatalf("tags of b/1 = %#v, want {}", rows[0].Tags)
		}
		if !strings.Contains(out, `"tags": {}`) {
			t.Fatalf("empty tags not printed as {}:\n%s", out)
		}
	})
	t.Run("namespace", func(t *testing.T) {
		out, _, code := runInProcess(ctx, eps, "ls", "--namespace", "prod")
		if rows := tableRows(t, out); code != 0 || len(rows) != 1 || rows[0]["ADDR"] != "127.0.0.1:6" {
			t.Fatalf("code %d\n%s", code, out)
		}
		out, _, _ = runInProcess(ctx, eps, "ls", "--namespace", "empty", "--json")
		if strings.TrimSpace(out) != "[]" {
			t.Fatalf("empty namespace, json: %q", out)
		}
	})
}

// TestRegisterInProcess registers an endpoint, sees it with ls, and
// deregisters it by cancelling the context as Ctrl-C does.
func TestRegisterInProcess(t *testing.T) {
	m := etcdtest.Single(t)
	eps := m.Endpoints()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	regCtx, stop := context.WithCancel(ctx)
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- execute(regCtx, []string{"register", "order.rpc", "127.0.0.1:8080", "--id", "i-1", "--weight", "7",
			"--version", "1.4.2", "--tag", "a=1", "--ttl", "5s", "--endpoints", eps, "--log-level", "warn"},
			&out, &errOut, func(string) string { return "" })
	}()
	waitFor(t, ctx, func() bool { return strings.Contains(out.String(), "registered ") }, func() string { return out.String() + errOut.String() })
	if !strings.HasPrefix(out.String(), "registered order.rpc/i-1(127.0.0.1:8080) (lease ") || !strings.Contains(out.String(), "ttl 5s); Ctrl-C to deregister\n") {
		t.Fatalf("stdout %q", out.String())
	}

	ls, _, _ := runInProcess(ctx, eps, "ls", "order.rpc")
	rows := tableRows(t, ls)
	if len(rows) != 1 || rows[0]["ID"] != "i-1" || rows[0]["WEIGHT"] != "7" || rows[0]["VERSION"] != "1.4.2" || rows[0]["TAGS"] != "a=1" {
		t.Fatalf("ls:\n%s", ls)
	}

	stop()
	select {
	case code := <-done:
		if code != 0 || !strings.HasSuffix(out.String(), "deregistered order.rpc/i-1(127.0.0.1:8080)\n") || errOut.String() != "" {
			t.Fatalf("code %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
		}
	case <-ctx.Done():
		t.Fatal("register did not return after its context ended")
	}
	if ls, _, _ := runInProcess(ctx, eps, "ls"); ls != "no services registered under services/\n" {
		t.Fatalf("ls after deregistration:\n%s", ls)
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, cond func() bool, describe func() string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met: %s", describe())
		case <-tick.C:
		}
	}
}

func TestGatedHandler(t *testing.T) {
	var buf syncBuffer
	var open atomic.Bool
	lg := slog.New(gatedHandler{h: slog.NewTextHandler(&buf, nil), open: &open}).With("k", "v")
	lg.Warn("hidden")
	lg.Error("shown while closed")
	open.Store(true)
	lg.Info("shown once open")
	got := buf.String()
	if strings.Contains(got, "hidden") || !strings.Contains(got, "shown while closed") || !strings.Contains(got, "shown once open") || !strings.Contains(got, "k=v") {
		t.Fatalf("log:\n%s", got)
	}
}
