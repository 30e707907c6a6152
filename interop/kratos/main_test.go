package kratos_test

import (
	"io"
	"testing"

	klog "github.com/go-kratos/kratos/v2/log"
	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
)

// Nothing is ignored beyond etcdtest's list: Kratos's servers, clients and
// resolvers end their goroutines once stopped and closed.
func TestMain(m *testing.M) {
	klog.SetLogger(klog.NewStdLogger(io.Discard)) // Kratos logs through a global logger
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}
