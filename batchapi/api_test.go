package batchapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// fakeGateway knows keys "alice" (every agent) and "bob" (dev only); the
// agents are architect, dev and po.
type fakeGateway struct{}

func (fakeGateway) Caller(r *http.Request) (string, error) {
	switch r.Header.Get("Authorization") {
	case "Bearer alice":
		return "alice", nil
	case "Bearer bob":
		return "bob", nil
	}
	return "", gateway.Error(http.StatusUnauthorized, "", "invalid API key")
}

func (fakeGateway) AgentFor(caller, model string) (string, error) {
	switch m := strings.ToLower(model); m {
	case "architect", "dev", "po":
		if caller == "bob" && m != "dev" {
			return "", gateway.Error(http.StatusForbidden, "", "key bob may not use agent %s", m)
		}
		return m, nil
	}
	return "", gateway.Error(http.StatusNotFound, "", "The model `%s` does not exist. Available models: architect, dev, po", model)
}

type testAPI struct {
	*API
	store *work.Store
	dir   string
	srv   *httptest.Server
	now   time.Time
}

func newTestAPI(t *testing.T, maxMiB int) *testAPI {
	t.Helper()
	dir := t.TempDir()
	s, err := work.Open(t.Context(), dir, work.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ta := &testAPI{store: s, dir: dir, now: time.Unix(1_800_000_000, 0)}
	ta.API = New(Options{Store: s, Gateway: fakeGateway{}, MaxFileMiB: maxMiB, Now: func() time.Time { return ta.now }})
	ta.srv = httptest.NewServer(ta.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gateway", http.StatusTeapot)
	})))
	t.Cleanup(ta.srv.Close)
	return ta
}

func (ta *testAPI) sdk(key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(ta.srv.URL+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
}

// do sends a request and returns the status and body.
func (ta *testAPI) do(t *testing.T, method, path, key, ctype string, body io.Reader) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, ta.srv.URL+path, body)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// apiError decodes an OpenAI error document.
func apiError(t *testing.T, b []byte) (msg, param string) {
	t.Helper()
	var e struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error: %s (%v)", b, err)
	}
	if e.Error.Param != nil {
		param = *e.Error.Param
	}
	return e.Error.Message, param
}

func (ta *testAPI) upload(t *testing.T, key, content string) *openai.FileObject {
	t.Helper()
	c := ta.sdk(key)
	f, err := c.Files.New(t.Context(), openai.FileNewParams{
		File:    openai.File(strings.NewReader(content), "in.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestSDKFilesAndBatches drives every route with the official SDK: a
// batch whose file has good and bad lines runs the good ones, names each
// bad one by line and field, and ends with output and error files.
func TestSDKFilesAndBatches(t *testing.T) {
	ta := newTestAPI(t, 1)
	ctx := t.Context()
	c := ta.sdk("alice")
	content := strings.Join([]string{
		chatLine("r1", "dev"),
		chatLine("r2", "architect"),
		chatLine("r3", "nope"),
		`{"custom_id":"r4","method":"POST","url":"/v1/completions","body":{"model":"po"}}`,
		chatLine("r5", "po"),
	}, "\n") + "\n"
	f := ta.upload(t, "alice", content)
	if f.Bytes != int64(len(content)) || f.Purpose != "batch" || f.Filename != "in.jsonl" || !strings.HasPrefix(f.ID, "file-") {
		t.Errorf("uploaded %+v", f)
	}
	if got, err := c.Files.Get(ctx, f.ID); err != nil || got.ID != f.ID || got.Bytes != f.Bytes {
		t.Errorf("Files.Get: %+v %v", got, err)
	}
	resp, err := c.Files.Content(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != content {
		t.Errorf("content %q, want %q", b, content)
	}

	batch, err := c.Batches.New(ctx, openai.BatchNewParams{
		InputFileID:      f.ID,
		Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
		Metadata:         map[string]string{"job": "nightly"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if batch.Status != openai.BatchStatusInProgress || batch.InputFileID != f.ID || batch.Metadata["job"] != "nightly" ||
		batch.RequestCounts.Total != 5 || batch.RequestCounts.Failed != 2 || batch.InProgressAt != ta.now.Unix() ||
		batch.ExpiresAt != ta.now.Add(24*time.Hour).Unix() || !strings.HasPrefix(batch.ID, "batch_") {
		t.Errorf("created %+v", batch)
	}
	var errs []string
	for _, e := range batch.Errors.Data {
		errs = append(errs, fmt.Sprintf("%d %s %s", e.Line, e.Param, e.Code))
	}
	if got := strings.Join(errs, "; "); got != "3 body.model model_not_found; 4 url invalid_url" {
		t.Errorf("errors.data: %s", got)
	}
	items, err := ta.store.Items(ctx, batch.ID)
	if err != nil {
		t.Fatal(err)
	}
	var agents []string
	for _, it := range items {
		agents = append(agents, fmt.Sprintf("%d:%s:%s", it.Seq, it.Agent, it.State))
	}
	if got := strings.Join(agents, " "); got != "1:dev:pending 2:architect:pending 3::failed 4::failed 5:po:pending" {
		t.Errorf("items: %s", got)
	}

	// Listing pages through the SDK's auto-pager, newest first.
	for i := 0; i < 2; i++ {
		if _, err := c.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h}); err != nil {
			t.Fatal(err)
		}
	}
	pager := c.Batches.ListAutoPaging(ctx, openai.BatchListParams{Limit: openai.Int(1)})
	var ids []string
	for pager.Next() {
		ids = append(ids, pager.Current().ID)
	}
	if err := pager.Err(); err != nil || len(ids) != 3 || ids[2] != batch.ID {
		t.Errorf("listed %v (%v), want 3 batches ending with %s", ids, err, batch.ID)
	}

	// Cancel: pending lines are cancelled, and once Finished ran the
	// batch is cancelled with an error file.
	got, err := c.Batches.Cancel(ctx, batch.ID)
	if err != nil || got.Status != openai.BatchStatusCancelling || got.CancellingAt != ta.now.Unix() {
		t.Fatalf("cancel: %+v %v", got, err)
	}
	j, _ := ta.store.Job(ctx, batch.ID)
	if err := ta.Kind().Finished(ctx, ta.store, j); err != nil {
		t.Fatal(err)
	}
	got, err = c.Batches.Get(ctx, batch.ID)
	if err != nil || got.Status != openai.BatchStatusCancelled || got.CancelledAt == 0 || got.OutputFileID != "" || got.ErrorFileID == "" ||
		got.RequestCounts.Total != 5 || got.RequestCounts.Completed != 0 || got.RequestCounts.Failed != 2 {
		t.Fatalf("after cancel: %+v %v", got, err)
	}
	lines := ta.content(t, "alice", got.ErrorFileID)
	if len(lines) != 5 || lines[0].Error == nil || lines[0].Error.Code != codeBatchCancelled || *lines[0].CustomID != "r1" ||
		lines[2].Error == nil || lines[2].Error.Code != codeModelNotFound || !strings.Contains(lines[2].Error.Message, "line 3: ") {
		t.Errorf("error file: %+v", lines)
	}
	if _, err := c.Batches.Cancel(ctx, batch.ID); !isStatus(err, http.StatusConflict) {
		t.Errorf("cancelling a cancelled batch: %v, want 409", err)
	}

	if del, err := c.Files.Delete(ctx, f.ID); err != nil || !del.Deleted || del.ID != f.ID {
		t.Errorf("delete: %+v %v", del, err)
	}
	if _, err := c.Files.Get(ctx, f.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("get after delete: %v, want 404", err)
	}
}

func isStatus(err error, status int) bool {
	var ae *openai.Error
	return errors.As(err, &ae) && ae.StatusCode == status
}

// content reads a file of output lines.
func (ta *testAPI) content(t *testing.T, key, id string) []outputLine {
	t.Helper()
	code, b := ta.do(t, http.MethodGet, "/v1/files/"+id+"/content", key, "", nil)
	if code != http.StatusOK {
		t.Fatalf("content of %s: %d %s", id, code, b)
	}
	var out []outputLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var o outputLine
		if err := json.Unmarshal([]byte(l), &o); err != nil {
			t.Fatalf("output line %q: %v", l, err)
		}
		out = append(out, o)
	}
	return out
}

// TestFinishedWritesFiles: answered lines go to the output file in input
// order, the rest to the error file, the counts add up, and a second
// Finished (after a crash) writes nothing again.
func TestFinishedWritesFiles(t *testing.T) {
	ta := newTestAPI(t, 1)
	ctx := t.Context()
	m, _ := json.Marshal(meta{Owner: "alice", Endpoint: "/v1/chat/completions", InputFileID: "file-x", CompletionWindow: "24h"})
	rejected, _ := json.Marshal(outputError{Code: codeInvalidURL, Message: "line 2: url is missing"})
	j, err := ta.store.CreateJob(ctx, work.Job{Kind: Kind, Status: StatusInProgress, Meta: m}, []work.Item{
		{Seq: 3, CustomID: "c", Agent: "po", Path: "/v1/chat/completions", State: work.Done, Status: 200, Response: []byte(`{"id":"chatcmpl-3","model":"po","usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4}}}`)},
		{Seq: 1, CustomID: "a", Agent: "dev", Path: "/v1/chat/completions", State: work.Done, Status: 200, Response: []byte(`{"id":"chatcmpl-1","model":"dev","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}`)},
		{Seq: 2, CustomID: "b", Path: "/v1/chat/completions", State: work.Failed, Error: string(rejected)},
		{Seq: 4, CustomID: "d", Agent: "dev", Path: "/v1/chat/completions", State: work.Failed, Status: 400, Response: []byte(`{"error":{"message":"bad"}}`)},
		{Seq: 5, CustomID: "e", Agent: "dev", Path: "/v1/chat/completions", State: work.Failed, Error: "agent dev failed to start"},
	})
	if err != nil {
		t.Fatal(err)
	}
	k := ta.Kind()
	if err := k.Finished(ctx, ta.store, j); err != nil {
		t.Fatal(err)
	}
	c := ta.sdk("alice")
	got, err := c.Batches.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != openai.BatchStatusCompleted || got.CompletedAt != ta.now.Unix() || got.FinalizingAt != ta.now.Unix() ||
		got.RequestCounts.Total != 5 || got.RequestCounts.Completed != 2 || got.RequestCounts.Failed != 3 {
		t.Errorf("finished batch %+v", got)
	}
	// Usage sums the answered lines' usage.
	if got.Usage.InputTokens != 6 || got.Usage.OutputTokens != 9 || got.Usage.TotalTokens != 15 || got.Usage.InputTokensDetails.CachedTokens != 4 || !got.JSON.Usage.Valid() {
		t.Errorf("usage %+v", got.Usage)
	}
	out := ta.content(t, "alice", got.OutputFileID)
	if len(out) != 2 || *out[0].CustomID != "a" || *out[1].CustomID != "c" || out[0].Response.StatusCode != 200 ||
		!strings.Contains(string(out[0].Response.Body), "chatcmpl-1") || out[0].Error != nil || out[0].ID == out[1].ID {
		t.Errorf("output file: %+v", out)
	}
	errs := ta.content(t, "alice", got.ErrorFileID)
	if len(errs) != 3 || errs[0].Error.Code != codeInvalidURL || errs[1].Response.StatusCode != 400 || errs[1].Error != nil ||
		errs[2].Error.Code != codeRequestFailed || errs[2].Error.Message != "agent dev failed to start" {
		t.Errorf("error file: %+v", errs)
	}
	// Idempotent: the files are not written again.
	if err := k.Finished(ctx, ta.store, j); err != nil {
		t.Fatal(err)
	}
	files, _ := ta.store.Files(ctx, "", "", 0)
	if len(files) != 2 {
		t.Errorf("%d files after a second Finished, want 2", len(files))
	}
	again, _ := c.Batches.Get(ctx, j.ID)
	if again.OutputFileID != got.OutputFileID || again.ErrorFileID != got.ErrorFileID {
		t.Errorf("second Finished changed the files: %s %s", again.OutputFileID, again.ErrorFileID)
	}
}

// TestCreateBatchNoValidLine: a file of nothing valid (or nothing at all)
// makes a failed batch that says why.
func TestCreateBatchNoValidLine(t *testing.T) {
	ta := newTestAPI(t, 1)
	c := ta.sdk("alice")
	for content, code := range map[string]string{"not json\n" + chatLine("x", "gpt-4o") + "\n": codeNoValidRequests, "\n\n": codeEmptyFile} {
		f := ta.upload(t, "alice", content)
		b, err := c.Batches.New(t.Context(), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
		if err != nil {
			t.Fatal(err)
		}
		if b.Status != openai.BatchStatusFailed || b.FailedAt != ta.now.Unix() || len(b.Errors.Data) == 0 ||
			b.Errors.Data[len(b.Errors.Data)-1].Code != code {
			t.Errorf("%q: %+v", content, b)
		}
	}
}

// TestCreateBatchBadRequest: each bad field of POST /v1/batches is a 400
// (404 for a file that is not there) naming the field, and no batch is
// stored.
func TestCreateBatchBadRequest(t *testing.T) {
	ta := newTestAPI(t, 1)
	f := ta.upload(t, "alice", chatLine("a", "dev")+"\n")
	many := map[string]string{}
	for i := range 17 {
		many[fmt.Sprint(i)] = "v"
	}
	for name, tc := range map[string]struct {
		body   map[string]any
		status int
		param  string
	}{
		"no file":        {map[string]any{"endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400, "input_file_id"},
		"unknown file":   {map[string]any{"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404, "input_file_id"},
		"bad endpoint":   {map[string]any{"input_file_id": f.ID, "endpoint": "/v1/embeddings", "completion_window": "24h"}, 400, "endpoint"},
		"bad window":     {map[string]any{"input_file_id": f.ID, "endpoint": "/v1/completions", "completion_window": "1h"}, 400, "completion_window"},
		"many metadata":  {map[string]any{"input_file_id": f.ID, "endpoint": "/v1/completions", "completion_window": "24h", "metadata": many}, 400, "metadata"},
		"wrong type":     {map[string]any{"input_file_id": 7, "endpoint": "/v1/completions", "completion_window": "24h"}, 400, "input_file_id"},
		"another's file": {map[string]any{"input_file_id": f.ID, "endpoint": "/v1/completions", "completion_window": "24h", "as": "bob"}, 404, "input_file_id"},
	} {
		key := "alice"
		if as, ok := tc.body["as"].(string); ok {
			key = as
			delete(tc.body, "as")
		}
		b, _ := json.Marshal(tc.body)
		code, resp := ta.do(t, http.MethodPost, "/v1/batches", key, "application/json", bytes.NewReader(b))
		if code != tc.status {
			t.Errorf("%s: %d %s, want %d", name, code, resp, tc.status)
			continue
		}
		if _, param := apiError(t, resp); param != tc.param {
			t.Errorf("%s: param %q, want %q (%s)", name, param, tc.param, resp)
		}
	}
	if jobs, _ := ta.store.Jobs(t.Context(), "", "", 0); len(jobs) != 0 {
		t.Errorf("%d jobs stored by refused requests", len(jobs))
	}
}

// TestOwnership: a key sees only its own files and batches, as if the
// others' did not exist, and a batch's lines may name only the key's
// agents.
func TestOwnership(t *testing.T) {
	ta := newTestAPI(t, 1)
	ctx := t.Context()
	f := ta.upload(t, "alice", chatLine("a", "dev")+"\n"+chatLine("b", "po")+"\n")
	alice, bob := ta.sdk("alice"), ta.sdk("bob")
	b, err := alice.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Files.Get(ctx, f.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("bob reads alice's file: %v", err)
	}
	if _, err := bob.Files.Content(ctx, f.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("bob reads alice's file content: %v", err)
	}
	if _, err := bob.Files.Delete(ctx, f.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("bob deletes alice's file: %v", err)
	}
	if _, err := bob.Batches.Get(ctx, b.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("bob reads alice's batch: %v", err)
	}
	if _, err := bob.Batches.Cancel(ctx, b.ID); !isStatus(err, http.StatusNotFound) {
		t.Errorf("bob cancels alice's batch: %v", err)
	}
	if l, err := bob.Files.List(ctx, openai.FileListParams{}); err != nil || len(l.Data) != 0 {
		t.Errorf("bob lists files: %+v %v", l, err)
	}
	if l, err := bob.Batches.List(ctx, openai.BatchListParams{}); err != nil || len(l.Data) != 0 {
		t.Errorf("bob lists batches: %+v %v", l, err)
	}
	// The same file uploaded by bob: po is not his.
	g := ta.upload(t, "bob", chatLine("a", "dev")+"\n"+chatLine("b", "po")+"\n")
	bb, err := bob.Batches.New(ctx, openai.BatchNewParams{InputFileID: g.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	if len(bb.Errors.Data) != 1 || bb.Errors.Data[0].Line != 2 || !strings.Contains(bb.Errors.Data[0].Message, "key bob may not use agent po") {
		t.Errorf("bob's batch naming po: %+v", bb.Errors)
	}
	if code, body := ta.do(t, http.MethodGet, "/v1/files", "", "", nil); code != http.StatusUnauthorized {
		t.Errorf("no key: %d %s", code, body)
	}
}

// TestUploadTooLarge: an upload that says it is larger than the limit is
// refused with 413 before its body is read; one that does not say so is
// cut at the limit; neither leaves anything behind.
func TestUploadTooLarge(t *testing.T) {
	ta := newTestAPI(t, 1)
	// A 2 GiB body that would be generated as it is read: the count of
	// bytes the server took shows it stopped at once.
	body := &countingReader{r: io.LimitReader(zeros{}, 2<<30)}
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("purpose", "batch")
	mw.CreateFormFile("file", "big.jsonl")
	head := buf.Len()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, ta.srv.URL+"/v1/files", io.MultiReader(&buf, body))
	req.ContentLength = int64(head) + 2<<30
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bearer alice")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("2 GiB upload: %d %s", resp.StatusCode, b)
	}
	if msg, param := apiError(t, b); !strings.Contains(msg, "1 MiB ([batch] max_file_mib)") || param != "file" {
		t.Errorf("413 says %q (param %q)", msg, param)
	}
	if n := body.n.Load(); n > 64<<20 {
		t.Errorf("the server read %d MiB of a body it refused", n>>20)
	}

	// Chunked (no Content-Length): cut at the limit.
	pr, pw := io.Pipe()
	mw = multipart.NewWriter(pw)
	go func() {
		mw.WriteField("purpose", "batch")
		w, _ := mw.CreateFormFile("file", "big.jsonl")
		line := []byte(chatLine("a", "dev") + "\n")
		for n := 0; n < 3<<20; n += len(line) {
			if _, err := w.Write(line); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		mw.Close()
		pw.Close()
	}()
	code, b := ta.do(t, http.MethodPost, "/v1/files", "alice", mw.FormDataContentType(), pr)
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked 3 MiB upload: %d %s", code, b)
	}
	pr.Close()
	files, _ := ta.store.Files(t.Context(), "", "", 0)
	ents, _ := os.ReadDir(filepath.Join(ta.dir, work.FilesDir))
	if len(files) != 0 || len(ents) != 0 {
		t.Errorf("left behind: %d files, %d entries on disk", len(files), len(ents))
	}
}

// TestUploadBodyTimeout: an upload that stalls is answered 408 naming
// gateway.body_timeout once the bound passes, and nothing is stored.
func TestUploadBodyTimeout(t *testing.T) {
	ta := newTestAPI(t, 1)
	ta.o.BodyTimeout = 100 * time.Millisecond
	pr, pw := io.Pipe()
	defer pw.Close()
	mw := multipart.NewWriter(pw)
	go func() {
		mw.WriteField("purpose", "batch")
		w, _ := mw.CreateFormFile("file", "slow.jsonl")
		w.Write([]byte(chatLine("a", "dev") + "\n"))
		// ... and nothing more: the client stalls.
	}()
	code, b := ta.do(t, http.MethodPost, "/v1/files", "alice", mw.FormDataContentType(), pr)
	if code != http.StatusRequestTimeout {
		t.Fatalf("stalled upload: %d %s", code, b)
	}
	if msg, _ := apiError(t, b); !strings.Contains(msg, "within 100ms (gateway.body_timeout)") {
		t.Errorf("408 says %q", msg)
	}
	files, _ := ta.store.Files(t.Context(), "", "", 0)
	ents, _ := os.ReadDir(filepath.Join(ta.dir, work.FilesDir))
	if len(files) != 0 || len(ents) != 0 {
		t.Errorf("left behind: %d files, %d entries on disk", len(files), len(ents))
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

type countingReader struct {
	r io.Reader
	n atomic.Int64 // read by the test while the client may still send
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestUploadBadForm: an upload without a file, with another purpose, or
// not multipart is a 400/415 naming the field, and stores nothing.
func TestUploadBadForm(t *testing.T) {
	ta := newTestAPI(t, 1)
	form := func(fields map[string]string, file bool) (string, io.Reader) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		name := "in.jsonl"
		if n, ok := fields["name"]; ok {
			name = n
			delete(fields, "name")
		}
		if file {
			w, _ := mw.CreateFormFile("file", name)
			w.Write([]byte(chatLine("a", "dev") + "\n"))
		}
		for k, v := range fields {
			mw.WriteField(k, v)
		}
		mw.Close()
		return mw.FormDataContentType(), &buf
	}
	for name, tc := range map[string]struct {
		fields map[string]string
		file   bool
		param  string
	}{
		"no file":       {map[string]string{"purpose": "batch"}, false, "file"},
		"no purpose":    {nil, true, "purpose"},
		"other purpose": {map[string]string{"purpose": "fine-tune"}, true, "purpose"},
		"long name":     {map[string]string{"purpose": "batch", "name": strings.Repeat("n", 300)}, true, "file"},
	} {
		ct, body := form(tc.fields, tc.file)
		code, b := ta.do(t, http.MethodPost, "/v1/files", "alice", ct, body)
		if code != http.StatusBadRequest {
			t.Errorf("%s: %d %s", name, code, b)
			continue
		}
		if _, param := apiError(t, b); param != tc.param {
			t.Errorf("%s: param %q, want %q", name, param, tc.param)
		}
	}
	if code, b := ta.do(t, http.MethodPost, "/v1/files", "alice", "application/json", strings.NewReader("{}")); code != http.StatusUnsupportedMediaType {
		t.Errorf("JSON upload: %d %s", code, b)
	}
	if files, _ := ta.store.Files(t.Context(), "", "", 0); len(files) != 0 {
		t.Errorf("%d files stored by refused uploads", len(files))
	}
}

// TestRoutes: other paths go to the gateway; a wrong method or an unknown
// route under the Batch API gets OpenAI's error shape.
func TestRoutes(t *testing.T) {
	ta := newTestAPI(t, 1)
	if code, _ := ta.do(t, http.MethodPost, "/v1/chat/completions", "alice", "", nil); code != http.StatusTeapot {
		t.Errorf("/v1/chat/completions: %d, want the gateway's", code)
	}
	code, b := ta.do(t, http.MethodPut, "/v1/batches", "alice", "", nil)
	if code != http.StatusMethodNotAllowed {
		t.Errorf("PUT /v1/batches: %d", code)
	}
	apiError(t, b)
	code, b = ta.do(t, http.MethodGet, "/v1/batches/x/y/z", "alice", "", nil)
	if code != http.StatusNotFound {
		t.Errorf("GET /v1/batches/x/y/z: %d", code)
	}
	apiError(t, b)
	if code, b := ta.do(t, http.MethodGet, "/v1/files?limit=0", "alice", "", nil); code != http.StatusBadRequest {
		t.Errorf("limit=0: %d %s", code, b)
	}
}

// TestStoreErrorDiskFull: a full disk is a 507 that says so, not a bare
// 500.
func TestStoreErrorDiskFull(t *testing.T) {
	err := storeError("store the upload", fmt.Errorf("store file in.jsonl: write: %w", syscall.ENOSPC))
	var ae *gateway.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusInsufficientStorage || !strings.Contains(ae.Message, "disk is full; nothing was stored") {
		t.Errorf("%v", err)
	}
}
