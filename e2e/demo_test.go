package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vagent-dev/vagent/e2e/sandbox"
	"github.com/vagent-dev/vagent/internal/syncbuf"
)

// TestE2EDemo runs what "make demo DEMO_ARGS=-keep" runs (e2e/cmd/demo from
// the repository's root) on a free port: three streamed answers through
// vagentd, the switches in vagentctl status and in the journal; then, kept
// up, it serves an OpenAI client and the curl line it printed, and Ctrl-C
// (SIGINT) ends it and removes its sandbox.
func TestE2EDemo(t *testing.T) {
	t.Parallel()
	if !sandbox.Required() {
		t.Skip("the demo boots a sandbox: run as root")
	}
	ctx := t.Context()
	bin := t.TempDir()
	if err := sandbox.BuildBinaries(ctx, bin, "./e2e/cmd/demo"); err != nil {
		t.Fatal(err)
	}
	port, err := sandbox.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	var stdout, stderr syncbuf.Buffer
	cmd := exec.Command(filepath.Join(bin, "demo"), "-keep", "-listen", fmt.Sprintf("127.0.0.1:%d", port), "-sim-load-seconds", "0.5")
	cmd.Dir = ".."
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ended := false
	defer func() {
		if !ended {
			cmd.Process.Signal(syscall.SIGINT)
			<-exited
		}
		if t.Failed() {
			t.Logf("demo stdout:\n%s\ndemo stderr:\n%s", stdout.String(), stderr.String())
		}
	}()

	// The demo part, until it says it keeps serving.
	deadline := time.After(10 * time.Minute)
	for !strings.Contains(stdout.String(), "until Ctrl-C") {
		select {
		case err := <-exited:
			ended = true
			t.Fatalf("the demo ended before serving: %v", err)
		case <-deadline:
			t.Fatal("the demo did not get to serving within 10 minutes")
		case <-time.After(200 * time.Millisecond):
		}
	}
	out := stdout.String()
	for _, agent := range agentNames {
		if !regexp.MustCompile(`(?m)^` + agent + `: \S.*\n\(\d+ chunks streamed`).MatchString(out) {
			t.Errorf("no streamed answer from %s", agent)
		}
		if !regexp.MustCompile(`(?m)^` + agent + ` +active \(running\) .* running `).MatchString(out) {
			t.Errorf("vagentctl status never shows %s running through the gateway", agent)
		}
	}
	if n := strings.Count(out, `msg="switching to agent"`); n < 2+1 { // the journal's lines and the filtered agent's
		t.Errorf("%d switches shown, want at least 2 from the journal", n-1)
	}
	if !strings.Contains(out, "$ journalctl -u vagentd -o cat --no-pager AGENT=po\nlevel=INFO") {
		t.Errorf("the demo does not show po's records picked out by the AGENT field")
	}

	// Kept up: any OpenAI client, and the curl line it printed.
	c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("none"), option.WithMaxRetries(0))
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	st := c.Chat.Completions.NewStreaming(sctx, openai.ChatCompletionNewParams{
		Model:    "architect",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hello")},
	})
	chunks := 0
	for st.Next() {
		chunks++
	}
	if err := st.Err(); err != nil || chunks == 0 {
		t.Errorf("OpenAI client against the kept demo: %d chunks, %v", chunks, err)
	}
	curl := regexp.MustCompile(`(?m)^  curl -N .*\\\n.*\n`).FindString(out)
	if curl == "" {
		t.Fatalf("the demo printed no curl line:\n%s", out)
	}
	got, err := exec.CommandContext(sctx, "bash", "-c", curl).CombinedOutput()
	if err != nil || !strings.Contains(string(got), `"model":"dev"`) || !strings.Contains(string(got), "data: [DONE]") {
		t.Errorf("the printed curl line: %v\n%s\n%s", err, curl, got)
	}

	// Ctrl-C ends it and removes its sandbox.
	dir := regexp.MustCompile(`# sandbox (\S+),`).FindStringSubmatch(stderr.String())
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = <-exited
	ended = true
	if err != nil {
		t.Errorf("demo after Ctrl-C: %v", err)
	}
	if dir == nil {
		t.Fatalf("the demo did not say where its sandbox is:\n%s", stderr.String())
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("sandbox %s left behind: %v", dir[1], err)
	}
}
