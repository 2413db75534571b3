package config

import (
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
)

// keyDoc says what one key means and what it becomes.
type keyDoc struct {
	doc string
	// renders is the vllm serve flag or unit directive the key turns into,
	// or where else it acts.
	renders string
}

// mainDocs documents every key of vagent.toml. A test fails when a key of
// the Config struct is missing here, so the reference cannot go stale.
var mainDocs = map[string]keyDoc{
	"engine.kind":                    {"Which program serves agents: \"vllm\" (vllm serve from the managed venv) or \"sim\" (vllm-sim, the simulator that needs no GPU).", "`ExecStart=` program"},
	"engine.vllm_version":            {"The vLLM version units are rendered for: only flags this version accepts are written.", "flag set of `ExecStart=`"},
	"engine.venv":                    {"The virtual environment holding vLLM; the engine is `VENV/bin/vllm`.", "`ExecStart=VENV/bin/vllm serve ...`"},
	"engine.sim_binary":              {"The vllm-sim executable used when kind is \"sim\".", "`ExecStart=SIM serve ...`"},
	"engine.env":                     {"Extra environment for every agent (an agent's own env wins); names that carry secrets (`*_TOKEN`, `*_API_KEY`, `*_SECRET`, `*_PASSWORD`...) are refused, since every local user can read the environment.", "`Environment=`"},
	"engine.python":                  {"The interpreter `vagentctl install` builds the venv with; empty means `python3` with pip and `3.12` with uv.", "`vagentctl install`"},
	"engine.index_url":               {"A package index replacing PyPI for `vagentctl install` (a mirror); empty means the installer's default.", "`--index-url`"},
	"engine.extra_index_urls":        {"More package indexes for `vagentctl install`.", "`--extra-index-url`"},
	"engine.find_links":              {"Wheel directories or pages for `vagentctl install`; without any index the install is offline.", "`--find-links` (alone: `--no-index`)"},
	"paths.unit_dir":                 {"Where the template unit and the drop-ins are written.", "`vagent@.service`, `vagent@NAME.service.d/50-vagent.conf`"},
	"paths.state_dir":                {"Engines, the engines' API key, setup state.", "`HOME=`, `EnvironmentFile=STATE/engine-key.env`"},
	"paths.run_dir":                  {"Runtime files: transition locks, the levels sleeping agents sleep at, the control socket's default place, the engines' unix sockets (so short enough that `RUN/engines/NAME.sock` fits a socket path's 107 bytes).", "`RUN/gpuN.lock`, `RUN/sleep/NAME`, `RUN/engines/NAME.sock`"},
	"paths.hf_home":                  {"The Hugging Face home holding model weights.", "`HF_HOME=`"},
	"paths.cache_dir":                {"Compiler and kernel caches (Triton, torch inductor, CUDA, vLLM).", "`XDG_CACHE_HOME=`, `TRITON_CACHE_DIR=`, `TORCHINDUCTOR_CACHE_DIR=`, `CUDA_CACHE_PATH=`, `VLLM_CACHE_ROOT=`"},
	"paths.agents_dir":               {"The directory of agent files, relative to vagent.toml.", ""},
	"gpu.backend":                    {"Where GPU facts come from: \"nvml\" (the NVIDIA driver), \"sim\" (the simulator's ledger), or \"auto\": NVML when engine.kind is \"vllm\" and an NVIDIA driver answers, else the simulator (`vagentctl doctor` says which and why).", ""},
	"gpu.reserve_mib":                {"Memory per GPU vagent never plans to use (display, other programs).", "fit checks, `Conflicts=`"},
	"gpu.sim_ledger":                 {"The ledger file shared by every simulator process.", "`VLLM_SIM_LEDGER=`"},
	"gpu.sim_count":                  {"How many GPUs the simulator pretends to have.", "`VLLM_SIM_GPUS=`"},
	"gpu.sim_total_mib":              {"The memory of each simulated GPU.", "`VLLM_SIM_TOTAL_MIB=`"},
	"gpu.sim_load_seconds":           {"When above 0, the simulator's load time for every agent (else it grows with model size).", "`VLLM_SIM_LOAD_SECONDS=`"},
	"gateway.listen":                 {"The address of vagentd's OpenAI-compatible endpoint. vagentctl apply renders it into vagentd.socket, which holds it across vagentd's restarts; after a change, systemctl restart vagentd.socket.", ""},
	"gateway.keys_file":              {"Client API keys (TOML); without one vagentd listens on loopback only.", ""},
	"gateway.control_socket":         {"The unix socket vagentctl uses to reach vagentd; at most 107 bytes (a socket address holds no more).", ""},
	"gateway.control_group":          {"The group that owns the control socket (mode 0660); empty keeps root's.", ""},
	"gateway.queue_length":           {"Requests that may wait for an agent; past it: 429.", ""},
	"gateway.max_wait":               {"How long a request may wait for its agent, cold start included; past it: 503 with Retry-After.", ""},
	"gateway.drain_timeout":          {"How long a switch waits for an evicted agent's requests in flight; the rest get an explicit error.", ""},
	"gateway.shutdown_timeout":       {"How long a stopping vagentd (restart, upgrade, stop) waits for requests in flight; the rest get an explicit error. Keep it under vagentd.service's TimeoutStopSec (90s).", ""},
	"gateway.fairness_window":        {"How long a running agent keeps taking new requests while requests for another agent wait.", ""},
	"gateway.request_timeout":        {"Bound on one request to a running engine.", ""},
	"gateway.max_body_mib":           {"Largest request body accepted, in MiB; past it: 413. Memory follows the bytes that arrive, never the declared Content-Length.", ""},
	"gateway.header_timeout":         {"How long a client may take to send a request's headers; past it the connection is closed.", ""},
	"gateway.body_timeout":           {"How long a client may take to send a request's body once its headers arrived; past it: 408. Responses, streams included, are not bounded by it.", ""},
	"gateway.keepalive_timeout":      {"An idle client connection is closed after this long between requests.", ""},
	"gateway.max_connections":        {"Open client connections on `listen`; past it new connections wait in the kernel's backlog until one closes. Also vagentd.socket's Backlog=: how many new connections may wait while vagentd restarts (the kernel caps it at net.core.somaxconn).", ""},
	"gateway.max_requests_per_key":   {"Inference requests one key may have open at once (queued, sending its body, or being served); past it: 429 with Retry-After. Without a keys file every client counts as one anonymous key.", ""},
	"batch.max_file_mib":             {"Largest file `POST /v1/files` accepts for the Batch API, in MiB; past it: 413, refused before the body is read when its length is declared, and nothing is stored. Uploads stream to disk: memory does not grow with them. Output and error files are not bounded by it.", ""},
	"units.user":                     {"The user engines run as; empty keeps systemd's default (root). A lowercase letter or `_`, then lowercase letters, digits, `_` or `-`, at most 31 in all (systemd's rule).", "`User=`"},
	"units.group":                    {"The group engines run as; empty means the user's primary group. Named as units.user.", "`Group=`"},
	"units.restart_sec":              {"Pause before systemd restarts a crashed engine.", "`RestartSec=`"},
	"units.start_timeout":            {"How long systemd lets an engine's start job run.", "`TimeoutStartSec=`"},
	"units.stop_timeout":             {"How long systemd waits for an engine to stop before SIGKILL.", "`TimeoutStopSec=`"},
	"units.start_limit_burst":        {"Starts allowed per start_limit_interval before systemd gives up.", "`StartLimitBurst=`"},
	"units.start_limit_interval":     {"The window of start_limit_burst.", "`StartLimitIntervalSec=`"},
	"supervisor.health_timeout":      {"Bound on the wait for an engine's /health after its unit starts.", ""},
	"supervisor.health_interval":     {"How often /health is polled during a start.", ""},
	"supervisor.release_timeout":     {"Bound on the wait for a stopped engine's GPU memory to show free.", ""},
	"supervisor.dbus_timeout":        {"Bound on each D-Bus call to systemd.", ""},
	"supervisor.switch_mode":         {"How a switch makes room, for agents that set no switch_mode: \"restart\" stops the other engine (the next switch to it is a cold start), \"sleep\" puts it to sleep with vLLM's sleep mode (its weights wait in host RAM; the next switch to it is a wake, well under a second).", "`--enable-sleep-mode`, `VLLM_SERVER_DEV_MODE=1` for sleep agents"},
	"supervisor.host_ram_budget_mib": {"Host RAM that sleeping agents may hold with their weights. Past it the least recently used sleeper is stopped for real; an agent whose weights alone exceed it sleeps at level 2. 0 means half of the host's MemAvailable (plus what sleepers already hold), read at each switch.", ""},
	"supervisor.start_backoff":       {"How long vagentd refuses to start an agent again after its start failed (the gateway answers 503 with Retry-After and the failure's root cause). Each failure in a row doubles it up to start_backoff_max; a successful start, or `vagentctl restart`, clears it. 0 turns the backoff off. systemd's own start limit (units.start_limit_*) is never reset by vagent.", ""},
	"supervisor.start_backoff_max":   {"The longest start backoff (start_backoff doubled per failure in a row stops growing here).", ""},
	"work.concurrency":               {"Background requests (batch lines, pipeline stages) in flight at once, all agents together. A client's request for an agent that cannot run beside the one background work uses waits for at most these to finish before its switch.", ""},
	"work.max_attempts":              {"How often a batch line or pipeline stage is sent when the gateway or engine could not serve it (5xx, 429, a cut request); then it fails. A 4xx answer fails it at once.", ""},
	"work.max_yield":                 {"How long background work for an agent gives way to clients of agents that cannot run beside it. Past it, that work takes its turn (one switch, then the gateway's fairness window) even while clients wait, so a steady stream of clients cannot starve a batch or a run. 0: it always gives way.", ""},
	"work.retention":                 {"How long finished batches and pipeline runs, their items and their files are kept (STATE/work), and the run directories of pipeline runs (STATE/runs) once their runs are gone; files no job uses are kept as long from their upload. 0 keeps everything.", ""},
}

// agentDocs documents every key of an agent file.
var agentDocs = map[string]keyDoc{
	"model":                       {"A Hugging Face repo id (ORG/NAME) or an existing local directory: absolute, or relative to the agent file when it starts with `.` (`./models/x`); `..` is refused.", "`vllm serve MODEL` (absolute)"},
	"revision":                    {"Branch, tag or commit of the model.", "`--revision` (when not main)"},
	"served_names":                {"Model names the engine answers to; the first is the metrics label.", "`--served-model-name`"},
	"aliases":                     {"More names clients may use; the gateway rewrites them.", ""},
	"port":                        {"Unset (the default): the engine listens on the unix socket `RUN/engines/NAME.sock` (vLLM 0.10.1 and later), in a directory only vagent's user and group may enter, and opens no TCP port. Set: the engine listens on 127.0.0.1 at this port, unique per agent, where every local user reaches its routes outside /v1 (vLLM checks its key only there); versions before 0.10.1 need it.", "`--uds` / `--host 127.0.0.1 --port`"},
	"listen":                      {"An address (host:port) where vagentd serves this agent on a listener of its own: every request there goes to this agent whatever its `model` says, with the keys, limits, queueing, switching and metrics of gateway.listen. For clients that have one base URL per agent. Its port must differ from gateway.listen, every other agent's listen and every engine's port. Without a keys file it must be a loopback address. vagentd.socket holds it across vagentd's restarts when it is an IP address and port.", ""},
	"gpus":                        {"GPU indexes (PCI bus order, as nvidia-smi) the engine sees; several only with tensor parallelism.", "`CUDA_VISIBLE_DEVICES=`"},
	"gpu_memory_utilization":      {"Fraction of the GPU's total memory this engine may use, in (0, 1]: its budget.", "`--gpu-memory-utilization`"},
	"kv_cache_memory_bytes":       {"A fixed KV cache size; vLLM then ignores the utilization for the KV size (not for its free-memory check).", "`--kv-cache-memory-bytes`"},
	"max_model_len":               {"Longest context; 0 takes the model's.", "`--max-model-len`"},
	"dtype":                       {"auto, half, float16, bfloat16, float, float32.", "`--dtype` (when not auto)"},
	"quantization":                {"Leave empty for AWQ checkpoints (vLLM picks awq_marlin).", "`--quantization`"},
	"kv_cache_dtype":              {"auto, fp8, fp8_e4m3, fp8_e5m2 (fp8 halves KV bytes).", "`--kv-cache-dtype` (when not auto)"},
	"enable_prefix_caching":       {"Prefix caching on or off; unset keeps vLLM's default (on).", "`--enable-prefix-caching` / `--no-enable-prefix-caching`"},
	"max_num_seqs":                {"Most sequences in a batch; 0 lets vLLM choose.", "`--max-num-seqs`"},
	"tensor_parallel_size":        {"GPUs one engine spans; must equal the number of gpus.", "`--tensor-parallel-size` (when above 1)"},
	"enforce_eager":               {"No CUDA graphs: less memory, slower.", "`--enforce-eager`"},
	"chat_template":               {"An inline template (one line), the name of one of vLLM's built-in templates, or a template file: absolute, or relative to the agent file when it starts with `.`.", "`--chat-template` (a file as an absolute path)"},
	"trust_remote_code":           {"Run the model repository's own code.", "`--trust-remote-code`"},
	"tool_call_parser":            {"Tool-call parser for OpenAI tools (e.g. hermes).", "`--enable-auto-tool-choice --tool-call-parser`"},
	"reasoning_parser":            {"Reasoning parser for reasoning models.", "`--reasoning-parser`"},
	"sampling.temperature":        {"Default temperature.", "`--override-generation-config`"},
	"sampling.top_p":              {"Default top-p, in (0, 1].", "`--override-generation-config`"},
	"sampling.top_k":              {"Default top-k; -1 is off.", "`--override-generation-config`"},
	"sampling.min_p":              {"Default min-p, in [0, 1].", "`--override-generation-config`"},
	"sampling.repetition_penalty": {"Default repetition penalty.", "`--override-generation-config`"},
	"sampling.max_tokens":         {"Default completion length: the gateway puts it into requests that set no max_tokens. Not a cap: a request may ask for more. (vLLM reads a max_new_tokens in --override-generation-config as a cap on every request, so vagent never renders it there.)", "nothing: the gateway's default"},
	"system_prompt":               {"Prepended by the gateway when a request has no system message; may span lines.", ""},
	"env":                         {"Extra environment for the engine; vagent's own variables cannot be overridden and names that carry secrets are refused (see `engine.env`).", "`Environment=`"},
	"extra_args":                  {"More vllm serve arguments, verbatim; refused if they repeat a flag vagent sets or the version lacks them. A value starting with `-` must be a whole number (`-1`) or be attached to its flag (`--seed=-1e5`): vllm serve reads other such words as options.", "end of `ExecStart=`"},
	"priority":                    {"Eviction order: lower priority agents are evicted first.", ""},
	"idle_timeout":                {"Stop the agent after this long without requests (a sleeping one too, which then frees its host RAM); 0 never.", ""},
	"pinned":                      {"Never evicted by a switch, never stopped for idleness.", ""},
	"switch_mode":                 {"\"restart\" or \"sleep\"; empty takes supervisor.switch_mode. A sleep agent is put to sleep, not stopped, when another agent needs its GPU, and woken (with a 1-token warm-up) when a request needs it again. Its unit carries no `Conflicts=`: a sleeping engine stays up beside the one that runs.", "`--enable-sleep-mode`, `VLLM_SERVER_DEV_MODE=1` (sleep)"},
	"sleep_level":                 {"vLLM's sleep level for a sleep agent: 1 moves the weights to host RAM (fastest wake), 2 drops them (reloaded from disk on wake; no host RAM held). A level-1 sleep that cannot fit the host RAM budget is done at level 2.", "`POST /sleep?level=`"},
}

// RefKey is one documented configuration key.
type RefKey struct {
	Key, Type, Default, Renders, Doc string
}

// Reference lists every key of the main file and of an agent file with its
// type, default and meaning. It fails when a key has no documentation or
// documentation names a key that no longer exists.
func Reference() (main, agent []RefKey, err error) {
	d := Defaults()
	a := agentDefaults()
	main, err = reference(reflect.ValueOf(d), mainDocs, map[string]bool{"Path": true, "Agents": true})
	if err != nil {
		return nil, nil, err
	}
	agent, err = reference(reflect.ValueOf(a), agentDocs, nil)
	return main, agent, err
}

func reference(v reflect.Value, docs map[string]keyDoc, skip map[string]bool) ([]RefKey, error) {
	var out []RefKey
	seen := map[string]bool{}
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if skip[f.Name] {
				continue
			}
			name := f.Tag.Get("toml")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			key := name
			if prefix != "" {
				key = prefix + "." + name
			}
			fv := v.Field(i)
			if fv.Kind() == reflect.Struct && fv.Type() != reflect.TypeOf(Duration{}) {
				walk(fv, key)
				continue
			}
			seen[key] = true
			d := docs[key]
			out = append(out, RefKey{Key: key, Type: typeName(fv.Type()), Default: defaultText(fv), Renders: d.renders, Doc: d.doc})
		}
	}
	walk(v, "")
	var errs []string
	for _, k := range out {
		if k.Doc == "" {
			errs = append(errs, "undocumented key "+k.Key)
		}
	}
	for k := range docs {
		if !seen[k] {
			errs = append(errs, "documented key "+k+" does not exist")
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return nil, fmt.Errorf("config reference: %s", strings.Join(errs, "; "))
	}
	return out, nil
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(Duration{}):
		return "duration (\"90s\", \"30m\")"
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t.Kind() == reflect.Slice:
		return "array of " + typeName(t.Elem())
	case t.Kind() == reflect.Map:
		return "table of strings"
	case t.Kind() == reflect.Float64:
		return "float"
	case t.Kind() == reflect.Int, t.Kind() == reflect.Uint64:
		return "integer"
	}
	return t.Kind().String()
}

func defaultText(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeOf(Duration{}):
		d := v.Interface().(Duration)
		if d.Duration == 0 {
			return "0 (off)"
		}
		return fmt.Sprintf("%q", d.String())
	case v.Kind() == reflect.Pointer || v.Kind() == reflect.Map:
		if v.IsNil() {
			return "unset"
		}
	case v.Kind() == reflect.Slice:
		if v.Len() == 0 {
			return "[]"
		}
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case v.Kind() == reflect.String:
		if v.String() == "" {
			return "empty"
		}
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v.Interface())
}

// WriteReference writes the configuration reference as Markdown.
func WriteReference(w io.Writer) error {
	main, agent, err := Reference()
	if err != nil {
		return err
	}
	fmt.Fprint(w, `# Configuration reference

<!-- Generated from the config package by "make docs"; a test fails when this file is stale. -->

vagent reads `+"`/etc/vagent/vagent.toml`"+` (or `+"`--config PATH`, `$VAGENT_CONFIG`"+`) and one file per agent in
its agents directory; the agent's name is the file name (`+"`agents/dev.toml` → `vagent@dev.service`"+`).
Every key is optional unless marked otherwise below. An unknown key is an error naming the file and line.
Every path is absolute and normalized (no `+"`.`"+` or `+"`..`"+` component, no `+"`//`"+`, no trailing `+"`/`"+`, no control
characters), at most 4095 bytes with components of at most 255 (a directory at most 3839, so that
the files vagent puts in it fit): systemd ignores a path directive that breaks these rules, and for
`+"`EnvironmentFile=`"+` that would start the engines without their API key.

## vagent.toml

`)
	table(w, main, true)
	fmt.Fprint(w, `
## Agent files (agents/NAME.toml)

`+"`model`"+` is required. `+"`[sampling]` and `[env]`"+` are tables of their own.

`)
	table(w, agent, false)
	return nil
}

func table(w io.Writer, keys []RefKey, sections bool) {
	fmt.Fprintln(w, "| key | type | default | renders to | meaning |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, k := range keys {
		key := k.Key
		if sections {
			if i := strings.IndexByte(key, '.'); i > 0 {
				key = "[" + key[:i] + "] " + key[i+1:]
			}
		}
		fmt.Fprintf(w, "| `%s` | %s | %s | %s | %s |\n", key, k.Type, strings.ReplaceAll(k.Default, "|", "\\|"), k.Renders, k.Doc)
	}
}
