package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/work"
)

// TestE2EBatchSDK: the official OpenAI Go SDK runs a batch unchanged
// against vagentd. Its lines name the three agents in turn, and two lines
// are bad (an unknown model, another endpoint): the batch completes with
// one correct output line per valid line (custom_id, status 200, a chat
// completion from the agent the line named), the bad lines in its errors
// and its error file, and the agents switched about once each, not once
// per line. A 2 GiB upload is refused with 413 before its body is sent.
func TestE2EBatchSDK(t *testing.T) {
	g := newGatewayHost(t, nil)
	ctx := t.Context()
	client := g.sdk("")

	agents := []string{"architect", "dev", "po"}
	var in bytes.Buffer
	want := map[string]string{} // custom_id -> agent
	for i := range 12 {
		a := agents[i%3]
		id := fmt.Sprintf("req-%02d", i)
		want[id] = a
		fmt.Fprintf(&in, `{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"Item %d."}],"max_tokens":4}}`+"\n", id, a, i)
	}
	in.WriteString(`{"custom_id":"bad-model","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[]}}` + "\n")
	in.WriteString(`{"custom_id":"bad-url","method":"POST","url":"/v1/embeddings","body":{"model":"dev","input":"x"}}` + "\n")

	f, err := client.Files.New(ctx, openai.FileNewParams{
		File:    openai.File(bytes.NewReader(in.Bytes()), "work.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatal(err)
	}
	switchesBefore, _ := g.metric("vagent_switches_total")
	b, err := client.Batches.New(ctx, openai.BatchNewParams{
		InputFileID:      f.ID,
		Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
	})
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	for _, e := range b.Errors.Data {
		problems = append(problems, fmt.Sprintf("%d:%s:%s", e.Line, e.Param, e.Code))
	}
	if got := strings.Join(problems, " "); got != "13:body.model:model_not_found 14:url:invalid_url" {
		t.Errorf("errors.data: %s", got)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for b.Status != openai.BatchStatusCompleted {
		if b.Status != openai.BatchStatusInProgress && b.Status != openai.BatchStatusFinalizing {
			t.Fatalf("batch %s is %s: %+v", b.ID, b.Status, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("batch not completed after 3 minutes: %+v", b.RequestCounts)
		}
		time.Sleep(200 * time.Millisecond)
		if b, err = client.Batches.Get(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	switches, _ := g.metric("vagent_switches_total")
	switches -= switchesBefore
	fmt.Printf("batch e2e: 12 lines over 3 agents in turn: %.0f switches; requests: %d total, %d completed, %d failed\n", switches, b.RequestCounts.Total, b.RequestCounts.Completed, b.RequestCounts.Failed)
	if b.RequestCounts.Total != 14 || b.RequestCounts.Completed != 12 || b.RequestCounts.Failed != 2 {
		t.Errorf("request counts %+v, want 14 total, 12 completed, 2 failed", b.RequestCounts)
	}
	if switches > 4 {
		t.Errorf("%.0f switches for a batch over 3 agents: not grouped by agent (a switch per line would be 12)", switches)
	}

	resp, err := client.Files.Content(ctx, b.OutputFileID)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 12 {
		t.Fatalf("output file has %d lines, want 12:\n%s", len(lines), out)
	}
	seen := map[string]bool{}
	for _, l := range lines {
		var o struct {
			ID       string `json:"id"`
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int                   `json:"status_code"`
				Body       openai.ChatCompletion `json:"body"`
			} `json:"response"`
			Error any `json:"error"`
		}
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("output line %s: %v", l, err)
		}
		agent, ok := want[o.CustomID]
		switch {
		case !ok || seen[o.CustomID]:
			t.Errorf("output line for custom_id %q: unknown or repeated", o.CustomID)
		case o.Response.StatusCode != 200 || o.Error != nil:
			t.Errorf("%s: status %d, error %v", o.CustomID, o.Response.StatusCode, o.Error)
		case o.Response.Body.Object != "chat.completion" || o.Response.Body.Model != agent || len(o.Response.Body.Choices) == 0:
			t.Errorf("%s: body from %q (%s), want a chat completion from %s", o.CustomID, o.Response.Body.Model, o.Response.Body.Object, agent)
		}
		seen[o.CustomID] = true
	}

	resp, err = client.Files.Content(ctx, b.ErrorFileID)
	if err != nil {
		t.Fatal(err)
	}
	errOut, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(errOut), `"custom_id":"bad-model"`) || !strings.Contains(string(errOut), `"custom_id":"bad-url"`) ||
		strings.Count(strings.TrimSpace(string(errOut)), "\n") != 1 {
		t.Errorf("error file:\n%s", errOut)
	}

	// A 2 GiB upload, declared: refused at once, the body never sent.
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	mw.WriteField("purpose", "batch")
	mw.CreateFormFile("file", "huge.jsonl")
	sent := &countingBody{}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/v1/files", io.MultiReader(&head, io.LimitReader(sent, 2<<30)))
	req.ContentLength = int64(head.Len()) + 2<<30
	req.Header.Set("Content-Type", mw.FormDataContentType())
	big, err := g.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(big.Body)
	big.Body.Close()
	if big.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(body), "max_file_mib") {
		t.Errorf("2 GiB upload: %d %s", big.StatusCode, body)
	}
	if n := sent.n.Load(); n > 64<<20 {
		t.Errorf("the client sent %d MiB of a refused upload", n>>20)
	}
	if l, err := client.Files.List(ctx, openai.FileListParams{}); err != nil || len(l.Data) != 3 {
		t.Errorf("files after the refused upload: %v (%v), want the input, output and error files", l, err)
	}
}

// countingBody is an endless body of zeros that counts what was read.
type countingBody struct{ n atomic.Int64 }

func (c *countingBody) Read(p []byte) (int, error) {
	clear(p)
	c.n.Add(int64(len(p)))
	return len(p), nil
}

// TestE2EBatchSurvivesKills: a batch created through the SDK and a run of
// the shipped pipeline run together while vagentd is SIGKILLed three times;
// both complete with every item delivered by an engine exactly once
// (counted at the engines), the batch with one output line per input line
// and its output file written once, the run with its run directory; a
// reader of the database never sees a torn state.
func TestE2EBatchSurvivesKills(t *testing.T) {
	w := newWorkHost(t, map[string]any{"work.concurrency": 4})
	ctx := t.Context()
	client := w.sdk("")
	ideas := pipelineIdeas[:4]
	inputs := w.s.Path("ideas.txt")
	if err := os.WriteFile(inputs, []byte(strings.Join(ideas, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code, err := w.s.Exec(ctx, "vagentctl", "run", "idea-to-code", "--inputs", inputs, "--detach", "--json")
	if err != nil || code != 0 {
		t.Fatalf("vagentctl run --detach: exit %d %v\n%s%s", code, err, stdout, stderr)
	}
	var run controlapi.Run
	if err := json.Unmarshal([]byte(stdout), &run); err != nil || run.ID == "" {
		t.Fatalf("vagentctl run --detach --json: %v\n%s", err, stdout)
	}
	runItems := len(ideas) * 3
	var in bytes.Buffer
	const lines = 12
	for i := range lines {
		// 150 tokens at the simulator's 100/s: 1.5 s a request.
		fmt.Fprintf(&in, `{"custom_id":"line-%d","method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"Item %d."}],"max_tokens":150,"ignore_eos":true}}`+"\n",
			i, []string{"po", "architect", "dev"}[i%3], i)
	}
	f, err := client.Files.New(ctx, openai.FileNewParams{File: openai.File(bytes.NewReader(in.Bytes()), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	b, err := client.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	readCtx, stopReading := context.WithCancel(ctx)
	var readers sync.WaitGroup
	torn := map[string]*tornReader{b.ID: {}, run.ID: {}}
	for job, n := range map[string]int{b.ID: lines, run.ID: runItems} {
		readers.Add(1)
		go func() {
			defer readers.Done()
			torn[job].run(readCtx, t, w.store.Path(), job, n)
		}()
	}
	doneCount := func() int {
		j, err := w.store.Job(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		return j.Counts["done"]
	}
	for _, after := range []int{1, 4, 8} {
		eventually(t, 2*time.Minute, fmt.Sprintf("%d requests done", after), func() bool { return doneCount() >= after })
		// Kill while requests are in flight, once every answer an engine
		// delivered is recorded.
		time.Sleep(700 * time.Millisecond)
		eventually(t, 30*time.Second, "every delivered answer recorded", func() bool {
			n := 0
			for _, c := range w.delivered(t, b.ID) {
				n += c
			}
			return n == doneCount()
		})
		props, err := w.unitProps(ctx, gatewayUnit)
		if err != nil || props.MainPID == 0 {
			t.Fatalf("vagentd's main PID: %+v %v", props, err)
		}
		if done := doneCount(); done >= lines {
			t.Fatalf("the batch ended before kill %d: make its requests longer", after)
		}
		if _, errOut, code, err := w.s.Exec(ctx, "kill", "-9", strconv.Itoa(props.MainPID)); err != nil || code != 0 {
			t.Fatalf("kill -9 vagentd: %v %s", err, errOut)
		}
		eventually(t, 30*time.Second, "vagentd restarted", func() bool {
			p, err := w.unitProps(ctx, gatewayUnit)
			return err == nil && p.ActiveState == "active" && p.MainPID != 0 && p.MainPID != props.MainPID
		})
		w.waitHealthy(10 * time.Second)
	}
	eventually(t, 3*time.Minute, "the batch completed", func() bool {
		b, err = client.Batches.Get(ctx, b.ID)
		return err == nil && b.Status == openai.BatchStatusCompleted
	})
	if b.RequestCounts.Total != lines || b.RequestCounts.Completed != lines || b.ErrorFileID != "" {
		t.Errorf("after three kills: %+v, error file %q", b.RequestCounts, b.ErrorFileID)
	}
	resp, err := client.Files.Content(ctx, b.OutputFileID)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	seen := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var o struct {
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int `json:"status_code"`
			} `json:"response"`
		}
		if err := json.Unmarshal([]byte(l), &o); err != nil || o.Response.StatusCode != 200 {
			t.Errorf("output line %s (%v)", l, err)
		}
		seen[o.CustomID]++
	}
	for i := range lines {
		if n := seen[fmt.Sprint("line-", i)]; n != 1 {
			t.Errorf("line-%d is in the output file %d times", i, n)
		}
	}
	items, err := w.store.Items(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	delivered := w.delivered(t, b.ID)
	sends := 0
	for _, it := range items {
		sends += it.Attempts
		if n := delivered[it.ID]; n != 1 {
			t.Errorf("%s was delivered by the engines %d times, want exactly once", it.CustomID, n)
		}
	}
	outputs, err := client.Files.List(ctx, openai.FileListParams{Purpose: openai.String("batch_output")})
	if err != nil || len(outputs.Data) != 1 {
		t.Errorf("output files: %v (%v), want exactly one", outputs, err)
	}
	eventually(t, 3*time.Minute, "the pipeline run completed", func() bool {
		j, err := w.store.Job(ctx, run.ID)
		return err == nil && j.Finalized
	})
	runDelivered := w.delivered(t, run.ID)
	runIts, err := w.store.Items(ctx, run.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(runIts) != runItems {
		t.Errorf("the run has %d items, want %d", len(runIts), runItems)
	}
	for _, it := range runIts {
		if it.State != work.Done {
			t.Errorf("run item %d (input %d, stage %d): %s %s", it.ID, it.Seq, it.Stage, it.State, it.Error)
		}
		if n := runDelivered[it.ID]; n != 1 {
			t.Errorf("run item %d (input %d, stage %d) was delivered by the engines %d times, want exactly once", it.ID, it.Seq, it.Stage, n)
		}
	}
	stopReading()
	readers.Wait()
	for job, r := range torn {
		r.mu.Lock()
		if len(r.problems) > 0 {
			t.Errorf("a reader of the database saw torn state of %s in %d of %d reads: %v", job, len(r.problems), r.reads, r.problems[:min(5, len(r.problems))])
		}
		if r.reads == 0 {
			t.Errorf("the reader of %s never read the database", job)
		}
		r.mu.Unlock()
	}
	runSends := 0
	for _, it := range runIts {
		runSends += it.Attempts
	}
	t.Logf("3 SIGKILLs: the batch's %d requests took %d sends, the pipeline run's %d items %d sends; each delivered once", lines, sends, runItems, runSends)
	if sends+runSends <= lines+runItems {
		t.Errorf("%d sends for %d requests: no kill cut a request in flight, so the test proved nothing", sends+runSends, lines+runItems)
	}
}
