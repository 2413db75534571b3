package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestE2EGatewayJournal: vagentd's records reach the journal with their
// level as priority and their agent as a field. po is started through the
// gateway and stopped behind vagentd's back, which vagentd reports as a
// warning; journalctl -p warning shows that warning and no info record, and
// journalctl AGENT=po shows po's records and nobody else's.
func TestE2EGatewayJournal(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, nil)
	ctx := t.Context()
	for _, agent := range []string{"dev", "po"} {
		resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody(agent, 4, false))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("chat with %s: %v %s", agent, err, body)
		}
	}
	if _, err := g.s.Systemctl(ctx, "stop", "vagent@po.service"); err != nil {
		t.Fatal(err)
	}
	const warning = `level=WARN msg="agent no longer runs" agent=po`
	var warnings string
	eventually(t, time.Minute, "vagentd warns that po no longer runs", func() bool {
		warnings = g.s.Journal(ctx, gatewayUnit, "-p", "warning")
		return strings.Contains(warnings, warning)
	})
	for _, line := range strings.Split(strings.TrimSpace(warnings), "\n") {
		if !strings.HasPrefix(line, "level=WARN ") && !strings.HasPrefix(line, "level=ERROR ") {
			t.Errorf("journalctl -p warning shows a record below warning: %q", line)
		}
	}
	all := g.s.Journal(ctx, gatewayUnit)
	if !strings.Contains(all, "level=INFO ") {
		t.Fatalf("vagentd's journal has no info record:\n%s", all)
	}

	po := g.s.Journal(ctx, gatewayUnit, "AGENT=po")
	for _, want := range []string{`msg="switching to agent" agent=po`, warning} {
		if !strings.Contains(po, want) {
			t.Errorf("journalctl -u vagentd AGENT=po lacks %q:\n%s", want, po)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(po), "\n") {
		if !strings.Contains(line, " agent=po") {
			t.Errorf("journalctl -u vagentd AGENT=po shows another record: %q", line)
		}
	}
	if dev := g.s.Journal(ctx, gatewayUnit, "AGENT=dev"); !strings.Contains(dev, "agent=dev") || strings.Contains(dev, "agent=po") {
		t.Errorf("journalctl -u vagentd AGENT=dev:\n%s", dev)
	}
}
