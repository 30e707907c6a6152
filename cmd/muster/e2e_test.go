package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mustersd/muster/internal/etcdclient"
)

// TestDevRegisterLs walks through what a new user does: start muster dev,
// register an endpoint, list it, deregister it with Ctrl-C, stop muster dev
// and start it again on the same data.
func TestDevRegisterLs(t *testing.T) {
	dataDir := t.TempDir()
	dev, port := startDev(t, dataDir, 0)
	eps := "127.0.0.1:" + strconv.Itoa(port)

	reg := start(t, "register", "svc", "127.0.0.1:9999", "--zone", "z1", "--tag", "canary=true", "--ttl", "2s", "--endpoints", eps)
	line := reg.waitLine("registered", lineTimeout)
	if !regexp.MustCompile(`^registered svc/127\.0\.0\.1:9999 \(lease [0-9a-f]+, ttl 2s\); Ctrl-C to deregister$`).MatchString(line) {
		t.Fatalf("register printed %q", line)
	}

	t.Run("ls", func(t *testing.T) {
		r := runMuster(t, "ls", "--endpoints", eps)
		if r.code != 0 || r.stderr != "" {
			t.Fatalf("ls: code %d, stderr %q", r.code, r.stderr)
		}
		rows := tableRows(t, r.stdout)
		if len(rows) != 1 {
			t.Fatalf("ls printed %d rows, want 1:\n%s", len(rows), r.stdout)
		}
		row := rows[0]
		want := map[string]string{
			"SERVICE": "svc", "ID": "127.0.0.1:9999", "ADDR": "127.0.0.1:9999", "ZONE": "z1",
			"WEIGHT": "10", "VERSION": "-", "TAGS": "canary=true",
		}
		for col, v := range want {
			if row[col] != v {
				t.Errorf("column %s = %q, want %q\n%s", col, row[col], v, r.stdout)
			}
		}
		if !regexp.MustCompile(`^[0-2]s$`).MatchString(row["TTL"]) {
			t.Errorf("column TTL = %q, want 0s..2s", row["TTL"])
		}
	})

	t.Run("metrics", func(t *testing.T) {
		line := dev.waitLine("metrics: ", lineTimeout)
		url := "http://127.0.0.1:" + strconv.Itoa(port+2) + "/metrics"
		if want := "  metrics: " + url + " (etcd's own: http://" + eps + "/metrics)"; line != want {
			t.Fatalf("dev printed %q, want %q", line, want)
		}
		// The discovery watch of the namespace sees the endpoint.
		want := `muster_discovery_endpoints{prefix="services/"} 1` + "\n"
		deadline := time.Now().Add(lineTimeout)
		for {
			body := scrape(t, url)
			if strings.Contains(body, want) && strings.Contains(body, "go_goroutines ") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("/metrics lacks %q:\n%s", want, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("ls --json", func(t *testing.T) {
		r := runMuster(t, "ls", "--json", "--endpoints", eps)
		if r.code != 0 {
			t.Fatalf("ls --json: code %d, stderr %q", r.code, r.stderr)
		}
		var got []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("ls --json printed invalid JSON: %v\n%s", err, r.stdout)
		}
		if len(got) != 1 {
			t.Fatalf("ls --json: %d objects, want 1\n%s", len(got), r.stdout)
		}
		o := got[0]
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range o {
				if !yield(k) {
					return
				}
			}
		})
		if want := []string{"addr", "id", "lease", "service", "tags", "ttl_seconds", "version", "weight", "zone"}; !slices.Equal(keys, want) {
			t.Fatalf("fields %v, want %v", keys, want)
		}
		if o["service"] != "svc" || o["id"] != "127.0.0.1:9999" || o["addr"] != "127.0.0.1:9999" ||
			o["zone"] != "z1" || o["weight"] != 10.0 || o["version"] != "" {
			t.Errorf("object %v", o)
		}
		if tags, _ := o["tags"].(map[string]any); tags["canary"] != "true" || len(tags) != 1 {
			t.Errorf("tags = %v", o["tags"])
		}
		if ttl, ok := o["ttl_seconds"].(float64); !ok || ttl < 0 || ttl > 2 {
			t.Errorf("ttl_seconds = %v", o["ttl_seconds"])
		}
		if lease, _ := o["lease"].(string); !regexp.MustCompile(`^[0-9a-f]+$`).MatchString(lease) || !strings.Contains(line, "lease "+lease+",") {
			t.Errorf("lease = %v; register said %q", o["lease"], line)
		}
	})

	t.Run("deregister on SIGINT", func(t *testing.T) {
		if code := reg.signal(os.Interrupt); code != 0 {
			t.Fatalf("register exited with %d after SIGINT\n%s", code, reg.transcript())
		}
		if !strings.Contains(reg.stdout.String(), "deregistered svc/127.0.0.1:9999\n") {
			t.Fatalf("register did not say deregistered\n%s", reg.transcript())
		}
		r := runMuster(t, "ls", "--endpoints", eps)
		if r.code != 0 || r.stdout != "no services registered under services/\n" {
			t.Fatalf("ls after deregistration: code %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		r = runMuster(t, "ls", "--json", "--endpoints", eps)
		if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Fatalf("ls --json after deregistration: code %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})

	// A key without a lease, written as another tool would.
	putKey(t, eps, "services/persist/p1", `{"Addr":"127.0.0.1:7777","Metadata":{"weight":3}}`)

	t.Run("stop on SIGINT", func(t *testing.T) {
		if code := dev.signal(os.Interrupt); code != 0 {
			t.Fatalf("dev exited with %d after SIGINT\n%s", code, dev.transcript())
		}
		if !strings.HasSuffix(dev.stdout.String(), "muster dev: stopped\n") {
			t.Fatalf("dev did not say stopped\n%s", dev.transcript())
		}
		if s := dev.stderr.String(); s != "" {
			t.Fatalf("dev wrote to stderr:\n%s", s)
		}
	})

	t.Run("data persists", func(t *testing.T) {
		dev2, _ := startDev(t, dataDir, port)
		r := runMuster(t, "ls", "--endpoints", eps)
		if r.code != 0 {
			t.Fatalf("ls: code %d, stderr %q", r.code, r.stderr)
		}
		rows := tableRows(t, r.stdout)
		if len(rows) != 1 || rows[0]["SERVICE"] != "persist" || rows[0]["ID"] != "p1" || rows[0]["WEIGHT"] != "3" || rows[0]["TTL"] != "-" {
			t.Fatalf("ls after restart:\n%s", r.stdout)
		}
		r = runMuster(t, "ls", "persist", "--json", "--endpoints", eps)
		var got []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got) != 1 {
			t.Fatalf("ls --json: %v\n%s", err, r.stdout)
		}
		if got[0]["ttl_seconds"] != nil || got[0]["lease"] != nil {
			t.Fatalf("a key without lease: ttl_seconds %v, lease %v; want null", got[0]["ttl_seconds"], got[0]["lease"])
		}
		if code := dev2.signal(os.Interrupt); code != 0 {
			t.Fatalf("dev exited with %d\n%s", code, dev2.transcript())
		}
	})
}

// tableRows parses the table ls prints into one map per row, column name to
// value.
func tableRows(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	header := strings.Fields(lines[0])
	if want := []string{"SERVICE", "ID", "ADDR", "ZONE", "WEIGHT", "VERSION", "TAGS", "TTL"}; !slices.Equal(header, want) {
		t.Fatalf("header %v, want %v\n%s", header, want, out)
	}
	var rows []map[string]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != len(header) {
			t.Fatalf("row %q has %d columns, want %d", l, len(f), len(header))
		}
		row := map[string]string{}
		for i, h := range header {
			row[h] = f[i]
		}
		rows = append(rows, row)
	}
	return rows
}

func putKey(t *testing.T, endpoints, key, value string) {
	t.Helper()
	cli, err := etcdclient.New(etcdclient.Config{Endpoints: []string{endpoints}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, value); err != nil {
		t.Fatal(err)
	}
}

// deadAddr returns an address on which nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUnreachableEtcd(t *testing.T) {
	addr := deadAddr(t)
	for _, args := range [][]string{
		{"ls"},
		{"ls", "--json"},
		{"register", "svc", "127.0.0.1:9999"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := runMuster(t, append(args, "--endpoints", addr, "--dial-timeout", "1s")...)
			want := "muster: cannot reach etcd at " + addr + " (context deadline exceeded); is it running? start one with `muster dev`\n"
			if r.code != 1 || r.stderr != want || r.stdout != "" {
				t.Fatalf("code %d, stdout %q, stderr %q; want code 1 and stderr %q", r.code, r.stdout, r.stderr, want)
			}
			if r.took > 10*time.Second {
				t.Fatalf("took %v with --dial-timeout 1s", r.took)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string // in the first line of stderr
	}{
		{[]string{"register", "svc", "not-an-addr"}, `muster register: addr "not-an-addr": want host:port`},
		{[]string{"register", "svc"}, "muster register: want SERVICE and ADDR"},
		{[]string{"register", "a/b", "127.0.0.1:1"}, `muster register: service "a/b"`},
		{[]string{"register", "svc", "127.0.0.1:1", "--weight", "20000"}, "weight 20000 out of range"},
		{[]string{"register", "svc", "127.0.0.1:1", "--ttl", "500ms"}, "muster register: ttl 500ms"},
		{[]string{"register", "svc", "127.0.0.1:1", "--tag", "canary"}, `muster register: tag "canary": want key=value`},
		{[]string{"ls", "--bogus"}, "muster ls: unknown flag: --bogus"},
		{[]string{"ls", "a", "b"}, "muster ls: accepts at most 1 arg(s)"},
		{[]string{"lss"}, `muster: unknown command "lss" for "muster"; did you mean ls or xds?`},
		{[]string{"dev", "--listen", "nope"}, `muster dev: --listen "nope": want host:port`},
		{[]string{"ls", "--dial-timeout", "0s"}, "muster ls: --dial-timeout 0s: must be positive"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runMuster(t, tt.args...)
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if r.code != 2 || !strings.Contains(lines[0], tt.want) || len(lines) != 2 || !strings.HasPrefix(lines[1], "Run 'muster") {
				t.Fatalf("code %d, stderr:\n%s\nwant code 2, %q and a hint", r.code, r.stderr, tt.want)
			}
		})
	}
}

func TestDevPortInUse(t *testing.T) {
	hold := func(t *testing.T, port int) {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
	}
	t.Run("client port", func(t *testing.T) {
		port := freePortPair(t)
		hold(t, port)
		addr := "127.0.0.1:" + strconv.Itoa(port)
		r := runMuster(t, "dev", "--data-dir", t.TempDir(), "--listen", addr)
		want := "muster dev: " + addr + " is in use; is another etcd running? use --listen to pick another address\n"
		if r.code != 1 || r.stderr != want {
			t.Fatalf("code %d, stderr %q; want 1, %q", r.code, r.stderr, want)
		}
	})
	t.Run("peer port", func(t *testing.T) {
		port := freePortPair(t)
		hold(t, port+1)
		r := runMuster(t, "dev", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:"+strconv.Itoa(port))
		want := "muster dev: 127.0.0.1:" + strconv.Itoa(port+1) + " is in use; is another etcd running? use --peer-listen to pick another address\n"
		if r.code != 1 || r.stderr != want {
			t.Fatalf("code %d, stderr %q; want 1, %q", r.code, r.stderr, want)
		}
	})
	t.Run("metrics port", func(t *testing.T) {
		port := freePortPair(t)
		hold(t, port+2)
		r := runMuster(t, "dev", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:"+strconv.Itoa(port))
		want := "muster dev: 127.0.0.1:" + strconv.Itoa(port+2) + " is in use; is another etcd running? use --metrics-addr to pick another address\n"
		if r.code != 1 || r.stderr != want {
			t.Fatalf("code %d, stderr %q; want 1, %q", r.code, r.stderr, want)
		}
	})
	t.Run("second dev", func(t *testing.T) {
		dir := t.TempDir()
		dev, port := startDev(t, dir, 0)
		r := runMuster(t, "dev", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:"+strconv.Itoa(port))
		want := "muster dev: 127.0.0.1:" + strconv.Itoa(port) + " is in use; is another etcd running? use --listen to pick another address\n"
		if r.code != 1 || r.stderr != want {
			t.Fatalf("code %d, stderr %q; want 1, %q", r.code, r.stderr, want)
		}
		// The same data directory on other ports: etcd would wait forever
		// for its database; muster dev says what is wrong.
		other := freePortPair(t)
		r = runMuster(t, "dev", "--data-dir", dir, "--listen", "127.0.0.1:"+strconv.Itoa(other))
		if r.code != 1 || !strings.Contains(r.stderr, "is in use by another muster dev") {
			t.Fatalf("same data dir: code %d, stderr %q", r.code, r.stderr)
		}
		if code := dev.signal(os.Interrupt); code != 0 {
			t.Fatalf("dev exited with %d\n%s", code, dev.transcript())
		}
	})
}
