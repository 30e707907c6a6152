package chaos

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/chaosharness"
	"github.com/mustersd/muster/internal/etcdtest"
)

func TestMain(m *testing.M) {
	if chaosharness.IsHelper() {
		chaosharness.HelperMain(chaosharness.MusterBackends) // a backend process for the SIGKILL scenario
		return
	}
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}
