package plan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/models"
)

// Source says where a figure came from, so that a user can tell a measured
// checkpoint from the built-in table's fallback.
type Source string

// The sources, in the order Resolver tries them.
const (
	SourceLocal   Source = "local directory"
	SourceCache   Source = "HF cache"
	SourceHub     Source = "Hub API"
	SourceBuiltin Source = "built-in table"
)

// Arch is what the VRAM arithmetic needs from a model's config.json.
type Arch struct {
	Layers    int `json:"num_hidden_layers"`
	KVHeads   int `json:"num_key_value_heads"`
	AttnHeads int `json:"num_attention_heads"`
	Hidden    int `json:"hidden_size"`
	// HeadDim is config.json's head_dim, or hidden_size / num_attention_heads
	// when the file has none.
	HeadDim int `json:"head_dim"`
	// MaxPosition is max_position_embeddings: the max_model_len vLLM derives
	// when none is set, and the longest it accepts. 0 when unknown.
	MaxPosition int `json:"max_position_embeddings"`
	// Dtype is torch_dtype ("float16", "bfloat16", ...).
	Dtype string `json:"torch_dtype"`
	// Quant is quantization_config.quant_method ("awq", "gptq", "fp8", ...),
	// "" for an unquantized checkpoint.
	Quant string `json:"quant_method,omitempty"`
	// QuantBits is quantization_config.bits, 0 when absent.
	QuantBits int `json:"quant_bits,omitempty"`
}

// Facts are a model's figures and where each came from.
type Facts struct {
	Model    string `json:"model"`
	Revision string `json:"revision"`
	// Arch is nil when no source had the model's config.json.
	Arch       *Arch  `json:"arch,omitempty"`
	ArchSource Source `json:"arch_source,omitempty"`
	// WeightsBytes is the sum of the *.safetensors vLLM loads (for the
	// whole model, before tensor parallelism splits it); 0 when unknown.
	WeightsBytes   uint64 `json:"weights_bytes"`
	WeightFiles    int    `json:"weight_files"`
	WeightsSource  Source `json:"weights_source,omitempty"`
	SnapshotCommit string `json:"snapshot_commit,omitempty"`
	// Notes say why a source was passed over ("not in the HF cache",
	// "Hub: 401"), so a fallback to the table is never silent.
	Notes []string `json:"notes,omitempty"`
}

// Complete reports whether both the architecture and the weights are known.
func (f *Facts) Complete() bool { return f.Arch != nil && f.WeightsBytes > 0 }

// AWQ reports whether the checkpoint is AWQ-quantized: vLLM's AWQ kernels
// need compute capability 7.5.
func (f *Facts) AWQ() bool { return f.Arch != nil && strings.Contains(f.Arch.Quant, "awq") }

// hfConfig is the part of a Hugging Face config.json the plan reads.
type hfConfig struct {
	NumHiddenLayers       int    `json:"num_hidden_layers"`
	NumKeyValueHeads      int    `json:"num_key_value_heads"`
	NumAttentionHeads     int    `json:"num_attention_heads"`
	HiddenSize            int    `json:"hidden_size"`
	HeadDim               *int   `json:"head_dim"`
	MaxPositionEmbeddings int    `json:"max_position_embeddings"`
	TorchDtype            string `json:"torch_dtype"`
	// Dtype replaced torch_dtype in transformers 4.56.
	Dtype              string `json:"dtype"`
	QuantizationConfig *struct {
		QuantMethod string `json:"quant_method"`
		Bits        int    `json:"bits"`
	} `json:"quantization_config"`
	// TextConfig holds the language model of multimodal checkpoints.
	TextConfig *hfConfig `json:"text_config"`
}

// ParseConfig reads the architecture from a config.json's bytes. It fails
// when a figure the arithmetic needs is missing.
func ParseConfig(data []byte) (*Arch, error) {
	var c hfConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("parse config.json: %w", err)
	}
	top := c
	if c.NumHiddenLayers == 0 && c.TextConfig != nil {
		c = *c.TextConfig
		if c.QuantizationConfig == nil {
			c.QuantizationConfig = top.QuantizationConfig
		}
		if c.TorchDtype == "" && c.Dtype == "" {
			c.TorchDtype, c.Dtype = top.TorchDtype, top.Dtype
		}
	}
	a := &Arch{
		Layers: c.NumHiddenLayers, KVHeads: c.NumKeyValueHeads, AttnHeads: c.NumAttentionHeads,
		Hidden: c.HiddenSize, MaxPosition: c.MaxPositionEmbeddings, Dtype: c.TorchDtype,
	}
	if a.Dtype == "" {
		a.Dtype = c.Dtype
	}
	if a.KVHeads == 0 {
		// No grouped-query attention: every head has its own K and V.
		a.KVHeads = a.AttnHeads
	}
	if c.HeadDim != nil && *c.HeadDim > 0 {
		a.HeadDim = *c.HeadDim
	} else if a.AttnHeads > 0 {
		a.HeadDim = a.Hidden / a.AttnHeads
	}
	if q := c.QuantizationConfig; q != nil {
		a.Quant, a.QuantBits = strings.ToLower(q.QuantMethod), q.Bits
	}
	var missing []string
	for name, v := range map[string]int{"num_hidden_layers": a.Layers, "num_attention_heads": a.AttnHeads, "head_dim or hidden_size": a.HeadDim} {
		if v <= 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("parse config.json: no %s", strings.Join(missing, ", "))
	}
	return a, nil
}

// Resolver finds a model's facts: from a local model directory, else from
// the agent's HF cache, else from the Hub API, else from the built-in
// table, taking the architecture and the weights each from the first source
// that has them.
type Resolver struct {
	// HFHome is vagent's Hugging Face home (paths.hf_home): the cache is
	// HFHome/hub unless Cache says otherwise.
	HFHome string
	// Cache is the hub cache of an agent's engine (models.HubCacheOf);
	// nil: HFHome/hub for every agent.
	Cache func(a *config.Agent) string
	// Endpoint is the Hub (models.Env.Endpoint).
	Endpoint string
	// Token is sent as a bearer token for gated repos (models.Env.Token).
	Token string
	// Offline skips the Hub ($HF_HUB_OFFLINE=1, or --offline).
	Offline bool
	// HTTP is the Hub client; each request is also bounded by Timeout.
	HTTP    *http.Client
	Timeout time.Duration

	// hubDown is set once the Hub could not be reached at all, so that one
	// offline host waits for one timeout, not one per agent.
	hubDown atomic.Bool
}

// DefaultEndpoint is the Hub when $HF_ENDPOINT is unset.
const DefaultEndpoint = models.DefaultEndpoint

// ResolverFromEnv is the resolver for cfg with the Hub settings of the
// environment (getenv is os.Getenv outside tests), resolved by models as
// huggingface_hub resolves them.
func ResolverFromEnv(cfg *config.Config, getenv func(string) string) *Resolver {
	e := models.ForAgent(cfg, nil, getenv)
	return &Resolver{HFHome: cfg.Paths.HFHome, Endpoint: e.Endpoint, Token: e.Token, Offline: e.Offline,
		Cache: func(a *config.Agent) string { return models.HubCacheOf(cfg, a) }}
}

func (r *Resolver) cache(a *config.Agent) string {
	if r.Cache != nil {
		return r.Cache(a)
	}
	return filepath.Join(r.HFHome, "hub")
}

// SnapshotDir is the cached snapshot of repo at revision (a branch, tag or
// commit) in hubCache, and its commit. It fails when the revision was never
// pulled.
func SnapshotDir(hubCache, repo, revision string) (string, string, error) {
	snap, err := models.SnapshotDir(hubCache, repo, revision)
	if err != nil {
		return "", "", err
	}
	return snap, filepath.Base(snap), nil
}

// IsLocal reports whether an agent's model is a directory rather than a Hub
// repo id (models.IsLocal).
func IsLocal(model string) bool { return models.IsLocal(model) }

// Facts resolves the facts of agent a's model.
func (r *Resolver) Facts(ctx context.Context, a *config.Agent) *Facts {
	f := &Facts{Model: a.Model, Revision: a.Revision}
	if IsLocal(a.Model) {
		r.fromDir(f, a.Model, SourceLocal)
	} else {
		snap, commit, err := SnapshotDir(r.cache(a), a.Model, a.Revision)
		if err != nil {
			f.Notes = append(f.Notes, err.Error())
		} else {
			f.SnapshotCommit = commit
			r.fromDir(f, snap, SourceCache)
		}
		if !f.Complete() && !r.Offline {
			r.fromHub(ctx, f)
		}
	}
	if !f.Complete() {
		fromBuiltin(f)
	}
	return f
}

// fromDir reads config.json and the safetensors sizes of a model directory.
func (r *Resolver) fromDir(f *Facts, dir string, src Source) {
	if f.Arch == nil {
		if data, err := os.ReadFile(filepath.Join(dir, "config.json")); err != nil {
			f.Notes = append(f.Notes, fmt.Sprintf("%s: no config.json in %s", src, dir))
		} else if a, err := ParseConfig(data); err != nil {
			f.Notes = append(f.Notes, fmt.Sprintf("%s: %s: %v", src, filepath.Join(dir, "config.json"), err))
		} else {
			f.Arch, f.ArchSource = a, src
		}
	}
	if f.WeightsBytes > 0 {
		return
	}
	files, err := weightFiles(dir)
	if err != nil {
		f.Notes = append(f.Notes, fmt.Sprintf("%s: %v", src, err))
		return
	}
	var total uint64
	for _, name := range files {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Size() == 0 {
			f.Notes = append(f.Notes, fmt.Sprintf("%s: weights incomplete: %s is missing", src, name))
			return
		}
		total += uint64(st.Size())
	}
	f.WeightsBytes, f.WeightFiles, f.WeightsSource = total, len(files), src
}

// weightFiles are the safetensors files vLLM loads from dir: those the
// index names when there is one (vLLM skips duplicates such as
// consolidated.safetensors), else every *.safetensors.
func weightFiles(dir string) ([]string, error) {
	if data, err := os.ReadFile(filepath.Join(dir, "model.safetensors.index.json")); err == nil {
		files, err := indexFiles(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "model.safetensors.index.json"), err)
		}
		return files, nil
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if len(matches) == 0 {
		return nil, fmt.Errorf("no *.safetensors in %s", dir)
	}
	files := make([]string, len(matches))
	for i, m := range matches {
		files[i] = filepath.Base(m)
	}
	return files, nil
}

// indexFiles lists the shard files of a model.safetensors.index.json.
func indexFiles(data []byte) ([]string, error) {
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("parse safetensors index: %w", err)
	}
	set := map[string]bool{}
	for _, f := range idx.WeightMap {
		set[f] = true
	}
	if len(set) == 0 {
		return nil, errors.New("safetensors index names no files")
	}
	files := make([]string, 0, len(set))
	for f := range set {
		files = append(files, f)
	}
	sort.Strings(files)
	return files, nil
}

// hubRevision is the Hub's answer to /api/models/{repo}/revision/{rev}?blobs=true.
type hubRevision struct {
	SHA      string `json:"sha"`
	Siblings []struct {
		RFilename string `json:"rfilename"`
		Size      uint64 `json:"size"`
		LFS       *struct {
			Size uint64 `json:"size"`
		} `json:"lfs"`
	} `json:"siblings"`
}

// fromHub asks the Hub API for the file sizes and config.json.
func (r *Resolver) fromHub(ctx context.Context, f *Facts) {
	endpoint := strings.TrimRight(r.Endpoint, "/")
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	rev := url.PathEscape(f.Revision)
	if r.hubDown.Load() {
		f.Notes = append(f.Notes, "Hub API: not asked, it was unreachable for an earlier model")
		return
	}
	var info hubRevision
	if err := r.getJSON(ctx, fmt.Sprintf("%s/api/models/%s/revision/%s?blobs=true", endpoint, f.Model, rev), &info); err != nil {
		var se *statusError
		if !errors.As(err, &se) {
			r.hubDown.Store(true)
		}
		f.Notes = append(f.Notes, "Hub API: "+err.Error())
		return
	}
	if f.Arch == nil {
		var raw json.RawMessage
		if err := r.getJSON(ctx, fmt.Sprintf("%s/%s/resolve/%s/config.json", endpoint, f.Model, rev), &raw); err != nil {
			f.Notes = append(f.Notes, "Hub API: config.json: "+err.Error())
		} else if a, err := ParseConfig(raw); err != nil {
			f.Notes = append(f.Notes, "Hub API: "+err.Error())
		} else {
			f.Arch, f.ArchSource = a, SourceHub
		}
	}
	if f.WeightsBytes > 0 {
		return
	}
	sizes := map[string]uint64{}
	hasIndex := false
	for _, s := range info.Siblings {
		size := s.Size
		if size == 0 && s.LFS != nil {
			size = s.LFS.Size
		}
		sizes[s.RFilename] = size
		if s.RFilename == "model.safetensors.index.json" {
			hasIndex = true
		}
	}
	var names []string
	if hasIndex {
		var raw json.RawMessage
		if err := r.getJSON(ctx, fmt.Sprintf("%s/%s/resolve/%s/model.safetensors.index.json", endpoint, f.Model, rev), &raw); err == nil {
			names, _ = indexFiles(raw)
		}
	}
	if names == nil {
		for name := range sizes {
			if strings.HasSuffix(name, ".safetensors") && !strings.Contains(name, "/") {
				names = append(names, name)
			}
		}
	}
	var total uint64
	for _, n := range names {
		total += sizes[n]
	}
	if total == 0 {
		f.Notes = append(f.Notes, fmt.Sprintf("Hub API: %s@%s lists no safetensors files", f.Model, f.Revision))
		return
	}
	f.WeightsBytes, f.WeightFiles, f.WeightsSource = total, len(names), SourceHub
	if f.SnapshotCommit == "" {
		f.SnapshotCommit = info.SHA
	}
}

// statusError is an answer from the Hub that was not 200: the Hub is up.
type statusError struct{ msg string }

func (e *statusError) Error() string { return e.msg }

func (r *Resolver) getJSON(ctx context.Context, u string, v any) error {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if r.Token != "" {
		req.Header.Set("Authorization", "Bearer "+r.Token)
	}
	client := r.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return &statusError{fmt.Sprintf("GET %s: %s (a gated or private repo: set HF_TOKEN to a token that has accepted its terms)", u, resp.Status)}
	case resp.StatusCode != http.StatusOK:
		return &statusError{fmt.Sprintf("GET %s: %s", u, resp.Status)}
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}
