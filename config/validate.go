package config

import (
	"fmt"
	"net"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

var (
	// agentNameRE keeps names safe as a systemd instance, a file name and a
	// metric label: no escaping is ever needed.
	agentNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	hubIDRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	envNameRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// Names that carry credentials by convention. The engine's environment
	// is rendered into a world-readable drop-in and exposed over D-Bus, so
	// they are refused rather than published. HF_TOKEN_PATH is a path and
	// passes.
	secretEnvRE = regexp.MustCompile(`(?i)(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS?)$`)
	versionRE   = regexp.MustCompile(`^[0-9]+\.[0-9]+(\.[0-9]+)?([a-z0-9.+-]*)$`)
	tokenRE     = regexp.MustCompile(`^[^\s]+$`)
)

var (
	dtypes       = []string{"auto", "half", "float16", "bfloat16", "float", "float32"}
	kvCacheTypes = []string{"auto", "fp8", "fp8_e4m3", "fp8_e5m2"}
)

// ManagedFlags are the vllm serve flags vagent renders itself from typed
// fields; extra_args may not repeat them, since a second value would silently
// win over the typed one.
var ManagedFlags = []string{
	"--host", "--port", "--served-model-name", "--api-key",
	"--gpu-memory-utilization", "--kv-cache-memory-bytes", "--max-model-len",
	"--dtype", "--quantization", "-q", "--kv-cache-dtype",
	"--enable-prefix-caching", "--no-enable-prefix-caching",
	"--max-num-seqs", "--tensor-parallel-size", "-tp",
	"--enforce-eager", "--no-enforce-eager", "--chat-template",
	"--override-generation-config", "--revision", "--download-dir",
	"--trust-remote-code", "--no-trust-remote-code",
	"--enable-auto-tool-choice", "--no-enable-auto-tool-choice",
	"--tool-call-parser", "--reasoning-parser",
	"--enable-sleep-mode", "--no-enable-sleep-mode",
}

// ManagedEnv are environment variables vagent sets itself: in every unit,
// and VLLM_SERVER_DEV_MODE in sleep agents' units only (it opens vLLM's
// unauthenticated control routes, which the gateway never forwards).
var ManagedEnv = []string{"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "VLLM_API_KEY", "HF_HOME", "HF_HUB_OFFLINE", "VLLM_SERVER_DEV_MODE"}

// switchModes are the values of switch_mode.
var switchModes = []string{SwitchRestart, SwitchSleep}

type fieldChecker struct {
	file  string
	agent string
	data  []byte
	errs  Errors
}

func (f *fieldChecker) fail(field, format string, args ...any) {
	f.errs = append(f.errs, &Error{
		File: f.file, Agent: f.agent, Field: field,
		Line: lineOf(f.data, toml.Key(strings.Split(field, "."))),
		Msg:  fmt.Sprintf(format, args...),
	})
}

func oneOf(v string, set []string) bool {
	for _, s := range set {
		if v == s {
			return true
		}
	}
	return false
}

func (c *Config) validateMain(data []byte) Errors {
	f := &fieldChecker{file: c.Path, data: data}
	checkNoControl(f, reflect.ValueOf(c.Engine), "engine")
	checkNoControl(f, reflect.ValueOf(c.Paths), "paths")
	checkNoControl(f, reflect.ValueOf(c.GPU), "gpu")
	checkNoControl(f, reflect.ValueOf(c.Gateway), "gateway")
	checkNoControl(f, reflect.ValueOf(c.Units), "units")
	checkNoControl(f, reflect.ValueOf(c.Supervisor), "supervisor")
	checkNoControl(f, reflect.ValueOf(c.Work), "work")

	if !oneOf(c.Engine.Kind, []string{EngineVLLM, EngineSim}) {
		f.fail("engine.kind", "must be %q or %q, not %q", EngineVLLM, EngineSim, c.Engine.Kind)
	}
	if !versionRE.MatchString(c.Engine.VLLMVersion) {
		f.fail("engine.vllm_version", "must be a version such as \"0.18.0\", not %q", c.Engine.VLLMVersion)
	}
	checkEnv(f, "engine.env", c.Engine.Env)
	c.checkPaths(f)
	if !oneOf(c.GPU.Backend, []string{GPUBackendAuto, GPUBackendNVML, GPUBackendSim}) {
		f.fail("gpu.backend", "must be %q, %q or %q, not %q", GPUBackendAuto, GPUBackendNVML, GPUBackendSim, c.GPU.Backend)
	}
	if c.GPU.Backend != GPUBackendNVML || c.Engine.Kind == EngineSim {
		if c.GPU.SimCount < 1 || c.GPU.SimCount > 64 {
			f.fail("gpu.sim_count", "must be between 1 and 64, not %d", c.GPU.SimCount)
		}
		if c.GPU.SimTotalMiB == 0 {
			f.fail("gpu.sim_total_mib", "must be positive")
		}
	}
	if c.GPU.SimLoadSeconds < 0 {
		f.fail("gpu.sim_load_seconds", "must not be negative")
	}
	if _, port, err := net.SplitHostPort(c.Gateway.Listen); err != nil {
		f.fail("gateway.listen", "must be host:port, not %q", c.Gateway.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		f.fail("gateway.listen", "port must be 1-65535, not %q", port)
	}
	if c.Gateway.QueueLength < 1 {
		f.fail("gateway.queue_length", "must be at least 1")
	}
	if c.Gateway.MaxBodyMiB < 1 || c.Gateway.MaxBodyMiB > 4096 {
		f.fail("gateway.max_body_mib", "must be between 1 and 4096, not %d", c.Gateway.MaxBodyMiB)
	}
	if c.Batch.MaxFileMiB < 1 || c.Batch.MaxFileMiB > 1<<20 {
		f.fail("batch.max_file_mib", "must be between 1 and 1048576 (1 TiB), not %d", c.Batch.MaxFileMiB)
	}
	if c.Gateway.MaxConnections < 1 {
		f.fail("gateway.max_connections", "must be at least 1")
	}
	if c.Gateway.MaxRequestsPerKey < 1 {
		f.fail("gateway.max_requests_per_key", "must be at least 1")
	}
	for key, d := range map[string]Duration{
		"gateway.max_wait": c.Gateway.MaxWait, "gateway.drain_timeout": c.Gateway.DrainTimeout,
		"gateway.shutdown_timeout": c.Gateway.ShutdownTimeout,
		"gateway.request_timeout":  c.Gateway.RequestTimeout,
		"gateway.header_timeout":   c.Gateway.HeaderTimeout, "gateway.body_timeout": c.Gateway.BodyTimeout,
		"gateway.keepalive_timeout": c.Gateway.KeepaliveTimeout,
	} {
		if d.Duration <= 0 {
			f.fail(key, "must be positive")
		}
	}
	if c.Gateway.FairnessWindow.Duration < 0 {
		f.fail("gateway.fairness_window", "must not be negative")
	}
	for key, d := range map[string]Duration{
		"units.restart_sec": c.Units.RestartSec, "units.start_timeout": c.Units.StartTimeout,
		"units.stop_timeout": c.Units.StopTimeout, "units.start_limit_interval": c.Units.StartLimitInterval,
		"supervisor.health_timeout": c.Supervisor.HealthTimeout, "supervisor.health_interval": c.Supervisor.HealthInterval,
		"supervisor.release_timeout": c.Supervisor.ReleaseTimeout, "supervisor.dbus_timeout": c.Supervisor.DBusTimeout,
		"supervisor.start_backoff": c.Supervisor.StartBackoff, "supervisor.start_backoff_max": c.Supervisor.StartBackoffMax,
	} {
		if d.Duration < 0 {
			f.fail(key, "must not be negative")
		}
	}
	for key, d := range map[string]Duration{
		"units.start_timeout": c.Units.StartTimeout, "units.stop_timeout": c.Units.StopTimeout,
		"supervisor.health_interval": c.Supervisor.HealthInterval, "supervisor.dbus_timeout": c.Supervisor.DBusTimeout,
	} {
		if d.Duration == 0 {
			f.fail(key, "must be positive")
		}
	}
	if c.Units.StartLimitBurst < 1 {
		f.fail("units.start_limit_burst", "must be at least 1")
	}
	if b, m := c.Supervisor.StartBackoff.Duration, c.Supervisor.StartBackoffMax.Duration; b > 0 && m < b {
		f.fail("supervisor.start_backoff_max", "must be at least start_backoff (%s), not %s", b, m)
	}
	if c.Work.Concurrency < 1 || c.Work.Concurrency > 1024 {
		f.fail("work.concurrency", "must be between 1 and 1024, not %d", c.Work.Concurrency)
	}
	if c.Work.MaxAttempts < 1 || c.Work.MaxAttempts > 100 {
		f.fail("work.max_attempts", "must be between 1 and 100, not %d", c.Work.MaxAttempts)
	}
	if c.Work.Retention.Duration < 0 {
		f.fail("work.retention", "must not be negative (0 keeps everything)")
	}
	if c.Work.MaxYield.Duration < 0 {
		f.fail("work.max_yield", "must not be negative (0: background work always gives way to clients)")
	}
	if !oneOf(c.Supervisor.SwitchMode, switchModes) {
		f.fail("supervisor.switch_mode", "must be %q or %q, not %q", SwitchRestart, SwitchSleep, c.Supervisor.SwitchMode)
	}
	return f.errs
}

func (a *Agent) validate(data []byte) Errors {
	f := &fieldChecker{file: a.File, agent: a.Name, data: data}
	if !agentNameRE.MatchString(a.Name) {
		f.errs = append(f.errs, &Error{File: a.File, Agent: a.Name, Field: "name",
			Msg: "agent names (the file name without .toml) must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"})
	}
	checkNoControl(f, reflect.ValueOf(*a), "")

	switch {
	case a.Model == "":
		f.fail("model", "must be set (a Hugging Face repo id such as \"Qwen/Qwen2.5-7B-Instruct-AWQ\" or a local directory)")
	case IsLocalModel(a.Model):
		if a.resolveModel(f) && len(a.ServedNames) == 0 {
			f.fail("served_names", "must be set when model is a local directory")
		}
	case !hubIDRE.MatchString(a.Model):
		f.fail("model", "%q is neither a Hugging Face repo id (ORG/NAME) nor an existing directory", a.Model)
	}
	a.resolveChatTemplate(f)
	if err := CheckRevision(a.Revision); err != nil {
		f.fail("revision", "%v", err)
	}
	for i, n := range a.ServedNames {
		if !tokenRE.MatchString(n) {
			f.fail("served_names", "entry %d %q must be non-empty without spaces", i+1, n)
		}
	}
	for i, n := range a.Aliases {
		if !tokenRE.MatchString(n) {
			f.fail("aliases", "entry %d %q must be non-empty without spaces", i+1, n)
		}
	}
	if a.Listen != "" {
		if _, port, err := net.SplitHostPort(a.Listen); err != nil {
			f.fail("listen", "must be host:port, not %q", a.Listen)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			f.fail("listen", "port must be 1-65535, not %q", port)
		}
	}
	if a.Port != 0 && (a.Port < 1 || a.Port > 65535) {
		f.fail("port", "must be 1-65535 (or unset, for a unix socket), not %d", a.Port)
	}
	if len(a.GPUs) == 0 {
		f.fail("gpus", "must list at least one GPU index")
	}
	seen := map[int]bool{}
	for _, g := range a.GPUs {
		if g < 0 {
			f.fail("gpus", "GPU index %d must not be negative", g)
		}
		if seen[g] {
			f.fail("gpus", "GPU %d is listed twice", g)
		}
		seen[g] = true
	}
	if a.TensorParallelSize < 1 {
		f.fail("tensor_parallel_size", "must be at least 1")
	} else if len(a.GPUs) != a.TensorParallelSize {
		f.fail("gpus", "lists %d GPUs but tensor_parallel_size is %d: they must match", len(a.GPUs), a.TensorParallelSize)
	}
	if !(a.GPUMemoryUtilization > 0 && a.GPUMemoryUtilization <= 1) {
		f.fail("gpu_memory_utilization", "must be in (0, 1], not %v", a.GPUMemoryUtilization)
	}
	if a.MaxModelLen < 0 {
		f.fail("max_model_len", "must not be negative")
	}
	if a.MaxNumSeqs < 0 {
		f.fail("max_num_seqs", "must not be negative")
	}
	if !oneOf(a.Dtype, dtypes) {
		f.fail("dtype", "must be one of %s, not %q", strings.Join(dtypes, ", "), a.Dtype)
	}
	if !oneOf(a.KVCacheDtype, kvCacheTypes) {
		f.fail("kv_cache_dtype", "must be one of %s, not %q", strings.Join(kvCacheTypes, ", "), a.KVCacheDtype)
	}
	if a.Quantization != "" && !tokenRE.MatchString(a.Quantization) {
		f.fail("quantization", "must be a single word, not %q", a.Quantization)
	}
	s := a.Sampling
	if s.Temperature != nil && *s.Temperature < 0 {
		f.fail("sampling.temperature", "must not be negative")
	}
	if s.TopP != nil && !(*s.TopP > 0 && *s.TopP <= 1) {
		f.fail("sampling.top_p", "must be in (0, 1]")
	}
	if s.TopK != nil && *s.TopK < -1 {
		f.fail("sampling.top_k", "must be -1 (off) or positive")
	}
	if s.MinP != nil && !(*s.MinP >= 0 && *s.MinP <= 1) {
		f.fail("sampling.min_p", "must be in [0, 1]")
	}
	if s.RepetitionPenalty != nil && *s.RepetitionPenalty <= 0 {
		f.fail("sampling.repetition_penalty", "must be positive")
	}
	if s.MaxTokens != nil && *s.MaxTokens < 1 {
		f.fail("sampling.max_tokens", "must be at least 1")
	}
	checkEnv(f, "env", a.Env)
	for i, arg := range a.ExtraArgs {
		name := strings.SplitN(arg, "=", 2)[0]
		if oneOf(name, ManagedFlags) {
			f.fail("extra_args", "entry %d %q repeats a flag vagent sets from its own key; set that key instead", i+1, arg)
		}
	}
	for i := range a.ExtraArgs {
		if err := CheckExtraArg(a.ExtraArgs, i); err != nil {
			f.fail("extra_args", "%v", err)
		}
	}
	if a.IdleTimeout.Duration < 0 {
		f.fail("idle_timeout", "must not be negative")
	}
	if a.SwitchMode != "" && !oneOf(a.SwitchMode, switchModes) {
		f.fail("switch_mode", "must be %q or %q (or unset, to take supervisor.switch_mode), not %q", SwitchRestart, SwitchSleep, a.SwitchMode)
	}
	if a.SleepLevel != 1 && a.SleepLevel != 2 {
		f.fail("sleep_level", "must be 1 (weights to host RAM) or 2 (weights dropped), not %d", a.SleepLevel)
	}
	return f.errs
}

func checkEnv(f *fieldChecker, field string, env map[string]string) {
	for k := range env {
		if !envNameRE.MatchString(k) {
			f.fail(field, "%q is not a valid environment variable name", k)
		}
		if oneOf(k, ManagedEnv) {
			f.fail(field, "%s is set by vagent itself and cannot be overridden", k)
		} else if secretEnvRE.MatchString(k) {
			f.fail(field, "%s looks like a secret: every local user can read it (the unit drop-in is world-readable and `systemctl show` prints Environment=); "+
				"put a Hub token in the token file under paths.hf_home (HF_HOME/token, readable by the vagent user only), which vLLM and vagentctl pull read", k)
		}
	}
}

func (c *Config) validateAcrossAgents() Errors {
	var errs Errors
	ports := map[int]*Agent{}
	listens := map[int]*Agent{}
	names := map[string]*Agent{}
	gwPort := 0
	if _, p, err := net.SplitHostPort(c.Gateway.Listen); err == nil {
		gwPort, _ = strconv.Atoi(p)
	}
	// Agents' own names come first: an alias may not take another agent's name.
	for _, a := range c.Agents {
		names[a.Name] = a
	}
	for _, a := range c.Agents {
		data, _ := os.ReadFile(a.File)
		at := func(field, format string, args ...any) {
			errs = append(errs, &Error{File: a.File, Agent: a.Name, Field: field,
				Line: lineOf(data, toml.Key{field}), Msg: fmt.Sprintf(format, args...)})
		}
		if a.Port == 0 {
			// A unix socket instead: its path's length is checked where the
			// engine's command line is rendered (engine.Command).
		} else if o, ok := ports[a.Port]; ok {
			at("port", "%d is already used by agent %q (%s)", a.Port, o.Name, o.File)
		} else {
			ports[a.Port] = a
		}
		if a.Port != 0 && a.Port == gwPort {
			at("port", "%d is the gateway's port (gateway.listen in %s)", a.Port, c.Path)
		}
		if a.Listen != "" {
			// One port per listener: vagentd binds them all, and an engine
			// with a port binds it on the loopback.
			if _, p, err := net.SplitHostPort(a.Listen); err == nil {
				n, _ := strconv.Atoi(p)
				switch o, ok := listens[n]; {
				case ok:
					at("listen", "port %d is already agent %q's listen (%s)", n, o.Name, o.File)
				case n == gwPort:
					at("listen", "port %d is the gateway's (gateway.listen in %s)", n, c.Path)
				default:
					listens[n] = a
				}
			}
		}
		for _, n := range a.Names()[1:] {
			field := "aliases"
			if oneOf(n, a.ServedNames) {
				field = "served_names"
			}
			if o, ok := names[n]; ok && o != a {
				at(field, "name %q already belongs to agent %q (%s)", n, o.Name, o.File)
			} else {
				names[n] = a
			}
		}
		if c.GPU.Backend == GPUBackendSim {
			for _, g := range a.GPUs {
				if g >= c.GPU.SimCount {
					at("gpus", "GPU %d does not exist: the simulator has %d (gpu.sim_count)", g, c.GPU.SimCount)
				}
			}
		}
	}
	// An agent's listener and an engine's port are both TCP ports of
	// this host: one may not take the other's.
	for _, a := range c.Agents {
		if a.Listen == "" {
			continue
		}
		if _, p, err := net.SplitHostPort(a.Listen); err == nil {
			n, _ := strconv.Atoi(p)
			if o, ok := ports[n]; ok {
				data, _ := os.ReadFile(a.File)
				errs = append(errs, &Error{File: a.File, Agent: a.Name, Field: "listen", Line: lineOf(data, toml.Key{"listen"}),
					Msg: fmt.Sprintf("port %d is agent %q's engine port (port in %s)", n, o.Name, o.File)})
			}
		}
	}
	return errs
}

// checkNoControl rejects newlines, carriage returns and NUL bytes in every
// string reachable from v: a newline in a rendered unit would inject a
// directive, and NUL cannot be passed to a process.
func checkNoControl(f *fieldChecker, v reflect.Value, prefix string) {
	join := func(p, k string) string {
		if p == "" {
			return k
		}
		return p + "." + k
	}
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			checkNoControl(f, v.Elem(), prefix)
		}
	case reflect.String:
		bad := "\n\r\x00"
		if prefix == "system_prompt" {
			// Never rendered into a unit, only sent in requests: lines are fine.
			bad = "\x00"
		}
		if strings.ContainsAny(v.String(), bad) {
			f.fail(prefix, "must not contain a newline, carriage return or NUL byte")
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			checkNoControl(f, v.Index(i), prefix)
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			checkNoControl(f, k, prefix)
			checkNoControl(f, v.MapIndex(k), join(prefix, k.String()))
		}
	case reflect.Struct:
		t := v.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := t.Field(i).Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			checkNoControl(f, v.Field(i), join(prefix, tag))
		}
	}
}
