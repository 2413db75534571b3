// Package config loads and validates vagent's TOML configuration: one main
// file (vagent.toml) and one file per agent in an agents directory beside it.
// It is the only package that knows the file format; everything else works on
// the typed values it returns.
package config

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// DefaultPath is the main configuration file used when neither --config nor
// VAGENT_CONFIG names another.
const DefaultPath = "/etc/vagent/vagent.toml"

// EnvPath is the environment variable that selects another main file.
const EnvPath = "VAGENT_CONFIG"

// Engine kinds.
const (
	EngineVLLM = "vllm"
	EngineSim  = "sim"
)

// GPU backends.
const (
	GPUBackendNVML = "nvml"
	GPUBackendSim  = "sim"
	// GPUBackendAuto is NVML where engines are vLLM and an NVIDIA driver
	// answers, else the simulator; gpu.ResolveBackend decides.
	GPUBackendAuto = "auto"
)

// Config is the whole validated configuration: the main file plus every agent.
type Config struct {
	// Path is the main file this was loaded from.
	Path string

	Engine     Engine
	Paths      Paths
	GPU        GPU
	Gateway    Gateway
	Units      Units
	Supervisor Supervisor
	Batch      Batch
	Work       Work

	// Agents are sorted by name.
	Agents []*Agent
}

// Engine says which program serves an agent and where it lives.
type Engine struct {
	// Kind is "vllm" (a real vllm serve from the managed venv) or "sim"
	// (vllm-sim, the simulator used without a GPU and by every test).
	Kind string `toml:"kind"`
	// VLLMVersion is the vLLM version whose flag set units are rendered for.
	VLLMVersion string `toml:"vllm_version"`
	// Venv is the virtual environment holding vLLM; the engine binary is
	// Venv/bin/vllm.
	Venv string `toml:"venv"`
	// SimBinary is the vllm-sim executable used when Kind is "sim".
	SimBinary string `toml:"sim_binary"`
	// Python is the interpreter `vagentctl install` builds the venv with:
	// empty means "python3" with pip and "3.12" with uv (which fetches a
	// managed Python if the host has none).
	Python string `toml:"python"`
	// IndexURL replaces PyPI for `vagentctl install` (a mirror); empty
	// means the installer's default.
	IndexURL string `toml:"index_url"`
	// ExtraIndexURLs are searched besides the index (pip's
	// --extra-index-url).
	ExtraIndexURLs []string `toml:"extra_index_urls"`
	// FindLinks are directories or pages of wheels (--find-links); given
	// without any index they make the install offline (--no-index).
	FindLinks []string `toml:"find_links"`
	// Env is extra environment for every agent (agent env wins).
	Env map[string]string `toml:"env"`
}

// Paths are the directories vagent reads and writes.
type Paths struct {
	// UnitDir receives the template unit and the per-agent drop-ins.
	UnitDir string `toml:"unit_dir"`
	// StateDir holds engines, keys and locks.
	StateDir string `toml:"state_dir"`
	// RunDir holds runtime files (locks, sockets).
	RunDir string `toml:"run_dir"`
	// HFHome is the Hugging Face home for model weights (HF_HOME).
	HFHome string `toml:"hf_home"`
	// CacheDir receives compiler and kernel caches (Triton, torch, vLLM).
	CacheDir string `toml:"cache_dir"`
	// AgentsDir holds one TOML file per agent; relative to the main file.
	AgentsDir string `toml:"agents_dir"`
}

// GPU selects the source of GPU facts and how much memory to keep free.
type GPU struct {
	// Backend is "nvml" (the NVIDIA driver), "sim" (the simulator's
	// ledger) or "auto" (see GPUBackendAuto). Once loaded by a command it
	// is "nvml" or "sim": gpu.ResolveBackend replaces "auto".
	Backend string `toml:"backend"`
	// BackendReason says why "auto" became Backend; empty when the file
	// named the backend.
	BackendReason string `toml:"-"`
	// ReserveMiB is memory per GPU that vagent never plans to use.
	ReserveMiB uint64 `toml:"reserve_mib"`
	// SimLedger is the ledger file shared by every simulator process.
	SimLedger string `toml:"sim_ledger"`
	// SimCount is how many GPUs the simulator pretends to have.
	SimCount int `toml:"sim_count"`
	// SimTotalMiB is the memory of each simulated GPU.
	SimTotalMiB uint64 `toml:"sim_total_mib"`
	// SimLoadSeconds, when set, overrides the simulator's model-size-based
	// load time for every agent.
	SimLoadSeconds float64 `toml:"sim_load_seconds"`
}

// Gateway configures vagentd's OpenAI-compatible front end and scheduler.
type Gateway struct {
	// Listen is the address of the OpenAI-compatible endpoint.
	Listen string `toml:"listen"`
	// KeysFile lists client API keys; empty means no keys, and then vagentd
	// refuses any non-loopback listen address.
	KeysFile string `toml:"keys_file"`
	// ControlSocket is the unix socket vagentctl talks to.
	ControlSocket string `toml:"control_socket"`
	// ControlGroup owns the control socket (mode 0660); empty keeps root's.
	ControlGroup string `toml:"control_group"`
	// QueueLength bounds requests waiting for an agent; past it: 429.
	QueueLength int `toml:"queue_length"`
	// MaxWait bounds how long a request waits for its agent, cold start
	// included; past it: 503 with Retry-After.
	MaxWait Duration `toml:"max_wait"`
	// DrainTimeout bounds how long a switch waits for an evicted agent's
	// requests in flight; the rest are cut with an explicit error.
	DrainTimeout Duration `toml:"drain_timeout"`
	// ShutdownTimeout bounds how long a stopping vagentd (SIGTERM: a
	// restart, an upgrade, a stop) waits for its requests in flight; the
	// rest are cut with an explicit error. vagentd.service's TimeoutStopSec
	// must stay above it.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// FairnessWindow is how long a running agent keeps taking new requests
	// while requests for another agent wait; then the switch happens.
	FairnessWindow Duration `toml:"fairness_window"`
	// RequestTimeout bounds one request to an engine once it is running.
	RequestTimeout Duration `toml:"request_timeout"`

	// The gateway's own bounds, so that no client can starve it.

	// MaxBodyMiB bounds a request body; past it: 413.
	MaxBodyMiB int `toml:"max_body_mib"`
	// HeaderTimeout bounds how long a client may take to send a request's
	// headers; past it the connection is closed.
	HeaderTimeout Duration `toml:"header_timeout"`
	// BodyTimeout bounds how long a client may take to send a request's
	// body once its headers arrived; past it: 408.
	BodyTimeout Duration `toml:"body_timeout"`
	// KeepaliveTimeout closes a client connection idle this long between
	// requests.
	KeepaliveTimeout Duration `toml:"keepalive_timeout"`
	// MaxConnections bounds open client connections on the listen address;
	// connections past it wait in the kernel's backlog until one closes.
	MaxConnections int `toml:"max_connections"`
	// MaxRequestsPerKey bounds the inference requests one key has open at
	// once (waiting, sending its body or being served); past it: 429.
	// Without a keys file all clients share one anonymous key.
	MaxRequestsPerKey int `toml:"max_requests_per_key"`
}

// Units holds settings rendered into every agent's unit.
type Units struct {
	// User runs the engines; empty means the unit's default (root).
	User string `toml:"user"`
	// Group runs the engines; empty means User's primary group.
	Group              string   `toml:"group"`
	RestartSec         Duration `toml:"restart_sec"`
	StartTimeout       Duration `toml:"start_timeout"`
	StopTimeout        Duration `toml:"stop_timeout"`
	StartLimitBurst    int      `toml:"start_limit_burst"`
	StartLimitInterval Duration `toml:"start_limit_interval"`
}

// Switch modes: how a switch makes room for another agent.
const (
	// SwitchRestart stops the agent's engine; the next switch to it is a
	// cold start.
	SwitchRestart = "restart"
	// SwitchSleep puts the engine to sleep (vLLM's sleep mode): its weights
	// go to host RAM and its KV cache is dropped, so the next switch to it
	// is a wake of well under a second instead of a cold start.
	SwitchSleep = "sleep"
)

// Supervisor bounds the waits of a switch and says how agents make room
// for each other.
type Supervisor struct {
	// HealthTimeout bounds the wait for an engine's /health after its unit starts.
	HealthTimeout Duration `toml:"health_timeout"`
	// HealthInterval is the /health poll period.
	HealthInterval Duration `toml:"health_interval"`
	// ReleaseTimeout bounds the wait for the GPU to show a stopped engine's memory back.
	ReleaseTimeout Duration `toml:"release_timeout"`
	// DBusTimeout bounds each D-Bus call.
	DBusTimeout Duration `toml:"dbus_timeout"`
	// SwitchMode is the default of every agent's switch_mode: "restart" or
	// "sleep".
	SwitchMode string `toml:"switch_mode"`
	// HostRAMBudgetMiB bounds the host RAM sleeping agents may hold with
	// their weights; 0 means half of what the host has available
	// (MemAvailable, plus what sleepers already hold) at each decision.
	HostRAMBudgetMiB uint64 `toml:"host_ram_budget_mib"`
	// StartBackoff is how long an agent whose start failed is refused
	// before the next try; each failure in a row doubles it, up to
	// StartBackoffMax. A success clears it. 0 turns the backoff off.
	StartBackoff Duration `toml:"start_backoff"`
	// StartBackoffMax bounds StartBackoff's doubling.
	StartBackoffMax Duration `toml:"start_backoff_max"`
}

// Batch bounds the OpenAI Batch API (/v1/files, /v1/batches).
type Batch struct {
	// MaxFileMiB bounds one uploaded file; past it: 413. A batch's output
	// and error files are not bounded by it.
	MaxFileMiB int `toml:"max_file_mib"`
}

// Work tunes background work: OpenAI batches and pipeline runs, run
// through the gateway grouped by agent.
type Work struct {
	// Concurrency bounds background requests in flight, all agents
	// together: a client's request for another agent waits for at most
	// these to finish before its switch.
	Concurrency int `toml:"concurrency"`
	// MaxAttempts bounds how often an item is sent when the gateway or
	// engine could not serve it (5xx, 429, a cut request).
	MaxAttempts int `toml:"max_attempts"`
	// Retention is how long finished jobs, their items and files are kept;
	// 0 keeps them until deleted.
	Retention Duration `toml:"retention"`
	// MaxYield bounds how long background work for an agent gives way to
	// clients of agents that cannot run beside it; past it, that work takes
	// its turn (a switch, then the gateway's fairness window) even while
	// clients wait. 0: it always gives way.
	MaxYield Duration `toml:"max_yield"`
}

// WorkDir holds the work store: the database of batches, pipeline runs and
// their items, and the files' contents.
func (c *Config) WorkDir() string { return c.Paths.StateDir + "/work" }

// Agent is one vLLM server: a model with tuned flags, rendered as the unit
// vagent@NAME.service.
type Agent struct {
	// Name comes from the file name (dev.toml → dev) and is the unit instance.
	Name string `toml:"-"`
	// File is the agent file this came from.
	File string `toml:"-"`

	Model       string   `toml:"model"`
	Revision    string   `toml:"revision"`
	ServedNames []string `toml:"served_names"`
	Aliases     []string `toml:"aliases"`
	// Port, when set, makes the engine listen on 127.0.0.1:Port instead of
	// its private unix socket (EngineSocket): vLLM then checks its key on
	// /v1 paths only, and every local user reaches the rest.
	Port int `toml:"port"`
	// Listen, when set, is an address (host:port) where vagentd serves
	// this agent alone: every request there goes to it, whatever its model.
	Listen string `toml:"listen"`
	// GPUs are the device indexes the engine sees (CUDA_VISIBLE_DEVICES);
	// more than one only with tensor parallelism.
	GPUs []int `toml:"gpus"`

	GPUMemoryUtilization float64 `toml:"gpu_memory_utilization"`
	KVCacheMemoryBytes   uint64  `toml:"kv_cache_memory_bytes"`
	MaxModelLen          int     `toml:"max_model_len"`
	Dtype                string  `toml:"dtype"`
	Quantization         string  `toml:"quantization"`
	KVCacheDtype         string  `toml:"kv_cache_dtype"`
	EnablePrefixCaching  *bool   `toml:"enable_prefix_caching"`
	MaxNumSeqs           int     `toml:"max_num_seqs"`
	TensorParallelSize   int     `toml:"tensor_parallel_size"`
	EnforceEager         bool    `toml:"enforce_eager"`
	ChatTemplate         string  `toml:"chat_template"`
	TrustRemoteCode      bool    `toml:"trust_remote_code"`
	ToolCallParser       string  `toml:"tool_call_parser"`
	ReasoningParser      string  `toml:"reasoning_parser"`

	// Sampling are the agent's default sampling parameters, rendered as
	// --override-generation-config.
	Sampling Sampling `toml:"sampling"`
	// SystemPrompt is prepended by the gateway when a request has none.
	SystemPrompt string `toml:"system_prompt"`
	// Env is extra environment for the engine.
	Env map[string]string `toml:"env"`
	// ExtraArgs are passed verbatim after the flags vagent sets.
	ExtraArgs []string `toml:"extra_args"`

	// Priority orders evictions: lower priority agents are evicted first.
	Priority int `toml:"priority"`
	// IdleTimeout stops the agent after this long without requests (0: never).
	IdleTimeout Duration `toml:"idle_timeout"`
	// Pinned agents are never stopped for idleness or evicted by a switch.
	Pinned bool `toml:"pinned"`
	// SwitchMode is "restart" or "sleep" (see SwitchSleep); empty takes
	// supervisor.switch_mode. Read it through Config.SwitchMode.
	SwitchMode string `toml:"switch_mode"`
	// SleepLevel is vLLM's sleep level for a sleep agent: 1 moves the
	// weights to host RAM (fast wake), 2 drops them (reloaded from disk on
	// wake, no host RAM held). A level-1 sleep that cannot fit the host RAM
	// budget is done at level 2.
	SleepLevel int `toml:"sleep_level"`
}

// Sampling are default sampling parameters. Unset fields are left to the model.
type Sampling struct {
	Temperature       *float64 `toml:"temperature"`
	TopP              *float64 `toml:"top_p"`
	TopK              *int     `toml:"top_k"`
	MinP              *float64 `toml:"min_p"`
	RepetitionPenalty *float64 `toml:"repetition_penalty"`
	MaxTokens         *int     `toml:"max_tokens"`
}

// Duration is a time.Duration written in TOML as a string such as "90s".
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as FormatDuration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// String is the duration as FormatDuration writes it.
func (d Duration) String() string { return FormatDuration(d.Duration) }

// FormatDuration writes d the way people write durations in the
// configuration: "10m", "1h", "1m30s", "250ms", without the zero units
// time.Duration.String adds ("10m0s", "1h0m0s"). time.ParseDuration reads
// every form back.
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Unit is the systemd unit name of the agent.
func (a *Agent) Unit() string { return UnitName(a.Name) }

// UnitName is the systemd unit of the agent called name.
func UnitName(name string) string { return "vagent@" + name + ".service" }

// Names are every name a client may use for the agent: its own name, its
// served names and its aliases, without duplicates.
func (a *Agent) Names() []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range append(append([]string{a.Name}, a.ServedNames...), a.Aliases...) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// ServedName is the model name the engine answers to.
func (a *Agent) ServedName() string {
	if len(a.ServedNames) > 0 {
		return a.ServedNames[0]
	}
	return a.Model
}

// Budget is the GPU memory, in bytes per GPU, the agent may take on a GPU of
// total bytes. It is vLLM's own per-instance rule: gpu_memory_utilization ×
// total, unless the agent pins kv_cache_memory_bytes, in which case vLLM
// ignores the utilization and the budget is the KV size plus weightsBytes (the
// per-GPU weights and overhead estimate; 0 when unknown falls back to the
// utilization rule, which over- rather than under-estimates). Rounded up,
// as vLLM's free-memory check rounds (math.ceil in request_memory,
// v1/worker/utils.py, 0.18): a byte less lets a start through that vLLM
// refuses.
func (a *Agent) Budget(total, weightsBytes uint64) uint64 {
	if a.KVCacheMemoryBytes > 0 && weightsBytes > 0 {
		return a.KVCacheMemoryBytes + weightsBytes
	}
	return uint64(math.Ceil(a.GPUMemoryUtilization * float64(total)))
}

// SwitchMode is how switches treat agent a: its own switch_mode, else
// supervisor.switch_mode, else "restart".
func (c *Config) SwitchMode(a *Agent) string {
	switch {
	case a.SwitchMode != "":
		return a.SwitchMode
	case c.Supervisor.SwitchMode != "":
		return c.Supervisor.SwitchMode
	}
	return SwitchRestart
}

// Sleeps reports whether switches put agent a to sleep rather than stop it.
func (c *Config) Sleeps(a *Agent) bool { return c.SwitchMode(a) == SwitchSleep }

// Level is the agent's sleep level, 1 when unset.
func (a *Agent) Level() int {
	if a.SleepLevel == 2 {
		return 2
	}
	return 1
}

// Agent returns the agent called name, or nil.
func (c *Config) Agent(name string) *Agent {
	for _, a := range c.Agents {
		if a.Name == name {
			return a
		}
	}
	return nil
}

// EngineKeyFile is the environment file holding the engines' API key
// (VLLM_API_KEY), readable only by root and the engine user.
func (c *Config) EngineKeyFile() string { return c.Paths.StateDir + "/engine-key.env" }

// PipelinesDir holds one TOML file per pipeline (vagentctl run NAME),
// beside the agents directory: "pipelines" next to the main file.
func (c *Config) PipelinesDir() string { return filepath.Join(filepath.Dir(c.Path), "pipelines") }

// RunsDir holds one directory per pipeline run, with its answers as
// Markdown and JSONL; vagentd writes them readable by the control group.
func (c *Config) RunsDir() string { return c.Paths.StateDir + "/runs" }

// EngineSocketDir holds the unix sockets of the engines that listen on one
// (agents without a port): only the engine user and group may enter it, so
// no other local user reaches an engine's routes, checked by a key or not.
func (c *Config) EngineSocketDir() string { return c.Paths.RunDir + "/engines" }

// EngineSocket is the unix socket the engine of agent name listens on when
// it has no port.
func (c *Config) EngineSocket(name string) string { return c.EngineSocketDir() + "/" + name + ".sock" }

// MaxSocketPath is the longest path a unix socket may have: sun_path holds
// 108 bytes with the terminating NUL.
const MaxSocketPath = 107

// SharesGPU reports whether two agents use at least one GPU in common.
func SharesGPU(a, b *Agent) bool {
	for _, x := range a.GPUs {
		for _, y := range b.GPUs {
			if x == y {
				return true
			}
		}
	}
	return false
}

// MayConflict reports whether units of a and b may carry Conflicts= when
// they cannot share a GPU: not when either is a sleep agent, since a
// sleeping engine stays up beside the one that runs (holding only a small
// residual of its GPU memory), and systemd would stop it.
func (c *Config) MayConflict(a, b *Agent) bool { return !c.Sleeps(a) && !c.Sleeps(b) }

// CannotShare reports whether two agents cannot run at once on a GPU of
// total bytes (0 if unknown) with reserve bytes kept free: they share a GPU and their
// budgets together exceed what vagent may use of it. Units render these pairs
// as Conflicts=, and the supervisor evicts them before a start.
func CannotShare(a, b *Agent, total, reserve uint64) bool {
	if a == b || !SharesGPU(a, b) {
		return false
	}
	if total == 0 {
		// The GPU's size is unknown (rendering without a driver): judge by
		// the utilization fractions, which do not depend on it.
		return a.GPUMemoryUtilization+b.GPUMemoryUtilization > 1
	}
	usable := uint64(0)
	if total > reserve {
		usable = total - reserve
	}
	return a.Budget(total, 0)+b.Budget(total, 0) > usable
}

// CannotShareOn is CannotShare on every GPU a and b share, with totals the
// GPUs' sizes by index (a size not in totals is unknown): they cannot run
// together when any of those GPUs cannot hold both, as units render
// Conflicts= for them. Cards of different sizes can differ: the reserve is
// a larger part of a smaller card.
func CannotShareOn(a, b *Agent, totals map[int]uint64, reserve uint64) bool {
	for _, g := range a.GPUs {
		if slices.Contains(b.GPUs, g) && CannotShare(a, b, totals[g], reserve) {
			return true
		}
	}
	return false
}
