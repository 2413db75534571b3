package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vagent-dev/vagent/controlapi"
)

// runHost is a configuration with the shipped agents and pipelines and a
// fake vagentd on its control socket that answers runs with events.
type runHost struct {
	config string
	mu     sync.Mutex
	got    []controlapi.RunRequest
	// events are what a follow streams; block, when set, holds the
	// stream open after them until the client goes.
	events []controlapi.RunEvent
	block  bool
}

func newRunHost(t *testing.T) *runHost {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "vagentd.sock")
	main := fmt.Sprintf("[gateway]\ncontrol_socket = %q\n", sock)
	if err := os.WriteFile(filepath.Join(dir, "vagent.toml"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"agents", "pipelines"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob(filepath.Join("..", "configs", sub, "*.toml"))
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, sub, filepath.Base(f)), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := &runHost{config: filepath.Join(dir, "vagent.toml")}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(h.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return h
}

var testRun = controlapi.Run{ID: "run_1", Pipeline: "idea-to-code", Status: controlapi.RunQueued, Inputs: 1,
	Stages: []controlapi.RunStage{{Name: "stories", Agent: "po"}, {Name: "design", Agent: "architect"}}}

func (h *runHost) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == controlapi.PathRuns:
		var req controlapi.RunRequest
		json.NewDecoder(r.Body).Decode(&req)
		h.mu.Lock()
		h.got = append(h.got, req)
		h.mu.Unlock()
		run := testRun
		run.Inputs = len(req.Inputs)
		json.NewEncoder(w).Encode(run)
	case r.URL.Path == controlapi.PathRuns+"/run_1/events":
		enc := json.NewEncoder(w)
		for _, ev := range h.events {
			enc.Encode(ev)
		}
		w.(http.Flusher).Flush()
		if h.block {
			<-r.Context().Done()
		}
	default:
		http.NotFound(w, r)
	}
}

func (h *runHost) run(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(ctx, append([]string{"vagentctl", "--config", h.config, "run"}, args...), &o, &e)
	return o.String(), e.String(), code
}

func ended(status string, done int, dir string) controlapi.RunEvent {
	r := testRun
	r.Status, r.Dir, r.Items = status, dir, map[string]int{"done": done}
	if status == controlapi.RunFailed {
		r.Items["failed"] = 1
		r.Error = "1 of 2 answers failed"
	}
	return controlapi.RunEvent{Type: controlapi.EventRun, Run: &r}
}

// TestRunStreamsEachStageUnderItsHeader: one input's answers stream under
// "## STAGE (AGENT)" and the run directory ends the output.
func TestRunStreamsEachStageUnderItsHeader(t *testing.T) {
	h := newRunHost(t)
	h.events = []controlapi.RunEvent{
		{Type: controlapi.EventRun, Run: &testRun},
		{Type: controlapi.EventStageStart, Stage: "stories", Agent: "po"},
		{Type: controlapi.EventDelta, Stage: "stories", Agent: "po", Text: "As a user, "},
		{Type: controlapi.EventDelta, Stage: "stories", Agent: "po", Text: "I want lists."},
		{Type: controlapi.EventStageDone, Stage: "stories", Agent: "po", Text: "As a user, I want lists.", Tokens: 6},
		{Type: controlapi.EventStageStart, Stage: "design", Agent: "architect"},
		{Type: controlapi.EventDelta, Stage: "design", Agent: "architect", Text: "One table."},
		{Type: controlapi.EventStageDone, Stage: "design", Agent: "architect", Text: "One table.", Tokens: 3},
		ended(controlapi.RunCompleted, 2, "/var/lib/vagent/runs/run_1"),
	}
	stdout, stderr, code := h.run(t, context.Background(), "idea-to-code", "a todo app")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	want := "## stories (po)\n\nAs a user, I want lists.\n\n## design (architect)\n\nOne table.\n\n" +
		"\nrun run_1 completed: 2 of 2 answers\nrun directory: /var/lib/vagent/runs/run_1\n"
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	if len(h.got) != 1 || h.got[0].Pipeline != "idea-to-code" || strings.Join(h.got[0].Inputs, "|") != "a todo app" {
		t.Errorf("submitted %+v", h.got)
	}
}

// TestRunManyInputs prints each answer whole under a header naming its
// input, with a progress line on stderr; a failed run exits 1.
func TestRunManyInputs(t *testing.T) {
	h := newRunHost(t)
	in := filepath.Join(t.TempDir(), "ideas.txt")
	os.WriteFile(in, []byte("# ideas\none\ntwo\n"), 0o644)
	h.events = []controlapi.RunEvent{
		{Type: controlapi.EventStageStart, Input: 1, Stage: "stories", Agent: "po"},
		{Type: controlapi.EventStageStart, Input: 0, Stage: "stories", Agent: "po"},
		{Type: controlapi.EventDelta, Input: 1, Stage: "stories", Agent: "po", Text: "TWO-"},
		{Type: controlapi.EventDelta, Input: 0, Stage: "stories", Agent: "po", Text: "ONE"},
		{Type: controlapi.EventStageDone, Input: 1, Stage: "stories", Agent: "po", Text: "TWO-STORIES", Tokens: 4},
		{Type: controlapi.EventStageFailed, Input: 0, Stage: "stories", Agent: "po", Text: "engine crashed"},
		ended(controlapi.RunFailed, 1, "/d/run_1"),
	}
	stdout, stderr, code := h.run(t, context.Background(), "idea-to-code", "--inputs", in)
	if code != ExitFailure {
		t.Fatalf("exit %d, want 1: %s", code, stderr)
	}
	for _, w := range []string{
		"## stories (po) · input 2/2\n\nTWO-STORIES\n\n",
		"## stories (po) · input 1/2\n\n\n(stories failed for input 1: engine crashed)\n",
		"run run_1 failed: 1 of 2 answers, 1 failed\nrun directory: /d/run_1\n",
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("stdout lacks %q:\n%s", w, stdout)
		}
	}
	for _, w := range []string{"[stories (po): item 1/2", "[stories (po): item 2/2",
		"vagentctl: run run_1 failed: 1 of 2 answers failed\nhint: vagentctl run show run_1 says what ended it"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr)
		}
	}
	if got := h.got[0].Inputs; strings.Join(got, "|") != "one|two" {
		t.Errorf("inputs %q", got)
	}
}

// TestRunInterruptDetaches: Ctrl-C stops following, says how to follow
// again, and leaves the run alone.
func TestRunInterruptDetaches(t *testing.T) {
	h := newRunHost(t)
	h.events = []controlapi.RunEvent{{Type: controlapi.EventStageStart, Stage: "stories", Agent: "po"}, {Type: controlapi.EventDelta, Stage: "stories", Agent: "po", Text: "partial"}}
	h.block = true
	ctx, cancel := context.WithCancel(context.Background())
	var o, e bytes.Buffer
	done := make(chan int)
	go func() {
		done <- Main(ctx, []string{"vagentctl", "--config", h.config, "run", "idea-to-code", "x"}, &syncWriter{w: &o, f: func(s string) {
			if strings.Contains(s, "partial") {
				cancel()
			}
		}}, &e)
	}()
	if code := <-done; code != ExitOK {
		t.Fatalf("exit %d: %s", code, e.String())
	}
	if !strings.Contains(e.String(), "run run_1 goes on.\nfollow it again: vagentctl run follow run_1\n") {
		t.Errorf("stderr:\n%s", e.String())
	}
}

// syncWriter calls f with what was written.
type syncWriter struct {
	w *bytes.Buffer
	f func(string)
}

func (s *syncWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	s.f(s.w.String())
	return n, err
}

// TestRunBadInputsSubmitNothing: an inputs file with a bad line, a
// pipeline naming an unknown agent or a missing stage: each a clear error
// naming file and line, exit 1, and nothing reaches vagentd.
func TestRunBadInputsSubmitNothing(t *testing.T) {
	h := newRunHost(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "ideas.txt")
	os.WriteFile(bad, []byte("fine\n\"unterminated\n"), 0o644)
	pl := filepath.Join(dir, "mine.toml")
	os.WriteFile(pl, []byte("[[stage]]\nname = \"a\"\nagent = \"pm\"\nprompt = \"{{stage \\\"b\\\"}}\"\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"idea-to-code", "--inputs", bad}, "vagentctl: " + bad + ":2: a line starting with '\"' is one JSON string: unexpected end of JSON input\nhint: fix that line; nothing was submitted\n"},
		{[]string{pl, "x"}, "vagentctl: " + pl + ":3: stage.a.agent: unknown agent \"pm\"; the configured agents: architect, dev, po\n" +
			"vagentctl: " + pl + ":4: stage.a.prompt: refers to stage \"b\", which does not exist (it is the first stage: only .Input, .Index and .Count are known here)\n" +
			"hint: fix the lines above; nothing was changed\n"},
		{[]string{"no-such-pipeline", "x"}, "no file"},
	} {
		stdout, stderr, code := h.run(t, context.Background(), tc.args...)
		if code != ExitFailure || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr:\n%s\nwant:\n%s", tc.args, code, stdout, stderr, tc.want)
		}
	}
	if len(h.got) != 0 {
		t.Errorf("submitted %+v", h.got)
	}
}

// TestRunFollowLost: a vagentd that ends the stream before the run (a
// restart) is an error with the way back to the run.
func TestRunFollowLost(t *testing.T) {
	h := newRunHost(t)
	h.events = []controlapi.RunEvent{{Type: controlapi.EventStageStart, Stage: "stories", Agent: "po"}}
	_, stderr, code := h.run(t, context.Background(), "idea-to-code", "x")
	want := "the event stream ended before the run did; see journalctl -u vagentd\nhint: run run_1 is stored and goes on when vagentd is back: vagentctl run follow run_1\n"
	if code != ExitFailure || !strings.HasSuffix(stderr, want) {
		t.Errorf("exit %d, stderr:\n%s\nwant it to end with:\n%s", code, stderr, want)
	}
}
