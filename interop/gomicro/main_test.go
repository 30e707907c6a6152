package gomicro_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/mustersd/muster/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.IgnoreLeaks()...)
}
