package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// simReleaseMillis is how long a stopped simulator holds its GPU memory,
// as a real engine's memory shows free only some time after it exits.
const simReleaseMillis = 100

// BenchmarkSwitchOverhead measures the supervisor's own cost of a switch:
// the wall time of `vagentctl switch` (the other agent evicted, the GPU
// memory waited for, the unit started, /health polled) minus what the
// simulator is configured to spend (its load time and its memory release
// delay). Target: a median of at most 150 ms.
func BenchmarkSwitchOverhead(b *testing.B) {
	h := newHost(b)
	for _, a := range []string{"dev", "po"} {
		path := h.s.Path("etc/vagent/agents", a+".toml")
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		data = append(data, fmt.Sprintf("\n[env]\nVLLM_SIM_RELEASE_MS = \"%d\"\n", simReleaseMillis)...)
		if err := os.WriteFile(path, data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	h.mustCtl("apply")
	h.mustCtl("switch", "po")

	const switches = 11
	simulated := time.Duration(simLoadSeconds*float64(time.Second)) + simReleaseMillis*time.Millisecond
	b.ResetTimer()
	var overheads []time.Duration
	for range b.N {
		overheads = overheads[:0]
		for i := range switches {
			target := []string{"dev", "po"}[i%2]
			t0 := time.Now()
			out := h.mustCtl("switch", target)
			wall := time.Since(t0)
			if !strings.Contains(out, "(stopped ") {
				b.Fatalf("switch %s evicted nothing: %s", target, out)
			}
			overheads = append(overheads, wall-simulated)
		}
	}
	b.StopTimer()
	slices.Sort(overheads)
	median := overheads[len(overheads)/2]
	b.ReportMetric(float64(median)/float64(time.Millisecond), "overhead-ms")
	fmt.Printf("switch overhead: median %.1f ms over %d switches (min %.1f, max %.1f; wall minus %s of simulated load and release; target <= 150 ms)\n",
		ms(median), len(overheads), ms(overheads[0]), ms(overheads[len(overheads)-1]), simulated)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
