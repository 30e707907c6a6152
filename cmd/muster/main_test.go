package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
)

// musterBin is the muster binary built by TestMain, which the end-to-end
// tests run as a user would.
var musterBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "muster-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	musterBin = filepath.Join(dir, "muster")
	build := exec.Command("go", "build", "-o", musterBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building muster:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(etcdtest.IgnoreLeaks()...); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// Timeouts of the end-to-end tests. They bound waits on conditions; no test
// sleeps for correctness.
const (
	startTimeout = 60 * time.Second // muster dev up and ready (2 cores, busy)
	lineTimeout  = 30 * time.Second // a line from a running command
	exitTimeout  = 30 * time.Second // a command ends after a signal
	runTimeout   = 30 * time.Second // a short command (ls) completes
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a muster process running in the background.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line; closed at EOF
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // of Wait; set before done is closed
}

// start runs muster with args in the background. The process is killed
// when the test ends, if it still runs.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: "muster " + strings.Join(args, " "), lines: make(chan string, 1000), done: make(chan struct{})}
	p.cmd = exec.Command(musterBin, args...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.stdout.Write([]byte(sc.Text() + "\n"))
			select {
			case p.lines <- sc.Text():
			default: // nobody waits for lines this far on
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() {
		<-scanned
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// cleanEnv returns the environment without MUSTER_ variables, so that the
// tests do not depend on the environment they run in.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MUSTER_") {
			env = append(env, kv)
		}
	}
	return env
}

// waitLine waits for a line of stdout containing want and returns it. The
// test fails if the process exits or timeout passes first.
func (p *proc) waitLine(want string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.done
				p.t.Fatalf("%s exited (%v) before printing %q\n%s", p.name, p.err, want, p.transcript())
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-deadline:
			p.t.Fatalf("%s did not print %q within %v\n%s", p.name, want, timeout, p.transcript())
		}
	}
}

// signal sends sig and waits for the process to exit; it returns the exit
// code.
func (p *proc) signal(sig os.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("%s: signal: %v", p.name, err)
	}
	return p.wait(exitTimeout)
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %v\n%s", p.name, timeout, p.transcript())
	}
	return exitCode(p.t, p.err)
}

func (p *proc) transcript() string {
	return fmt.Sprintf("--- stdout of %s:\n%s--- stderr:\n%s", p.name, p.stdout.String(), p.stderr.String())
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("running muster: %v", err)
		return -1
	}
}

// result is the outcome of a command run to completion.
type result struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// runMuster runs muster with args to completion, within runTimeout.
func runMuster(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, musterBin, args...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	begin := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("muster %s did not finish within %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), runTimeout, stdout.String(), stderr.String())
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: exitCode(t, err), took: time.Since(begin)}
}

// freePortPair returns a port p such that p, p+1 and p+2 were all free on
// 127.0.0.1 a moment ago: the client, default peer and default metrics port
// of muster dev.
func freePortPair(t *testing.T) int {
	t.Helper()
next:
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if port >= 65534 {
			continue
		}
		for _, p := range []int{port + 1, port + 2} {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				continue next
			}
			l.Close()
		}
		return port
	}
	t.Fatal("no free pair of ports found")
	return 0
}

// startDev starts `muster dev` on dataDir and waits until it is ready. With
// port 0 it picks free ports and retries when another process takes them
// first; otherwise it retries on port until the port is free again.
func startDev(t *testing.T, dataDir string, port int) (*proc, int) {
	t.Helper()
	pick := port == 0
	var last *proc
	for attempt := range 5 {
		if pick {
			port = freePortPair(t)
		} else if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond) // backoff: wait for the port to be free
		}
		p := start(t, "dev", "--data-dir", dataDir, "--listen", "127.0.0.1:"+strconv.Itoa(port))
		select {
		case line, ok := <-waitReady(p):
			if ok {
				t.Logf("%s", line)
				return p, port
			}
		case <-time.After(startTimeout):
			t.Fatalf("muster dev not ready within %v\n%s", startTimeout, p.transcript())
		}
		// It exited: retry only if a port was in use.
		if code := p.wait(exitTimeout); code != exitFailure || !strings.Contains(p.stderr.String(), "is in use") {
			t.Fatalf("muster dev exited with code %d before it was ready\n%s", code, p.transcript())
		}
		last = p
	}
	t.Fatalf("muster dev: could not bind a port\n%s", last.transcript())
	return nil, 0
}

// waitReady delivers the ready line of a starting `muster dev`, or closes
// the channel if the process exits first.
func waitReady(p *proc) <-chan string {
	ch := make(chan string, 1)
	go func() {
		defer close(ch)
		for line := range p.lines {
			if strings.Contains(line, "etcd ready at") {
				ch <- line
				return
			}
		}
	}()
	return ch
}
