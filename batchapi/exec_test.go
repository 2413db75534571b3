package batchapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/vagent-dev/vagent/work"
)

// TestCancelWithExecutor: a batch cancelled while one of its requests
// runs is cancelling until that request ends, then cancelled, with that
// answer in the output file and every request that never ran in the
// error file as batch_cancelled.
func TestCancelWithExecutor(t *testing.T) {
	ta := newTestAPI(t, 1)
	ctx := t.Context()
	arrived, release := make(chan struct{}, 8), make(chan struct{})
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","model":"dev","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
	})
	ex := work.NewExecutor(ta.store, work.Target{Handler: engine, Load: func() []work.AgentLoad {
		return []work.AgentLoad{{Agent: "dev", Running: true}}
	}}, work.ExecOptions{Concurrency: 1, Poll: 5 * time.Millisecond})
	ex.Register(Kind, ta.Kind())
	ta.o.Notify = ex.Notify
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ex.Run(runCtx) }()
	defer func() { stop(); <-done }()

	var in strings.Builder
	for i := range 4 {
		in.WriteString(chatLine(fmt.Sprint("r", i), "dev") + "\n")
	}
	f := ta.upload(t, "alice", in.String())
	c := ta.sdk("alice")
	b, err := c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	<-arrived // the first request runs, and holds the only slot
	b, err = c.Batches.Cancel(ctx, b.ID)
	if err != nil || b.Status != openai.BatchStatusCancelling {
		t.Fatalf("cancel: %+v %v", b, err)
	}
	if b, err = c.Batches.Get(ctx, b.ID); err != nil || b.Status != openai.BatchStatusCancelling {
		t.Fatalf("while its request runs: %s %v", b.Status, err)
	}
	close(release)
	for b.Status == openai.BatchStatusCancelling {
		time.Sleep(5 * time.Millisecond)
		if b, err = c.Batches.Get(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	if b.Status != openai.BatchStatusCancelled || b.CancelledAt == 0 || b.RequestCounts.Total != 4 ||
		b.RequestCounts.Completed != 1 || b.RequestCounts.Failed != 0 {
		t.Fatalf("after the cancel: %s %+v", b.Status, b.RequestCounts)
	}
	out := ta.content(t, "alice", b.OutputFileID)
	if len(out) != 1 || *out[0].CustomID != "r0" || out[0].Response.StatusCode != 200 {
		t.Errorf("output file: %+v", out)
	}
	errs := ta.content(t, "alice", b.ErrorFileID)
	if len(errs) != 3 {
		t.Fatalf("error file has %d lines, want 3", len(errs))
	}
	for i, e := range errs {
		if e.Error == nil || e.Error.Code != codeBatchCancelled || *e.CustomID != fmt.Sprint("r", i+1) {
			t.Errorf("error line %d: %+v", i, e)
		}
	}
	if len(arrived) != 0 {
		t.Errorf("%d cancelled requests were sent anyway", len(arrived))
	}
}
