package gozero_test

import (
	"os"
	"testing"
	_ "unsafe" // go:linkname, to close go-zero's etcd clients

	"github.com/zeromicro/go-zero/core/logx"
	"github.com/zeromicro/go-zero/core/syncx"
	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
)

// goZeroConns is go-zero's cache of etcd clients, one per set of hosts
// (core/discov/internal/registry.go: connManager). Publishers, Subscribers
// and zrpc clients share them, and go-zero never closes them: go-zero
// expects to own the process. Closing them at the end of the tests is what
// lets the leak check below see every goroutine of etcd's and gRPC's that
// Muster might have left, instead of ignoring all of those by name. If
// go-zero renames the variable, the test binary fails to link, naming it.
//
//go:linkname goZeroConns github.com/zeromicro/go-zero/core/discov/internal.connManager
var goZeroConns *syncx.ResourceManager

// goZeroLeaks are the goroutines go-zero starts and never ends; nothing
// else is ignored.
var goZeroLeaks = []goleak.Option{
	// core/proc's init waits for SIGTERM/SIGINT (and SIGUSR1/2) forever,
	// to run go-zero's graceful shutdown.
	goleak.IgnoreAnyFunction("github.com/zeromicro/go-zero/core/proc.init.1.func1"),
	// core/stat's init refreshes the CPU usage every 250ms, forever.
	goleak.IgnoreAnyFunction("github.com/zeromicro/go-zero/core/stat.init.1.func1"),
	// discov/internal.(*cluster).watchConnState watches each cached
	// client's connection state with WaitForStateChange(context.Background())
	// in a loop that has no exit; once the client is closed it waits on
	// SHUTDOWN forever.
	goleak.IgnoreAnyFunction("github.com/zeromicro/go-zero/core/discov/internal.(*stateWatcher).watch"),
}

// closingM closes go-zero's etcd clients once the tests have run, before
// goleak looks for leaks.
type closingM struct{ m *testing.M }

func (c closingM) Run() int {
	code := c.m.Run()
	if err := goZeroConns.Close(); err != nil {
		println("closing go-zero's etcd clients:", err.Error())
	}
	return code
}

func TestMain(m *testing.M) {
	logx.Disable()
	// go-zero's etcd clients log through etcd's default logger, at info
	// level unless ETCD_CLIENT_DEBUG says otherwise: keep its errors only.
	os.Setenv("ETCD_CLIENT_DEBUG", "error")
	goleak.VerifyTestMain(closingM{m}, append(etcdtest.IgnoreLeaks(), goZeroLeaks...)...)
}
