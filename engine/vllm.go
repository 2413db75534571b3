package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine/vllmflags"
)

// VLLM is vLLM's OpenAI-compatible server, `vllm serve`. With Sim set it is
// vllm-sim, which takes the same command line and serves the same routes,
// with a few variables of its own.
type VLLM struct {
	Sim bool
}

// vllmHost is the address engines with a port listen on: only the loopback,
// since vLLM checks its key on /v1/* only.
const vllmHost = "127.0.0.1"

// Endpoint is the agent's unix socket (config.EngineSocket), or 127.0.0.1
// and its port when it sets one.
func (VLLM) Endpoint(c *config.Config, a *config.Agent) Endpoint {
	if a.Port == 0 {
		return Unix(c.EngineSocket(a.Name))
	}
	return TCP(vllmHost, a.Port)
}

// neverFlags are flags no unit may carry: --disable-log-requests and --task
// were removed from vLLM (0.11, 0.13) and kill the engine at start on newer
// versions; help flags make it print and exit 0, which looks like a clean stop.
var neverFlags = []string{"--disable-log-requests", "--task", "-h", "--help"}

// HealthRoute is the path of vLLM's health probe, for probes vagent does
// not make itself (a Kubernetes export's).
func (VLLM) HealthRoute() string { return routeHealth }

// Binary is the engine's executable, the venv's vllm or the simulator, and
// the field that configures it.
func (v VLLM) Binary(c *config.Config) (bin, field string) {
	if v.Sim {
		return c.Engine.SimBinary, "engine.sim_binary"
	}
	return c.Engine.Venv + "/bin/vllm", "engine.venv"
}

// Command is `vllm serve MODEL` and the flags of the agent's typed fields,
// then its extra_args verbatim, each checked against the flags the
// configured vLLM version accepts (vllmflags).
func (v VLLM) Command(c *config.Config, a *config.Agent) ([]Arg, config.Errors) {
	var errs config.Errors
	mainErr := func(field, format string, args ...any) {
		errs = append(errs, &config.Error{File: c.Path, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	agentErr := func(field, format string, args ...any) {
		errs = append(errs, &config.Error{File: a.File, Agent: a.Name, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	flags, err := vllmflags.For(c.Engine.VLLMVersion)
	if err != nil {
		mainErr("engine.vllm_version", "%v", err)
	}

	bin, binField := v.Binary(c)
	switch {
	case !filepath.IsAbs(bin) || filepath.Clean(bin) != bin:
		mainErr(binField, "the engine binary %q must be a clean absolute path", bin)
	case strings.Contains(bin, "$"):
		mainErr(binField, "the engine binary %q must not contain '$'", bin)
	}
	args := []Arg{{bin, binField}, {"serve", ""}}

	// Values that start with '-' would be read by argparse as flags.
	value := func(field, v string) bool {
		if strings.HasPrefix(v, "-") {
			agentErr(field, "%q must not start with '-'", v)
			return false
		}
		return true
	}
	add := func(field, flag string, vals ...string) {
		if flags != nil && !flags.Has(flag) {
			agentErr(field, "vLLM %s (engine.vllm_version) has no %s", c.Engine.VLLMVersion, flag)
		}
		args = append(args, Arg{flag, field})
		for _, v := range vals {
			args = append(args, Arg{v, field})
		}
	}
	// addText adds a free-text value; one that starts with '-' is attached
	// with '=' so argparse cannot mistake it for a flag.
	addText := func(field, flag, v string) {
		if strings.HasPrefix(v, "-") {
			add(field, flag)
			args[len(args)-1].Val += "=" + v
			return
		}
		add(field, flag, v)
	}

	if a.Model == "" {
		agentErr("model", "must be set")
	} else if err := config.CheckPath(a.Model); config.IsLocalModel(a.Model) && err != nil {
		// The engine runs from "/": config.Load makes a relative model
		// directory absolute against its agent file.
		agentErr("model", "a local model directory %v", err)
	} else if value("model", a.Model) {
		args = append(args, Arg{a.Model, "model"})
	}
	switch {
	case a.Port == 0 && !UnixSockets(c.Engine.VLLMVersion):
		agentErr("port", "must be set: vLLM %s (engine.vllm_version) has no --uds (0.10.1 and later have), so its engine listens on 127.0.0.1 at a port", c.Engine.VLLMVersion)
	case a.Port == 0:
		// A unix socket in a directory only the engine's user and group
		// may enter: vLLM checks its key on /v1 paths only, and no other
		// local user may reach the rest (/sleep, /collective_rpc, ...).
		sock := c.EngineSocket(a.Name)
		if len(sock) > config.MaxSocketPath {
			mainErr("paths.run_dir", "agent %s's engine socket %s is %d bytes, longer than a unix socket path may be (%d): shorten run_dir or the agent's name, or set its port", a.Name, sock, len(sock), config.MaxSocketPath)
		}
		add("", "--uds", sock)
	case a.Port < 1 || a.Port > 65535:
		agentErr("port", "must be 1-65535, not %d", a.Port)
	default:
		add("", "--host", vllmHost)
		add("port", "--port", strconv.Itoa(a.Port))
	}
	if len(a.ServedNames) > 0 {
		for _, n := range a.ServedNames {
			if n == "" {
				agentErr("served_names", "entries must not be empty")
			} else {
				value("served_names", n)
			}
		}
		add("served_names", "--served-model-name", a.ServedNames...)
	}
	if a.KVCacheMemoryBytes > 0 {
		// vLLM ignores the utilization when the KV size is pinned.
		add("kv_cache_memory_bytes", "--kv-cache-memory-bytes", strconv.FormatUint(a.KVCacheMemoryBytes, 10))
	} else {
		u := a.GPUMemoryUtilization
		if !(u > 0 && u <= 1) {
			agentErr("gpu_memory_utilization", "must be in (0, 1], not %v", u)
		}
		add("gpu_memory_utilization", "--gpu-memory-utilization", strconv.FormatFloat(u, 'f', -1, 64))
	}
	if a.MaxModelLen > 0 {
		add("max_model_len", "--max-model-len", strconv.Itoa(a.MaxModelLen))
	}
	if a.Dtype != "" && a.Dtype != "auto" {
		addText("dtype", "--dtype", a.Dtype)
	}
	if a.Quantization != "" {
		addText("quantization", "--quantization", a.Quantization)
	}
	if a.KVCacheDtype != "" && a.KVCacheDtype != "auto" {
		addText("kv_cache_dtype", "--kv-cache-dtype", a.KVCacheDtype)
	}
	if p := a.EnablePrefixCaching; p != nil {
		if *p {
			add("enable_prefix_caching", "--enable-prefix-caching")
		} else {
			add("enable_prefix_caching", "--no-enable-prefix-caching")
		}
	}
	if a.MaxNumSeqs > 0 {
		add("max_num_seqs", "--max-num-seqs", strconv.Itoa(a.MaxNumSeqs))
	}
	if a.TensorParallelSize > 1 {
		add("tensor_parallel_size", "--tensor-parallel-size", strconv.Itoa(a.TensorParallelSize))
	}
	if a.EnforceEager {
		add("enforce_eager", "--enforce-eager")
	}
	if a.ChatTemplate != "" {
		if err := config.CheckPath(a.ChatTemplate); config.IsChatTemplateFile(a.ChatTemplate) && err != nil {
			// vLLM opens it from "/": config.Load makes it absolute.
			agentErr("chat_template", "a chat template file %v", err)
		}
		addText("chat_template", "--chat-template", a.ChatTemplate)
	}
	if a.Revision != "" && a.Revision != "main" {
		addText("revision", "--revision", a.Revision)
	}
	if a.TrustRemoteCode {
		add("trust_remote_code", "--trust-remote-code")
	}
	if a.ToolCallParser != "" {
		add("tool_call_parser", "--enable-auto-tool-choice")
		addText("tool_call_parser", "--tool-call-parser", a.ToolCallParser)
	}
	if a.ReasoningParser != "" {
		addText("reasoning_parser", "--reasoning-parser", a.ReasoningParser)
	}
	if gen, err := GenerationConfig(a.Sampling); err != nil {
		agentErr("sampling", "%v", err)
	} else if gen != "" {
		add("sampling", "--override-generation-config", gen)
	}
	if c.Sleeps(a) {
		// Sleep mode: a switch away puts the engine to sleep instead of
		// stopping it (the supervisor drives the Client's Sleep and Wake).
		add("switch_mode", "--enable-sleep-mode")
	}

	for i, x := range a.ExtraArgs {
		if !config.IsOption(x) {
			args = append(args, Arg{x, "extra_args"})
			continue
		}
		name, _, _ := strings.Cut(x, "=")
		switch err := config.CheckExtraArg(a.ExtraArgs, i); {
		case err != nil:
			agentErr("extra_args", "%v", err)
		case slices.Contains(neverFlags, name):
			agentErr("extra_args", "entry %d %q: vagent never passes %s to vLLM", i+1, x, name)
		case slices.Contains(config.ManagedFlags, name):
			agentErr("extra_args", "entry %d %q repeats a flag vagent sets from its own key; set that key instead", i+1, x)
		case flags != nil && !flags.Has(name):
			agentErr("extra_args", "entry %d %q: vLLM %s (engine.vllm_version) has no flag %s (spell flags in full, with dashes)",
				i+1, x, c.Engine.VLLMVersion, name)
		}
		args = append(args, Arg{x, "extra_args"})
	}
	return args, errs
}

// simEnv are the variables vllm-sim reads besides vLLM's own.
var simEnv = []string{"VLLM_SIM_LEDGER", "VLLM_SIM_GPUS", "VLLM_SIM_TOTAL_MIB", "VLLM_SIM_VERSION"}

// LockedEnv are the simulator's ledger and version: they must match what
// vagentd's GPU view reads.
func (VLLM) LockedEnv() []string { return simEnv }

// Env is vLLM's cache root under paths.cache_dir, no usage reports, the
// simulator's ledger for the sim, and dev mode for sleep agents.
func (v VLLM) Env(c *config.Config, a *config.Agent) []Var {
	cache := c.Paths.CacheDir
	vars := []Var{
		{"VLLM_CACHE_ROOT", path.Join(cache, "vllm"), "paths.cache_dir"},
		// A host that runs offline does not report usage.
		{"VLLM_NO_USAGE_STATS", "1", ""},
	}
	if v.Sim {
		vars = append(vars,
			Var{"VLLM_SIM_LEDGER", c.GPU.SimLedger, "gpu.sim_ledger"},
			Var{"VLLM_SIM_GPUS", strconv.Itoa(c.GPU.SimCount), "gpu.sim_count"},
			Var{"VLLM_SIM_TOTAL_MIB", strconv.FormatUint(c.GPU.SimTotalMiB, 10), "gpu.sim_total_mib"},
			Var{"VLLM_SIM_VERSION", c.Engine.VLLMVersion, "engine.vllm_version"},
		)
		if s := c.GPU.SimLoadSeconds; s > 0 {
			vars = append(vars, Var{"VLLM_SIM_LOAD_SECONDS", strconv.FormatFloat(s, 'f', -1, 64), "gpu.sim_load_seconds"})
		}
	}
	if c.Sleeps(a) {
		// vLLM serves /sleep, /wake_up and /is_sleeping only in dev mode.
		// Those routes take no API key (vLLM guards only /v1/*): the engine
		// listens on 127.0.0.1 only, and the gateway never forwards them.
		vars = append(vars, Var{"VLLM_SERVER_DEV_MODE", "1", "switch_mode"})
	}
	return vars
}

// vllmModelRoutes are vLLM's model-taking routes outside /v1/.
var vllmModelRoutes = map[string]bool{
	"/tokenize": true, "/detokenize": true, "/pooling": true, "/classify": true,
	"/score": true, "/rerank": true, "/v2/rerank": true, "/invocations": true,
}

// vllmControlRoutes are vLLM routes that drive the engine instead of
// serving a model: sleep mode, weight reloads, cache resets, profiling,
// LoRA loading. vLLM checks its API key on /v1/* only, and sleep agents run
// in vLLM's dev mode, so these are open to anyone who reaches the engine.
const (
	routeHealth           = "/health"
	routeSleep            = "/sleep"
	routeWake             = "/wake_up"
	routeIsSleeping       = "/is_sleeping"
	routeCollectiveRPC    = "/collective_rpc"
	routeResetPrefixCache = "/reset_prefix_cache"
	routeCompletions      = "/v1/completions"
)

var vllmControlRoutes = map[string]bool{
	routeSleep: true, routeWake: true, routeIsSleeping: true, routeCollectiveRPC: true,
	routeResetPrefixCache: true, "/reset_mm_cache": true, "/server_info": true,
	"/start_profile": true, "/stop_profile": true, "/scale_elastic_ep": true, "/is_scaling_elastic_ep": true,
	"/pause": true, "/resume": true, "/is_paused": true, "/update_weights": true,
	"/v1/load_lora_adapter": true, "/v1/unload_lora_adapter": true,
}

// ControlRoute reports whether path is one of vLLM's engine-driving routes.
func (VLLM) ControlRoute(path string) bool { return vllmControlRoutes[path] }

// ModelRoute reports whether path is one of vLLM's model-taking routes
// outside /v1/.
func (VLLM) ModelRoute(path string) bool { return vllmModelRoutes[path] }

// vllmLog is vLLM's log format.
var vllmLog = LogFormat{
	// "(EngineCore_DP0 pid=123) ", "(APIServer pid=1) ",
	// "(VllmWorker rank=0 pid=9) ".
	ProcessPrefix: regexp.MustCompile(`^\([^()]*\bpid=\d+\) ?`),
	// "ERROR 11-29 15:51:30 [core.py:700] ", with optional milliseconds
	// and a path in the brackets in later versions.
	LevelPrefix: regexp.MustCompile(`^(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)? \[[^\]]*\] ?`),
	// argparse's complaint before exit status 2:
	// "vllm: error: unrecognized arguments: --foo".
	UsageError: regexp.MustCompile(`^[\w.\- ]+: error: \S`),
	// tqdm's bars: "Loading safetensors checkpoint shards:  50% Completed |
	// 1/2 [00:01<00:01,  1.10s/it]", "Capturing CUDA graphs: 100%|██| 67/67".
	Progress: regexp.MustCompile(`\d{1,3}%(?: Completed)? ?\|.*\d+/\d+`),
	Generic: []string{
		"See root cause above",
		"Engine core initialization failed",
		"See stack trace for the root cause",
		"see stack trace for root cause",
		"Engine process failed to start",
		"initialization failed due to an exception in a background process",
	},
}

// Log is vLLM's log format: a failed start ends with "RuntimeError: Engine
// core initialization failed. See root cause above."
func (VLLM) Log() LogFormat { return vllmLog }

// Client talks to vLLM's HTTP API at ep.
func (VLLM) Client(ep Endpoint, key string) Client { return newVLLMClient(ep, key) }

func statusText(code int) string { return http.StatusText(code) }

// GenerationConfig is the JSON for vLLM's --override-generation-config:
// the [sampling] keys vLLM takes from it as request defaults, sorted, or ""
// when none is set.
//
// vLLM reads only repetition_penalty, temperature, top_k, top_p, min_p and
// max_new_tokens from that JSON (ModelConfig.get_diff_sampling_param in
// vllm/config/model.py, the same list in v0.12.0 and v0.18.0rc2). The first
// five are defaults a request's own value replaces. max_new_tokens is not:
// the OpenAI serving classes keep it as override_max_tokens
// (vllm/entrypoints/openai/completion/serving.py and chat_completion/
// serving.py in v0.18.0rc2), and get_max_tokens (vllm/entrypoints/utils.py)
// takes the minimum of it and the request's max_tokens: a cap on every
// client. So [sampling] max_tokens is never rendered here: it is a default
// the gateway puts into requests that carry none (DefaultMaxTokens).
func GenerationConfig(s config.Sampling) (string, error) {
	m := map[string]any{}
	for k, v := range map[string]*float64{
		"temperature": s.Temperature, "top_p": s.TopP, "min_p": s.MinP,
		"repetition_penalty": s.RepetitionPenalty,
	} {
		if v != nil {
			if math.IsNaN(*v) || math.IsInf(*v, 0) {
				return "", fmt.Errorf("%s must be a finite number", k)
			}
			m[k] = *v
		}
	}
	if s.TopK != nil {
		m["top_k"] = *s.TopK
	}
	if len(m) == 0 {
		return "", nil
	}
	b, err := json.Marshal(m) // map keys come out sorted
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// DefaultMaxTokens is the max_tokens the gateway puts into agent a's
// requests that carry none ([sampling] max_tokens), and false when it sets
// none: then the engine's own default applies (vLLM: 16 tokens on
// /v1/completions, the rest of the context on chat).
func DefaultMaxTokens(a *config.Agent) (int, bool) {
	if a.Sampling.MaxTokens == nil {
		return 0, false
	}
	return *a.Sampling.MaxTokens, true
}

// samplingDefault is what a key rendered into --override-generation-config does.
const samplingDefault = "default for requests that set none (--override-generation-config); a request's own value wins"

// Sampling says, for each [sampling] key agent a sets, how vLLM applies it.
func (VLLM) Sampling(a *config.Agent) []SamplingKey {
	s := a.Sampling
	var out []SamplingKey
	num := func(key string, v *float64) {
		if v != nil {
			out = append(out, SamplingKey{key, strconv.FormatFloat(*v, 'g', -1, 64),
				samplingDefault})
		}
	}
	num("temperature", s.Temperature)
	num("top_p", s.TopP)
	if s.TopK != nil {
		out = append(out, SamplingKey{"top_k", strconv.Itoa(*s.TopK), samplingDefault})
	}
	num("min_p", s.MinP)
	num("repetition_penalty", s.RepetitionPenalty)
	if n, ok := DefaultMaxTokens(a); ok {
		out = append(out, SamplingKey{"max_tokens", strconv.Itoa(n),
			"default the gateway puts into requests that set none; not a cap: a request may ask for more"})
	}
	return out
}
