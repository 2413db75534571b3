package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/models"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseConfig(t *testing.T) {
	cases := []struct {
		name string
		data string
		want Arch
		err  string
	}{
		{name: "qwen2.5 7b awq", data: string(readTestdata(t, "qwen2.5-7b-instruct-awq.config.json")),
			want: Arch{Layers: 28, KVHeads: 4, AttnHeads: 28, Hidden: 3584, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}},
		{name: "qwen2.5 14b awq", data: string(readTestdata(t, "qwen2.5-14b-instruct-awq.config.json")),
			want: Arch{Layers: 48, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}},
		{name: "qwen2.5 32b awq", data: string(readTestdata(t, "qwen2.5-32b-instruct-awq.config.json")),
			want: Arch{Layers: 64, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}},
		{name: "explicit head_dim wins (qwen3)", data: `{"num_hidden_layers":36,"num_attention_heads":32,"num_key_value_heads":8,"hidden_size":4096,"head_dim":128,"max_position_embeddings":40960,"torch_dtype":"bfloat16"}`,
			want: Arch{Layers: 36, KVHeads: 8, AttnHeads: 32, Hidden: 4096, HeadDim: 128, MaxPosition: 40960, Dtype: "bfloat16"}},
		{name: "head_dim unlike hidden/heads", data: `{"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":1,"hidden_size":2048,"head_dim":256,"dtype":"bfloat16"}`,
			want: Arch{Layers: 2, KVHeads: 1, AttnHeads: 8, Hidden: 2048, HeadDim: 256, Dtype: "bfloat16"}},
		{name: "null head_dim: derived", data: `{"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"hidden_size":1024,"head_dim":null}`,
			want: Arch{Layers: 2, KVHeads: 2, AttnHeads: 8, Hidden: 1024, HeadDim: 128}},
		{name: "no GQA: every head has KV", data: `{"num_hidden_layers":32,"num_attention_heads":32,"hidden_size":4096,"torch_dtype":"float16"}`,
			want: Arch{Layers: 32, KVHeads: 32, AttnHeads: 32, Hidden: 4096, HeadDim: 128, Dtype: "float16"}},
		{name: "multimodal text_config", data: `{"torch_dtype":"bfloat16","quantization_config":{"quant_method":"AWQ","bits":4},"text_config":{"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":4,"hidden_size":1024,"max_position_embeddings":8192}}`,
			want: Arch{Layers: 4, KVHeads: 4, AttnHeads: 8, Hidden: 1024, HeadDim: 128, MaxPosition: 8192, Dtype: "bfloat16", Quant: "awq", QuantBits: 4}},
		{name: "missing layers", data: `{"num_attention_heads":8,"hidden_size":1024}`, err: "no num_hidden_layers"},
		{name: "not JSON", data: `{`, err: "parse config.json"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := ParseConfig([]byte(c.data))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *a != c.want {
				t.Errorf("got  %+v\nwant %+v", *a, c.want)
			}
		})
	}
}

const commit7B = "a4b4e3ef8d4a5c5ef3e8c2b8c0d1e2f3a4b5c6d7"

// hfCache lays out a Hugging Face cache snapshot as huggingface_hub does:
// refs/main holds the commit, snapshots/COMMIT/FILE links to ../../blobs/X.
// Shard files are sparse, so their sizes cost no disk.
func hfCache(t *testing.T, home, repo, ref, commit string, files map[string]int64, config []byte) string {
	t.Helper()
	dir := models.RepoFolder(filepath.Join(home, "hub"), repo)
	snap := filepath.Join(dir, "snapshots", commit)
	for _, d := range []string{filepath.Join(dir, "refs"), filepath.Join(dir, "blobs"), snap} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if ref != "" {
		if err := os.WriteFile(filepath.Join(dir, "refs", ref), []byte(commit), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	link := func(name string, write func(p string)) {
		n++
		blob := filepath.Join(dir, "blobs", fmt.Sprintf("%064x", n))
		write(blob)
		if err := os.Symlink(filepath.Join("..", "..", "blobs", filepath.Base(blob)), filepath.Join(snap, name)); err != nil {
			t.Fatal(err)
		}
	}
	if config != nil {
		link("config.json", func(p string) {
			if err := os.WriteFile(p, config, 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
	for name, size := range files {
		link(name, func(p string) {
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
			f.Close()
		})
	}
	return snap
}

func TestResolverReadsTheHFCache(t *testing.T) {
	home := t.TempDir()
	repo := "Qwen/Qwen2.5-7B-Instruct-AWQ"
	snap := hfCache(t, home, repo, "main", commit7B, map[string]int64{
		"model-00001-of-00002.safetensors": 3_990_000_000,
		"model-00002-of-00002.safetensors": 1_580_000_000,
	}, readTestdata(t, "qwen2.5-7b-instruct-awq.config.json"))
	// A model.safetensors.index.json decides which files vLLM loads.
	index := `{"metadata":{"total_size":5570000000},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`
	if err := os.WriteFile(filepath.Join(snap, "model.safetensors.index.json"), []byte(index), 0o644); err != nil {
		t.Fatal(err)
	}
	// Not named by the index: vLLM skips it, and so must the estimate.
	f, _ := os.Create(filepath.Join(snap, "consolidated.safetensors"))
	f.Truncate(5_570_000_000)
	f.Close()

	r := &Resolver{HFHome: home, Offline: true}
	a := agent("po", repo, 0.92, 32768)
	got := r.Facts(context.Background(), a)
	if got.ArchSource != SourceCache || got.WeightsSource != SourceCache {
		t.Errorf("sources %s / %s, want the HF cache", got.ArchSource, got.WeightsSource)
	}
	if got.WeightsBytes != 5_570_000_000 || got.WeightFiles != 2 || got.SnapshotCommit != commit7B {
		t.Errorf("weights %d in %d files at %s", got.WeightsBytes, got.WeightFiles, got.SnapshotCommit)
	}
	if got.Arch.Layers != 28 || got.Arch.KVHeads != 4 || got.Arch.HeadDim != 128 || !got.AWQ() {
		t.Errorf("arch %+v", got.Arch)
	}

	// A revision given as a commit needs no ref.
	a.Revision = commit7B
	if got := r.Facts(context.Background(), a); got.WeightsSource != SourceCache {
		t.Errorf("by commit: %+v", got)
	}

	// The plan of a cached model names the cache as its source.
	cfg := synthCfg("0.18.0", agent("po", repo, 0.92, 32768))
	p := Make(context.Background(), cfg, totalMiB(16376), "test", r)
	if s := sourcesText(p.Agent("po").Facts); !strings.Contains(s, "(config.json: HF cache)") || !strings.Contains(s, "weights 5.57 GB in 2 files (HF cache)") || strings.Contains(s, "passed over") {
		t.Errorf("sources text %q", s)
	}
}

func TestResolverPartialSnapshotFallsBack(t *testing.T) {
	home := t.TempDir()
	repo := "Qwen/Qwen2.5-14B-Instruct-AWQ"
	snap := hfCache(t, home, repo, "main", commit7B, map[string]int64{
		"model-00001-of-00003.safetensors": 3_990_000_000,
	}, readTestdata(t, "qwen2.5-14b-instruct-awq.config.json"))
	index := `{"weight_map":{"a":"model-00001-of-00003.safetensors","b":"model-00002-of-00003.safetensors","c":"model-00003-of-00003.safetensors"}}`
	os.WriteFile(filepath.Join(snap, "model.safetensors.index.json"), []byte(index), 0o644)
	// A dangling link: the blob was never completed.
	os.Symlink("../../blobs/missing", filepath.Join(snap, "model-00002-of-00003.safetensors"))

	got := (&Resolver{HFHome: home, Offline: true}).Facts(context.Background(), agent("architect", repo, 0.92, 12288))
	if got.ArchSource != SourceCache || got.WeightsSource != SourceBuiltin || got.WeightsBytes != 9_980_000_000 {
		t.Errorf("partial snapshot: arch %s weights %s %d", got.ArchSource, got.WeightsSource, got.WeightsBytes)
	}
	if !strings.Contains(strings.Join(got.Notes, "\n"), "weights incomplete: model-00002-of-00003.safetensors is missing") {
		t.Errorf("notes %q", got.Notes)
	}
}

func TestResolverLocalDirectory(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), readTestdata(t, "qwen2.5-32b-instruct-awq.config.json"), 0o644)
	for i, size := range []int64{4e9, 4e9, 4e9, 4e9, 3.33e9} {
		f, _ := os.Create(filepath.Join(dir, fmt.Sprintf("model-%05d-of-00005.safetensors", i+1)))
		f.Truncate(size)
		f.Close()
	}
	got := (&Resolver{HFHome: t.TempDir()}).Facts(context.Background(), agent("big", dir, 0.95, 8192))
	if got.ArchSource != SourceLocal || got.WeightsSource != SourceLocal || got.WeightsBytes != 19_330_000_000 || got.WeightFiles != 5 {
		t.Errorf("local dir: %+v", got)
	}
	// An empty local directory: nothing to go on, and no table entry.
	got = (&Resolver{HFHome: t.TempDir()}).Facts(context.Background(), agent("x", t.TempDir(), 0.9, 0))
	if got.Complete() || !strings.Contains(strings.Join(got.Notes, "\n"), "no config.json") {
		t.Errorf("empty dir: %+v", got)
	}
}

// hub is a local server that speaks the Hub API's revision and resolve
// routes for one repo.
type hub struct {
	repo, rev string
	config    []byte
	siblings  map[string]uint64
	index     string
	wantToken string
	hits      atomic.Int32
}

func (h *hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.hits.Add(1)
	if h.wantToken != "" && r.Header.Get("Authorization") != "Bearer "+h.wantToken {
		http.Error(w, `{"error":"Access to model is restricted."}`, http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/api/models/" + h.repo + "/revision/" + h.rev:
		if r.URL.Query().Get("blobs") != "true" {
			http.Error(w, "want blobs=true", http.StatusBadRequest)
			return
		}
		type sib struct {
			RFilename string `json:"rfilename"`
			Size      uint64 `json:"size"`
		}
		var sibs []sib
		for n, s := range h.siblings {
			sibs = append(sibs, sib{n, s})
		}
		json.NewEncoder(w).Encode(map[string]any{"id": h.repo, "sha": commit7B, "siblings": sibs})
	case "/" + h.repo + "/resolve/" + h.rev + "/config.json":
		w.Write(h.config)
	case "/" + h.repo + "/resolve/" + h.rev + "/model.safetensors.index.json":
		w.Write([]byte(h.index))
	default:
		http.NotFound(w, r)
	}
}

func TestResolverAsksTheHub(t *testing.T) {
	h := &hub{repo: "acme/Tiny-AWQ", rev: "v1.0", config: []byte(`{"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"hidden_size":256,"max_position_embeddings":4096,"torch_dtype":"float16","quantization_config":{"quant_method":"awq","bits":4}}`),
		siblings: map[string]uint64{
			"config.json":                      700,
			"model-00001-of-00002.safetensors": 600_000_000,
			"model-00002-of-00002.safetensors": 400_000_000,
			"consolidated.safetensors":         1_000_000_000,
			"original/model.safetensors":       1_000_000_000,
			"model.safetensors.index.json":     1000,
		},
		index:     `{"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}`,
		wantToken: "hf_secret"}
	srv := httptest.NewServer(h)
	defer srv.Close()

	a := agent("tiny", h.repo, 0.5, 4096)
	a.Revision = h.rev
	r := &Resolver{HFHome: t.TempDir(), Endpoint: srv.URL + "/", Token: "hf_secret"}
	got := r.Facts(context.Background(), a)
	if got.ArchSource != SourceHub || got.WeightsSource != SourceHub || got.WeightsBytes != 1_000_000_000 || got.WeightFiles != 2 {
		t.Fatalf("hub facts: %+v", got)
	}
	if got.Arch.KVHeads != 2 || got.Arch.HeadDim != 64 || got.SnapshotCommit != commit7B {
		t.Errorf("hub arch %+v commit %s", got.Arch, got.SnapshotCommit)
	}

	// Without the token: a clear 401, and an unknown model stays unknown.
	r.Token = ""
	got = r.Facts(context.Background(), a)
	if got.Complete() {
		t.Fatalf("facts without a token: %+v", got)
	}
	notes := strings.Join(got.Notes, "\n")
	if !strings.Contains(notes, "401 Unauthorized") || !strings.Contains(notes, "set HF_TOKEN") {
		t.Errorf("notes %q", notes)
	}

	// Offline, the Hub is never asked.
	before := h.hits.Load()
	r.Offline = true
	r.Facts(context.Background(), a)
	if h.hits.Load() != before {
		t.Error("an offline resolver asked the Hub")
	}
}

func TestResolverHubDownFallsBackToTheTable(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusBadGateway)
	}))
	defer srv.Close()
	r := &Resolver{HFHome: t.TempDir(), Endpoint: srv.URL}
	got := r.Facts(context.Background(), agent("dev", "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", 0.92, 12288))
	if got.ArchSource != SourceBuiltin || got.WeightsBytes != 9_980_000_000 {
		t.Errorf("fallback: %+v", got)
	}
	s := sourcesText(got)
	if !strings.Contains(s, "(built-in table)") || !strings.Contains(s, "502 Bad Gateway") {
		t.Errorf("the fallback must say why: %q", s)
	}
}

func TestResolverFromEnv(t *testing.T) {
	cfg := &config.Config{Paths: config.Paths{HFHome: "/srv/hf"}, Engine: config.Engine{Env: map[string]string{"HF_ENDPOINT": "https://mirror.example"}}}
	env := map[string]string{"HF_TOKEN": "t", "HF_HUB_OFFLINE": "1"}
	r := ResolverFromEnv(cfg, func(k string) string { return env[k] })
	if r.HFHome != "/srv/hf" || r.Token != "t" || !r.Offline || r.Endpoint != "https://mirror.example" {
		t.Errorf("resolver %+v", r)
	}
	env["HF_ENDPOINT"], env["HF_HUB_OFFLINE"] = "http://local:8000", "0"
	r = ResolverFromEnv(cfg, func(k string) string { return env[k] })
	if r.Endpoint != "http://local:8000" || r.Offline {
		t.Errorf("resolver %+v", r)
	}
}

func TestSnapshotDir(t *testing.T) {
	home := t.TempDir()
	hub := filepath.Join(home, "hub")
	hfCache(t, home, "org/m", "main", commit7B, nil, []byte("{}"))
	if snap, commit, err := SnapshotDir(hub, "org/m", "main"); err != nil || commit != commit7B || filepath.Base(snap) != commit7B {
		t.Errorf("main: %s %s %v", snap, commit, err)
	}
	if _, _, err := SnapshotDir(hub, "org/m", "v2"); !errors.Is(err, models.ErrNotPulled) || !strings.Contains(err.Error(), "org/m@v2") {
		t.Errorf("missing ref: %v", err)
	}
	os.WriteFile(filepath.Join(models.RepoFolder(hub, "org/m"), "refs", "stale"), []byte(strings.Repeat("b", 40)), 0o644)
	if _, _, err := SnapshotDir(hub, "org/m", "stale"); !errors.Is(err, models.ErrNotPulled) || !strings.Contains(err.Error(), "no snapshot") {
		t.Errorf("stale ref: %v", err)
	}
}

// TestResolverUsesTheAgentsCacheAndEveryTokenVariable: plan reads the
// cache the agent's unit points its engine at ([env] HF_HUB_CACHE), and
// finds a token through HUGGING_FACE_HUB_TOKEN and HF_TOKEN_PATH as pull
// does.
func TestResolverUsesTheAgentsCacheAndEveryTokenVariable(t *testing.T) {
	home, other := t.TempDir(), t.TempDir()
	hfCache(t, other, "org/m", "main", commit7B, nil, []byte(`{"architectures":["X"]}`))
	cfg := &config.Config{Paths: config.Paths{HFHome: home}}
	a := agent("dev", "org/m", 0.9, 4096)
	a.Env = map[string]string{"HF_HUB_CACHE": filepath.Join(other, "hub")}
	r := ResolverFromEnv(cfg, func(k string) string { return map[string]string{"HUGGING_FACE_HUB_TOKEN": "legacy"}[k] })
	r.Offline = true
	if f := r.Facts(context.Background(), a); f.SnapshotCommit != commit7B {
		t.Errorf("the agent's cache was not read: %+v", f)
	}
	if r.Token != "legacy" {
		t.Errorf("HUGGING_FACE_HUB_TOKEN ignored: %q", r.Token)
	}
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("from-file\n"), 0o600)
	if r := ResolverFromEnv(cfg, func(k string) string { return map[string]string{"HF_TOKEN_PATH": tok}[k] }); r.Token != "from-file" {
		t.Errorf("HF_TOKEN_PATH ignored: %q", r.Token)
	}
}

func TestResolverAsksAnUnreachableHubOnce(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there any more
	r := &Resolver{HFHome: t.TempDir(), Endpoint: url}
	first := r.Facts(context.Background(), agent("a", "Qwen/Qwen2.5-7B-Instruct-AWQ", 0.9, 0))
	second := r.Facts(context.Background(), agent("b", "Qwen/Qwen2.5-14B-Instruct-AWQ", 0.9, 0))
	if !strings.Contains(strings.Join(first.Notes, "\n"), "connection refused") {
		t.Errorf("first notes %q", first.Notes)
	}
	if !strings.Contains(strings.Join(second.Notes, "\n"), "not asked, it was unreachable") {
		t.Errorf("second notes %q", second.Notes)
	}
	if first.WeightsSource != SourceBuiltin || second.WeightsSource != SourceBuiltin {
		t.Errorf("sources %s %s", first.WeightsSource, second.WeightsSource)
	}
}
