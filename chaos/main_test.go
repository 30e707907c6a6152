package chaos

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
)

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		helperMain(name) // a backend process for the SIGKILL scenario
		return
	}
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}
