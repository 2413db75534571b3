package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestRunServesBatchAPI: vagentd serves the Batch API on its main
// endpoint behind the keys file, runs a batch through the executor and the
// gateway to the engine (with the engine's key), and keeps each key's
// files and batches to itself.
func TestRunServesBatchAPI(t *testing.T) {
	cfg, key := testConfig(t)
	keys := filepath.Join(t.TempDir(), "keys.toml")
	if err := os.WriteFile(keys, []byte(`[[key]]
name = "alice"
key = "sk-alice-0123456789abcdef"
agents = ["dev"]

[[key]]
name = "bob"
key = "sk-bob-0123456789abcdef01"
agents = ["*"]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Gateway.KeysFile = keys
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"dev","choices":[{"index":0,"message":{"role":"assistant","content":"done"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`)
	}))
	defer engine.Close()
	cfg.Agent("dev").Port = engine.Listener.Addr().(*net.TCPAddr).Port
	sd := &fakeSystemd{active: map[string]bool{"vagent@dev.service": true}}

	ready := make(chan net.Addr, 1)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{Systemd: sd, Notify: func(string) error { return nil },
			Ready: func(api, _ net.Addr) { ready <- api }})
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	sdk := func(k string) openai.Client {
		return openai.NewClient(option.WithBaseURL("http://"+addr.String()+"/v1/"), option.WithAPIKey(k), option.WithMaxRetries(0))
	}
	alice, bob := sdk("sk-alice-0123456789abcdef"), sdk("sk-bob-0123456789abcdef01")
	in := `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"dev","messages":[{"role":"user","content":"hi"}]}}
{"custom_id":"b","method":"POST","url":"/v1/chat/completions","body":{"model":"po","messages":[{"role":"user","content":"hi"}]}}
`
	f, err := alice.Files.New(ctx, openai.FileNewParams{File: openai.File(strings.NewReader(in), "in.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if err != nil {
		t.Fatal(err)
	}
	b, err := alice.Batches.New(ctx, openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h})
	if err != nil {
		t.Fatal(err)
	}
	// po is not alice's: that line is refused, the other runs.
	if len(b.Errors.Data) != 1 || b.Errors.Data[0].Line != 2 || !strings.Contains(b.Errors.Data[0].Message, "key alice may not use agent po") {
		t.Errorf("errors: %+v", b.Errors.Data)
	}
	deadline := time.Now().Add(20 * time.Second)
	for b.Status != openai.BatchStatusCompleted {
		if time.Now().After(deadline) {
			t.Fatalf("batch not completed: %+v", b)
		}
		time.Sleep(10 * time.Millisecond)
		if b, err = alice.Batches.Get(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := alice.Files.Content(ctx, b.OutputFileID)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(out), `"custom_id":"a","response":{"status_code":200`) || !strings.Contains(string(out), `"content":"done"`) ||
		strings.Count(string(out), "\n") != 1 {
		t.Errorf("output file: %s", out)
	}
	if _, err := bob.Batches.Get(ctx, b.ID); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("bob reads alice's batch: %v", err)
	}
	if l, err := bob.Files.List(ctx, openai.FileListParams{}); err != nil || len(l.Data) != 0 {
		t.Errorf("bob lists files: %v %v", l, err)
	}
	nobody := sdk("sk-nobody-0123456789abcdef")
	if _, err := nobody.Files.List(ctx, openai.FileListParams{}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("unknown key: %v", err)
	}
}
