package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/docs"
	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// quickstartFile is the page whose simulator path TestE2EQuickstart runs.
const quickstartFile = "../docs/quickstart.md"

// quickstartGateway is the gateway address the page uses; the test puts
// vagentd on a free port instead, since sandboxes share the host's network.
const quickstartGateway = "127.0.0.1:8080"

// quickstartBlock is one ```sh sim block of the page and the ```text
// sim-output block after it, if any.
type quickstartBlock struct {
	cmd    docs.Block
	output *docs.Block
}

// quickstartBlocks reads the simulator path of the quick start.
func quickstartBlocks(t *testing.T) []quickstartBlock {
	t.Helper()
	blocks, err := docs.ReadBlocks(quickstartFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []quickstartBlock
	for i, b := range blocks {
		switch {
		case b.Lang == "sh" && b.Has("sim"):
			out = append(out, quickstartBlock{cmd: b})
		case b.Lang == "text" && b.Has("sim-output"):
			if len(out) == 0 || i == 0 || blocks[i-1].Line != out[len(out)-1].cmd.Line {
				t.Fatalf("%s: a sim-output block must follow a ```sh sim block", b.Where())
			}
			bb := b
			out[len(out)-1].output = &bb
		}
	}
	if len(out) < 3 {
		t.Fatalf("%s: only %d ```sh sim blocks", quickstartFile, len(out))
	}
	return out
}

// quickstartScript is a block's commands as the test runs them: without
// "sudo " (the test runs as root) and with the gateway on port.
func quickstartScript(text string, port int) string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		trimmed := strings.TrimLeft(l, " \t")
		if rest, ok := strings.CutPrefix(trimmed, "sudo "); ok {
			l = l[:len(l)-len(trimmed)] + rest
		}
		lines = append(lines, l)
	}
	return strings.ReplaceAll(strings.Join(lines, "\n"), quickstartGateway, fmt.Sprintf("127.0.0.1:%d", port))
}

// TestE2EQuickstart follows docs/quickstart.md's simulator path in a
// throwaway systemd: the shipped configuration installed as the package
// installs it (agents on free ports), `vagentctl apply` run and
// vagentd.service started as the package's postinst does, then every
// ```sh sim block of the page run as a bash script that must exit 0, its
// output matched against the ```text sim-output block after it. It ends in
// streamed answers from every agent through the gateway.
func TestE2EQuickstart(t *testing.T) {
	t.Parallel()
	blocks := quickstartBlocks(t)
	h := newHost(t)
	ctx := t.Context()
	if err := h.s.Build(ctx, "./cmd/vagentd"); err != nil {
		t.Fatal(err)
	}
	port, err := sandbox.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	g := &gwHost{host: h, port: port, base: fmt.Sprintf("http://127.0.0.1:%d", port),
		sock: h.s.Path("run/vagent/vagentd.sock")}
	if err := h.s.EditConfig("vagent.toml", map[string]any{
		"gateway.listen":         fmt.Sprintf("127.0.0.1:%d", port),
		"gateway.control_socket": g.sock,
	}); err != nil {
		t.Fatal(err)
	}
	// What the package's postinst does: apply, then enable and start vagentd.
	h.mustCtl("apply")
	g.installUnit()
	if _, err := h.s.Systemctl(ctx, "enable", "--now", gatewayUnit); err != nil {
		t.Fatalf("start vagentd: %v\n%s", err, h.s.Journal(ctx, gatewayUnit))
	}
	t.Cleanup(func() {
		if t.Failed() {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			t.Logf("vagentd journal (last lines):\n%s", h.s.Journal(c, gatewayUnit, "-n", "60"))
		}
	})

	streamed := map[string]bool{}
	for _, b := range blocks {
		script := quickstartScript(b.cmd.Text, port)
		c, cancel := context.WithTimeout(ctx, 3*time.Minute)
		out, errOut, code, err := h.s.Exec(c, "bash", "-euo", "pipefail", "-c", script)
		cancel()
		t.Logf("%s:\n%s\n--- stdout:\n%s--- stderr:\n%s", b.cmd.Where(), script, out, errOut)
		if err != nil || code != 0 {
			t.Fatalf("%s: exit %d %v\nstdout:\n%s\nstderr:\n%s", b.cmd.Where(), code, err, out, errOut)
		}
		if b.output != nil {
			if err := docs.Match(b.output.Text, out+errOut); err != nil {
				t.Errorf("%s: the sample output does not match what the commands printed: %v", b.output.Where(), err)
			}
		}
		// Every streamed request of the page must end in [DONE] without an
		// error event.
		if strings.Contains(script, "curl -N") {
			if !strings.Contains(out, "data: [DONE]") || strings.Contains(out, `"error"`) {
				t.Errorf("%s: no clean stream:\n%s", b.cmd.Where(), out)
			}
			for _, agent := range agentNames {
				if strings.Contains(out, `"model":"`+agent+`"`) {
					streamed[agent] = true
				}
			}
		}
	}
	for _, agent := range agentNames {
		if !streamed[agent] {
			t.Errorf("%s never streams an answer from %s", quickstartFile, agent)
		}
	}
}
