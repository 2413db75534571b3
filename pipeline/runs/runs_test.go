package runs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/pipeline"
	"github.com/vagent-dev/vagent/work"
)

// fakeExec records notifications and hands out the events a test sends.
type fakeExec struct {
	mu       sync.Mutex
	notified int
	subs     map[string][]chan work.Event
}

func (f *fakeExec) Notify() { f.mu.Lock(); f.notified++; f.mu.Unlock() }

func (f *fakeExec) Subscribe(id string) (<-chan work.Event, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subs == nil {
		f.subs = map[string][]chan work.Event{}
	}
	ch := make(chan work.Event, 64)
	f.subs[id] = append(f.subs[id], ch)
	return ch, func() {}
}

func (f *fakeExec) send(ev work.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.subs[ev.JobID] {
		ch <- ev
	}
}

func (f *fakeExec) subscribers(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs[id])
}

type env struct {
	cfg   *config.Config
	store *work.Store
	exec  *fakeExec
	runs  *Runs
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg, err := config.Load("../../configs/vagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Paths.StateDir = t.TempDir()
	st, err := work.Open(context.Background(), filepath.Join(cfg.Paths.StateDir, "work"), work.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ex := &fakeExec{}
	return &env{cfg: cfg, store: st, exec: ex, runs: New(Options{Config: cfg, Store: st, Exec: ex})}
}

func answer(content string, tokens int) []byte {
	b, _ := json.Marshal(map[string]any{
		"object":  "chat.completion",
		"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": content}, "finish_reason": "stop"}},
		"usage":   map[string]any{"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens},
	})
	return b
}

func TestSubmitStoresOneItemPerInputAndStage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	run, err := e.runs.Submit(ctx, controlapi.RunRequest{Pipeline: "idea-to-code", Inputs: []string{"a todo app", "a chess clock"}})
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != controlapi.RunQueued || run.Inputs != 2 || len(run.Stages) != 3 || run.Items["pending"] != 6 {
		t.Fatalf("run %+v", run)
	}
	if e.exec.notified != 1 {
		t.Errorf("executor notified %d times", e.exec.notified)
	}
	items, err := e.store.Items(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[[2]int]work.Item{}
	for _, it := range items {
		byKey[[2]int{it.Seq, it.Stage}] = it
	}
	agents := []string{"po", "architect", "dev"}
	for in := 0; in < 2; in++ {
		for k := 0; k < 3; k++ {
			it, ok := byKey[[2]int{in, k}]
			if !ok {
				t.Fatalf("no item for input %d stage %d", in, k)
			}
			if it.Agent != agents[k] || it.Path != ChatPath || it.Body != nil {
				t.Errorf("input %d stage %d: %+v", in, k, it)
			}
			want := int64(0)
			if k > 0 {
				want = byKey[[2]int{in, k - 1}].ID
			}
			if it.After != want {
				t.Errorf("input %d stage %d waits for item %d, want %d", in, k, it.After, want)
			}
		}
	}
}

func TestSubmitRefusesBadInputAndStoresNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	bad := "[[stage]]\nname = \"a\"\nagent = \"po\"\nprompt = \"{{.Input}}\"\n\n[[stage]]\nname = \"b\"\nagent = \"pm\"\nprompt = \"\"\"\n{{stage \"c\"}}\n\"\"\"\n"
	for _, tc := range []struct {
		req  controlapi.RunRequest
		want string
	}{
		{controlapi.RunRequest{Pipeline: "nope", Inputs: []string{"x"}}, "no file"},
		{controlapi.RunRequest{File: "mine.toml", Contents: bad, Inputs: []string{"x"}},
			"mine.toml:8: stage.b.agent: unknown agent \"pm\"; the configured agents: architect, dev, po\n" +
				"mine.toml:10: stage.b.prompt: refers to stage \"c\", which does not exist; the stages before it: a"},
		{controlapi.RunRequest{Pipeline: "idea-to-code"}, `missing "inputs"`},
		{controlapi.RunRequest{Pipeline: "idea-to-code", Inputs: []string{"ok", " "}}, "inputs[1] is empty"},
		{controlapi.RunRequest{Inputs: []string{"x"}}, `missing "pipeline"`},
	} {
		_, err := e.runs.Submit(ctx, tc.req)
		var br *BadRequest
		if !errors.As(err, &br) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a bad request with %q", tc.req, err, tc.want)
		}
	}
	if js, _ := e.store.Jobs(ctx, "", "", 0); len(js) != 0 {
		t.Errorf("stored %d jobs", len(js))
	}
	if e.exec.notified != 0 {
		t.Errorf("executor notified")
	}
}

// job stores a run of the shipped pipeline with the given item states for
// one input ("stories" done, the rest as given).
func (e *env) job(t *testing.T, inputs []string, states [][]work.ItemState) work.Job {
	t.Helper()
	pl, err := pipeline.Load(e.cfg, "idea-to-code")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(meta{Pipeline: pl, Inputs: inputs})
	items := Items(pl, len(inputs))
	for i := range items {
		st := states[items[i].Seq][items[i].Stage]
		items[i].State = st
		switch st {
		case work.Done:
			items[i].Status = 200
			items[i].Response = answer(strings.ToUpper(pl.Stages[items[i].Stage].Name)+" OF "+inputs[items[i].Seq], 7)
		case work.Failed:
			items[i].Error = "engine said no"
		}
	}
	j, err := e.store.CreateJob(context.Background(), work.Job{Kind: Kind, Meta: m}, items)
	if err != nil {
		t.Fatal(err)
	}
	j, err = e.store.Job(context.Background(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestPrepareRendersFromEarlierAnswers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	j := e.job(t, []string{"a todo app", "a chess clock"}, [][]work.ItemState{
		{work.Done, work.Done, work.Pending},
		{work.Done, work.Pending, work.Pending},
	})
	items, _ := e.store.Items(ctx, j.ID)
	var code work.Item
	for _, it := range items {
		if it.Seq == 0 && it.Stage == 2 {
			code = it
		}
	}
	body, err := e.runs.Prepare(ctx, e.store, j, code)
	if err != nil {
		t.Fatal(err)
	}
	var req chatRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	if req.Model != "dev" || !req.Stream || req.MaxTokens != 2048 || len(req.Messages) != 1 {
		t.Fatalf("request %s", body)
	}
	p := req.Messages[0].Content
	if !strings.Contains(p, "STORIES OF a todo app") || !strings.Contains(p, "DESIGN OF a todo app") || strings.Contains(p, "chess") {
		t.Errorf("prompt does not hold this input's earlier answers:\n%s", p)
	}
}

func TestFinishedWritesTheRunDirectory(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	j := e.job(t, []string{"a todo app", "two\nlines"}, [][]work.ItemState{
		{work.Done, work.Done, work.Done},
		{work.Done, work.Failed, work.Failed},
	})
	if err := e.runs.Finished(ctx, e.store, j); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.cfg.RunsDir(), j.ID)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
		if fi, _ := en.Info(); fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v, want 0640", en.Name(), fi.Mode().Perm())
		}
	}
	want := "1-code.md 1-design.md 1-stories.md 2-stories.md run.jsonl"
	if strings.Join(names, " ") != want {
		t.Fatalf("run directory holds %q, want %q", names, want)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o750 {
		t.Errorf("run directory mode %v", fi.Mode().Perm())
	}
	md, _ := os.ReadFile(filepath.Join(dir, "2-stories.md"))
	if !strings.HasPrefix(string(md), "# stories (po): input 2 of 2\n\n> two\n> lines\n") || !strings.Contains(string(md), "STORIES OF two\nlines") {
		t.Errorf("2-stories.md:\n%s", md)
	}
	data, _ := os.ReadFile(filepath.Join(dir, JSONLName))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 6 {
		t.Fatalf("run.jsonl has %d lines", len(lines))
	}
	var l Line
	if err := json.Unmarshal([]byte(lines[4]), &l); err != nil {
		t.Fatal(err)
	}
	if l.Input != 2 || l.Stage != "design" || l.State != "failed" || l.Error != "engine said no" || l.File != "" {
		t.Errorf("line 5: %+v", l)
	}
	run, err := e.runs.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if run.Status != controlapi.RunFailed || run.Dir != dir || run.Error != "2 of 6 answers failed" {
		t.Errorf("run %+v", run)
	}
	// Again (after a crash before the executor recorded it): the same
	// directory, untouched.
	before, _ := os.Stat(filepath.Join(dir, JSONLName))
	if err := e.runs.Finished(ctx, e.store, j); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(dir, JSONLName))
	if !os.SameFile(before, after) {
		t.Error("a second Finished rewrote the run directory")
	}
	if left, _ := filepath.Glob(filepath.Join(e.cfg.RunsDir(), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestFinishedFailureLeavesNoDirectory: a run directory that cannot be
// written leaves nothing half-written, and the run says why.
func TestFinishedFailureLeavesNoDirectory(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	j := e.job(t, []string{"x"}, [][]work.ItemState{{work.Done, work.Done, work.Done}})
	// A file where the runs directory should be.
	if err := os.WriteFile(e.cfg.RunsDir(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.runs.Finished(ctx, e.store, j); err == nil {
		t.Fatal("Finished succeeded")
	}
	run, _ := e.runs.Get(ctx, j.ID)
	if run.Dir != "" || !strings.Contains(run.Error, "run directory") || controlapi.RunEnded(run.Status) {
		t.Errorf("run %+v", run)
	}
}

func TestPauseResumeCancel(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	run, err := e.runs.Submit(ctx, controlapi.RunRequest{Pipeline: "idea-to-code", Inputs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := e.runs.Pause(ctx, run.ID, true); err != nil || r.Status != controlapi.RunPaused {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if r, err := e.runs.Pause(ctx, run.ID, false); err != nil || r.Status != controlapi.RunQueued {
		t.Fatalf("resume: %+v %v", r, err)
	}
	if r, err := e.runs.Cancel(ctx, run.ID); err != nil || r.Items["cancelled"] != 3 {
		t.Fatalf("cancel: %+v %v", r, err)
	}
	if _, err := e.runs.Pause(ctx, run.ID, true); !errors.Is(err, ErrEnded) {
		t.Fatalf("pause after cancel: %v", err)
	}
	if _, err := e.runs.Get(ctx, "run_nope"); !errors.Is(err, work.ErrNotFound) {
		t.Fatalf("unknown run: %v", err)
	}
}

// TestEventsStream follows a run over HTTP: the run, the answers already
// done (whole), live events as the executor sends them, and the run last
// once it has ended.
func TestEventsStream(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	j := e.job(t, []string{"a"}, [][]work.ItemState{{work.Done, work.Pending, work.Pending}})
	srv := httptest.NewServer(e.runs)
	defer srv.Close()
	resp, err := http.Get(srv.URL + controlapi.PathRuns + "/" + j.ID + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	next := func() controlapi.RunEvent {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		var ev controlapi.RunEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatal(err)
		}
		return ev
	}
	if ev := next(); ev.Type != controlapi.EventRun || ev.Run.Status != controlapi.RunRunning {
		t.Fatalf("first event %+v", ev)
	}
	if ev := next(); ev.Type != controlapi.EventStageDone || ev.Stage != "stories" || ev.Text != "STORIES OF a" || ev.Tokens != 7 {
		t.Fatalf("done event %+v", ev)
	}
	if e.exec.subscribers(j.ID) != 1 {
		t.Fatal("not subscribed")
	}
	// What the channel still held of an item the snapshot showed ended
	// is not told again.
	first, _ := e.store.Items(ctx, j.ID)
	e.exec.send(work.Event{JobID: j.ID, ItemID: first[0].ID, Type: work.EventDelta, Seq: 0, Stage: 0, Agent: "po", Text: "late"})
	e.exec.send(work.Event{JobID: j.ID, ItemID: first[0].ID, Type: work.EventDone, Seq: 0, Stage: 0, Agent: "po"})
	e.exec.send(work.Event{JobID: j.ID, ItemID: first[1].ID, Type: work.EventStart, Seq: 0, Stage: 1, Agent: "architect"})
	if ev := next(); ev.Type != controlapi.EventStageStart || ev.Stage != "design" || ev.Agent != "architect" {
		t.Fatalf("start event %+v", ev)
	}
	e.exec.send(work.Event{JobID: j.ID, ItemID: first[1].ID, Type: work.EventDelta, Seq: 0, Stage: 1, Agent: "architect", Text: "hel"})
	if ev := next(); ev.Type != controlapi.EventDelta || ev.Text != "hel" || ev.Stage != "design" {
		t.Fatalf("delta %+v", ev)
	}
	// The run ends: cancelled while design runs, which then fails.
	if err := e.store.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	items, _ := e.store.Items(ctx, j.ID)
	if err := e.runs.Finished(ctx, e.store, j); err != nil {
		t.Fatal(err)
	}
	e.exec.send(work.Event{JobID: j.ID, ItemID: items[1].ID, Type: work.EventFailed, Seq: 0, Stage: 1, Agent: "architect", Text: "cut"})
	ev := next()
	if ev.Type != controlapi.EventStageFailed || ev.Stage != "design" {
		t.Fatalf("failed event %+v", ev)
	}
	ev = next()
	if ev.Type != controlapi.EventRun || ev.Run.Dir == "" {
		t.Fatalf("last event %+v", ev)
	}
	if sc.Scan() {
		t.Fatalf("more after the run ended: %s", sc.Text())
	}
}
