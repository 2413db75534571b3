package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// status says when an agent is backing off after failed starts, and for
// how long.
func TestStatusShowsStartBackoff(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cause := "agent dev failed to start: RuntimeError: Engine core initialization failed."
	st := []supervisor.AgentStatus{{Agent: "dev", LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Result: "success",
		Backoff: &supervisor.Backoff{Failures: 3, Until: now.Add(20 * time.Second), Cause: cause}}}
	gw := []controlapi.AgentState{{AgentStatus: st[0], State: controlapi.StateFailed, Error: cause}}
	var b strings.Builder
	printStatusWith(&b, st, gw, now)
	out := b.String()
	for _, want := range []string{"dev: " + cause, "dev: start backoff: not started again for 20s (3 failed start(s) in a row); `vagentctl restart dev` tries now"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
