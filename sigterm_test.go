package muster

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mustersd/muster/internal/etcdtest"
	"github.com/mustersd/muster/internal/testx"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSIGTERMLeavesBeforeClosing builds the hello example's server, runs it,
// and sends it SIGTERM: its key must leave etcd while its listener still
// accepts connections, and it must exit 0 within the shutdown timeout, having
// logged the five shutdown steps in order.
func TestSIGTERMLeavesBeforeClosing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a binary")
	}
	bin := filepath.Join(t.TempDir(), "hello-server")
	build := exec.Command("go", "build", "-o", bin, "./examples/hello/server")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	m := etcdtest.Single(t)
	cli := m.Client(t)
	prefix := "services/hello.rpc/"
	wch := cli.Watch(testx.Context(t, time.Minute), prefix, clientv3.WithPrefix(), clientv3.WithRev(mustRev(t, cli)+1))

	var stderr lockedBuffer
	cmd := exec.Command(bin, "-etcd", strings.Join(m.Endpoints(), ","), "-listen", "127.0.0.1:0")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	next := func(want mvccpb.Event_EventType) *clientv3.Event {
		t.Helper()
		for {
			select {
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					t.Fatalf("watch ended: %v\nserver log:\n%s", wr.Err(), stderr.String())
				}
				for _, ev := range wr.Events {
					if ev.Type == want {
						return ev
					}
				}
			case err := <-exited:
				exited <- err // for the cleanup
				t.Fatalf("server exited early: %v\n%s", err, stderr.String())
			case <-time.After(30 * time.Second):
				t.Fatalf("no %v event in 30s; server log:\n%s", want, stderr.String())
			}
		}
	}
	put := next(clientv3.EventTypePut)
	addr := strings.TrimPrefix(string(put.Kv.Key), prefix)
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("registered address %s does not accept connections: %v", addr, err)
	} else {
		c.Close()
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	next(clientv3.EventTypeDelete)
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("the listener closed before the key left etcd: %v\nserver log:\n%s", err, stderr.String())
	} else {
		c.Close()
	}

	limit := DefaultDrainDelay + DefaultShutdownTimeout + 5*time.Second
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("server exited with %v after SIGTERM\n%s", err, stderr.String())
		}
		t.Logf("exited 0, %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(limit):
		t.Fatalf("server still running %v after SIGTERM\n%s", limit, stderr.String())
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatalf("%s still accepts connections after the server exited", addr)
	}
	log := stderr.String()
	last := -1
	for _, step := range []string{"shutdown 1/5", "shutdown 2/5", "shutdown 3/5", "shutdown 4/5", "shutdown 5/5"} {
		i := strings.Index(log, step)
		if i < 0 || i < last {
			t.Fatalf("log lacks %q in order:\n%s", step, log)
		}
		last = i
	}
}
