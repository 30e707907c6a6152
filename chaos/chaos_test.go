//go:build chaos

package chaos

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mustersd/muster/internal/chaosharness"
)

// TestChaos runs every scenario (chaosharness.Scenarios) with Muster's
// backends and clients, failing on any bound violated, and prints one line
// per scenario.
func TestChaos(t *testing.T) {
	p := chaosharness.EnvParams(t)
	var results []chaosharness.Result
	run := func(name string, f func(t *testing.T, p chaosharness.Params) chaosharness.Result) {
		t.Run(name, func(t *testing.T) { results = append(results, f(t, p)) })
	}
	for _, s := range chaosharness.Scenarios {
		run(s.Name, s.Run)
	}
	run("KilledBackendRetry", func(t *testing.T, p chaosharness.Params) chaosharness.Result {
		p.Maker = chaosharness.MusterRetryClients
		return chaosharness.KilledBackend(t, p)
	})

	var b strings.Builder
	fmt.Fprintf(&b, "\nChaos suite: TTL %v, bound %v, timed faults %v, %d backends, %d clients x %d workers\n\n",
		p.TTL, p.Bound, p.Fault, p.Backends, p.Clients, p.Workers)
	b.WriteString(chaosharness.TableHeader + "\n")
	for _, r := range results {
		b.WriteString(r.Line() + "\n")
	}
	fmt.Print(b.String())
}
