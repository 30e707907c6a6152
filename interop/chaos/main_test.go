//go:build chaos

package chaos

import (
	"os"
	"testing"

	"github.com/zeromicro/go-zero/core/logx"

	"github.com/mustersd/muster/internal/chaosharness"
)

func TestMain(m *testing.M) {
	logx.Disable()
	// go-zero's etcd clients log through etcd's default logger, at info
	// level unless ETCD_CLIENT_DEBUG says otherwise: keep its errors only.
	os.Setenv("ETCD_CLIENT_DEBUG", "error")
	if chaosharness.IsHelper() {
		// A backend process for the SIGKILL scenario.
		chaosharness.HelperMain(chaosharness.MusterBackends, etcdNamingBackends, goZeroBackends)
		return
	}
	// No leak check: go-zero starts goroutines it never ends and keeps its
	// etcd clients for the life of the process (see ../gozero/main_test.go).
	os.Exit(m.Run())
}
