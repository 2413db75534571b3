package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/docs"
)

// TestE2ECrashLoopIsTheDocumentedSample: an engine that exits at once,
// started by hand beside a running vagentd, is restarted by the real
// systemd until its start limit; `vagentctl status` then prints what
// troubleshooting.md shows (id status-start-limit), so the sample is
// systemd's real outcome, not a guess.
func TestE2ECrashLoopIsTheDocumentedSample(t *testing.T) {
	g := newGatewayHost(t, nil)
	h := g.host
	// The simulator refuses a model missing from the cache, as vLLM does
	// offline: dev's engine exits 1 at every start.
	if err := h.s.EditConfig("agents/dev.toml", map[string]any{"env.VLLM_SIM_REQUIRE_CACHE": "1"}); err != nil {
		t.Fatal(err)
	}
	h.mustCtl("apply")
	g.restartGateway()
	if _, err := h.s.Systemctl(t.Context(), "start", "vagent@dev.service"); err != nil {
		t.Logf("systemctl start vagent@dev: %v", err)
	}
	// systemd 252 gives up after start_limit_burst restarts: the unit is
	// failed, and its result stays the engine's own ("exit-code"); only the
	// journal says "Start request repeated too quickly".
	eventually(t, 2*time.Minute, "dev hits its start limit", func() bool {
		out, _ := h.s.Systemctl(t.Context(), "show", "-p", "ActiveState,NRestarts", "vagent@dev.service")
		return strings.Contains(out, "ActiveState=failed") && strings.Contains(out, "NRestarts=3")
	})
	jb, err := docs.E2EBlock("../docs", "crash-loop-journal")
	if err != nil {
		t.Fatal(err)
	}
	j := h.s.Journal(t.Context(), "vagent@dev.service", "-o", "cat")
	if err := docs.Match(jb.Text, j); err != nil {
		t.Errorf("%s: the documented journal is not what systemd printed: %v\n%s", jb.Where(), err, j)
	}
	out, errOut, code := h.ctl("status")
	t.Logf("status (exit %d):\n%s%s", code, out, errOut)
	msgs, err := docs.Messages("../docs")
	if err != nil {
		t.Fatal(err)
	}
	b, ok := msgs["status-start-limit"]
	if !ok {
		t.Fatal("troubleshooting.md has no status-start-limit sample")
	}
	if err := docs.Match(b.Text, out); err != nil {
		t.Errorf("%s: the documented sample is not what systemd and vagentctl print: %v", b.Where(), err)
	}
}
