// Package units renders and writes the systemd units that run vagent's
// agents: one template, vagent@.service, holding what every agent shares, and
// per agent a drop-in, vagent@NAME.service.d/50-vagent.conf, holding its
// command line, environment and Conflicts=. systemd then is the only place
// that knows what runs, and `systemctl start vagent@dev` by hand is as safe
// as a start through vagentd: units that cannot share a GPU conflict, so
// systemd stops the other one itself.
//
// Every value that comes from configuration is escaped for systemd (quoted,
// '%' and '$' doubled, newlines refused), so a rendered unit always parses
// and no value can add a directive.
package units

import (
	"encoding/json"
	"fmt"
	"math"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/vllmflags"
)

// TemplateName is the template unit every agent is an instance of.
const TemplateName = "vagent@.service"

// DropInName is the file name of an agent's drop-in; vagent owns only files
// of this name, so an admin's own drop-ins beside it are never touched.
const DropInName = "50-vagent.conf"

// header starts every drop-in. Write removes a stale drop-in only when it
// starts with this, so a file an admin wrote under the same name survives.
const header = "# Written by vagent"

// templateHeader starts the template, so that Write can tell a copy it wrote
// from an admin's own vagent@.service.
const templateHeader = "# vagent agent template, written by vagent"

// Documentation is the Documentation= of the template, shown by systemctl status.
const Documentation = "https://github.com/vagent-dev/vagent"

// Files are rendered unit files keyed by their path relative to the unit
// directory (TemplateName and DropInPath(name) for each agent), so that Write
// can compare them with what is on disk before touching anything.
type Files map[string][]byte

// DropInPath is the drop-in of the agent called name, relative to the unit
// directory.
func DropInPath(name string) string { return config.UnitName(name) + ".d/" + DropInName }

// agentNameRE mirrors config's rule for agent names: the name becomes a unit
// instance and a directory name, so units checks it again rather than trust
// that a caller validated it.
var agentNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// lockedEnv are variables vagent sets that configuration may not override:
// the engine's GPUs, key and weights, and the simulator's shared ledger.
var lockedEnv = append([]string{
	"VLLM_SIM_LEDGER", "VLLM_SIM_GPUS", "VLLM_SIM_TOTAL_MIB", "VLLM_SIM_VERSION",
}, config.ManagedEnv...)

// neverFlags are flags no unit may carry: --disable-log-requests and --task
// were removed from vLLM (0.11, 0.13) and kill the engine at start on newer
// versions; help flags make it print and exit 0, which looks like a clean stop.
var neverFlags = []string{"--disable-log-requests", "--task", "-h", "--help"}

// Render renders the template and every agent's drop-in from cfg.
//
// gpuTotals holds each GPU's total memory in bytes and decides which agents
// conflict: two agents sharing a GPU conflict when their budgets together
// exceed the GPU less cfg.GPU.ReserveMiB (config.CannotShare). For a GPU
// missing from the map, as when rendering without a driver, the utilization
// fractions decide alone.
//
// Every problem is returned at once as config.Errors naming the file and
// field, and then no Files are returned: bad input must change nothing.
func Render(cfg *config.Config, gpuTotals map[int]uint64) (Files, error) {
	r := &renderer{cfg: cfg, totals: gpuTotals}
	flags, err := vllmflags.For(cfg.Engine.VLLMVersion)
	if err != nil {
		r.mainErr("engine.vllm_version", "%v", err)
	}
	r.flags = flags

	files := Files{TemplateName: r.template()}
	seen := map[string]bool{}
	for _, a := range cfg.Agents {
		if seen[a.Name] {
			r.agentErr(a, "name", "another agent has the same name")
			continue
		}
		seen[a.Name] = true
		if data := r.dropIn(a); data != nil {
			files[DropInPath(a.Name)] = data
		}
	}
	if len(r.errs) > 0 {
		return nil, r.dedup()
	}
	return files, nil
}

type renderer struct {
	cfg    *config.Config
	totals map[int]uint64
	flags  *vllmflags.Set
	errs   config.Errors
}

// dedup drops repeated errors: a bad main-file value is found once per agent.
func (r *renderer) dedup() config.Errors {
	seen := map[string]bool{}
	var out config.Errors
	for _, e := range r.errs {
		if s := e.Error(); !seen[s] {
			seen[s] = true
			out = append(out, e)
		}
	}
	return out
}

func (r *renderer) mainErr(field, format string, args ...any) {
	r.errs = append(r.errs, &config.Error{File: r.cfg.Path, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (r *renderer) agentErr(a *config.Agent, field, format string, args ...any) {
	r.errs = append(r.errs, &config.Error{File: a.File, Agent: a.Name, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// unitFile accumulates the lines of one unit file and refuses lines longer
// than systemd reads.
type unitFile struct {
	b strings.Builder
}

func (u *unitFile) line(format string, args ...any) {
	fmt.Fprintf(&u.b, format, args...)
	u.b.WriteByte('\n')
}

// longLine finds the first directive systemd would refuse to read, and
// its length: one of its lines reaches maxLine (read_line's limit), or its
// continuation lines add up to more (conf-parser's). It returns "" when
// every line can be read.
func (u *unitFile) longLine() (key string, n int) {
	sum := 0
	for _, l := range strings.Split(u.b.String(), "\n") {
		if sum == 0 {
			key, _, _ = strings.Cut(l, "=")
		}
		sum += len(l)
		if len(l) >= maxLine || sum > maxLine {
			return key, max(sum, len(l))
		}
		if !strings.HasSuffix(l, "\\") {
			sum = 0
		}
	}
	return "", 0
}

// checkLines records an error for a unit file systemd could not read.
func (u *unitFile) checkLines(fail func(format string, args ...any)) {
	if key, n := u.longLine(); key != "" {
		fail("%s= would be %d bytes, longer than systemd reads (LONG_LINE_MAX, %d)", key, n, maxLine)
	}
}

// template renders vagent@.service. It has no ExecStart=: each agent's
// drop-in supplies one, so an instance without a drop-in (a typo in
// `systemctl start vagent@dve`) is refused by systemd instead of starting
// something.
func (r *renderer) template() []byte {
	c := r.cfg
	var u unitFile
	u.line("%s. Each agent vagent@NAME.service", templateHeader)
	u.line("# gets its command line from vagent@NAME.service.d/%s, rendered from its", DropInName)
	u.line("# agent file: edit that file and run vagentctl apply.")
	u.line("")
	u.line("[Unit]")
	u.line("Description=vagent agent %%i")
	u.line("Documentation=%s", Documentation)
	u.line("After=network-online.target")
	u.line("StartLimitIntervalSec=%s", span(c.Units.StartLimitInterval.Duration))
	u.line("StartLimitBurst=%d", c.Units.StartLimitBurst)
	u.line("")
	u.line("[Service]")
	// Type=exec: a missing binary or user fails the start job itself.
	// Readiness is the supervisor's /health wait: vLLM never notifies.
	u.line("Type=exec")
	if c.Units.User != "" {
		if v, err := plainValue(c.Units.User); err != nil {
			r.mainErr("units.user", "%v", err)
		} else {
			u.line("User=%s", v)
		}
	}
	if c.Units.Group != "" {
		if v, err := plainValue(c.Units.Group); err != nil {
			r.mainErr("units.group", "%v", err)
		} else {
			u.line("Group=%s", v)
		}
	}
	// The key travels in a file read by systemd, never on the command line
	// where ps shows it. Required (no "-"): vagentctl apply creates it, and an
	// engine started without it would serve without a key.
	// A path systemd finds not normalized or too long would be ignored
	// with a warning, and the engine would start without its key.
	if v, err := envFilePath(c.EngineKeyFile()); err != nil {
		r.mainErr("paths.state_dir", "the engine key file in it (engine-key.env) %v", err)
	} else {
		u.line("EnvironmentFile=%s", v)
	}
	// Python buffers stdout when it is not a terminal: unbuffered, log lines
	// reach the journal when they happen.
	u.line(`Environment="PYTHONUNBUFFERED=1"`)
	u.line("Restart=on-failure")
	u.line("RestartSec=%s", span(c.Units.RestartSec.Duration))
	u.line("TimeoutStartSec=%s", span(c.Units.StartTimeout.Duration))
	u.line("TimeoutStopSec=%s", span(c.Units.StopTimeout.Duration))
	// mixed: SIGTERM to the API server, SIGKILL to every process left after
	// TimeoutStopSec; the engine core and workers hold the VRAM and must
	// never outlive the unit (KillMode=process would orphan them).
	u.line("KillMode=mixed")
	u.line("KillSignal=SIGTERM")
	r.hardening(&u)
	u.line("")
	u.line("[Install]")
	u.line("WantedBy=multi-user.target")
	u.checkLines(func(format string, args ...any) { r.mainErr("", "the template: "+format, args...) })
	return []byte(u.b.String())
}

// hardening renders the template's sandboxing: every line was reported to
// work with CUDA and vLLM, and with units.user set an instance's exposure on
// `systemd-analyze security` is 1.6 (make security prints it; at most 2.5).
//
// What an engine needs and keeps:
//   - The NVIDIA devices: PrivateDevices= stays off (it hides /dev/nvidia*)
//     and the device ACL admits the nvidia* groups of /proc/devices, which
//     systemd reads when the unit starts: nvidia_uvm must be loaded by then
//     (the package's modules-load.d does it at boot).
//   - W+X memory (PyTorch's JIT) and all of /proc (torch reads /proc/meminfo).
//   - Unix, IP and netlink sockets: the API, vLLM's workers, NCCL and the
//     interface lookups of torch.distributed.
//   - Writes only below the configured state, cache, weights and run
//     directories (and the simulator's ledger): the rest of the file system
//     is read-only, /home and /root are hidden, and /tmp is private, so
//     nothing an engine needs (binary, ledger, weights, key) may live there.
//     "-": a directory that does not exist yet is no error.
//
// The same lines hold for engines run as root (units.user unset, as in the
// e2e suite): the empty capability set leaves root only what it owns.
func (r *renderer) hardening(u *unitFile) {
	c := r.cfg
	u.line("NoNewPrivileges=yes")
	u.line("PrivateTmp=yes")
	u.line("PrivateMounts=yes")
	u.line("ProtectSystem=strict")
	u.line("ProtectHome=yes")
	var rw []string
	seen := map[string]bool{}
	for _, p := range []struct{ dir, field string }{
		{c.Paths.StateDir, "paths.state_dir"},
		{c.Paths.CacheDir, "paths.cache_dir"},
		{c.Paths.HFHome, "paths.hf_home"},
		{c.Paths.RunDir, "paths.run_dir"},
		{simLedgerDir(c), "gpu.sim_ledger"},
	} {
		if p.dir == "" || seen[p.dir] {
			continue
		}
		seen[p.dir] = true
		// "-": a directory that does not exist yet is no error.
		w, err := pathWord("-", p.dir)
		if err != nil {
			r.mainErr(p.field, "%v", err)
			continue
		}
		rw = append(rw, w)
	}
	if len(rw) > 0 {
		u.line("ReadWritePaths=%s", strings.Join(rw, " "))
	}
	u.line("PrivateDevices=no")
	u.line("DevicePolicy=closed")
	u.line("DeviceAllow=char-nvidia* rw")
	u.line("ProtectKernelTunables=yes")
	u.line("ProtectKernelModules=yes")
	u.line("ProtectKernelLogs=yes")
	u.line("ProtectControlGroups=yes")
	u.line("ProtectClock=yes")
	u.line("ProtectHostname=yes")
	u.line("ProtectProc=invisible")
	u.line("ProcSubset=all")
	u.line("RestrictNamespaces=yes")
	u.line("RestrictRealtime=yes")
	u.line("RestrictSUIDSGID=yes")
	u.line("LockPersonality=yes")
	u.line("MemoryDenyWriteExecute=no")
	u.line("RemoveIPC=yes")
	u.line("CapabilityBoundingSet=")
	u.line("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK")
	u.line("SystemCallArchitectures=native")
	u.line("SystemCallFilter=@system-service @resources")
	u.line("SystemCallFilter=~@privileged")
	u.line("SystemCallErrorNumber=EPERM")
	// Group-readable at most: vagentd (group vagent) reads the simulator's
	// ledger; nobody else needs the engines' files.
	u.line("UMask=0027")
}

// simLedgerDir is the directory of the simulator's ledger when the engine is
// the simulator, else "".
func simLedgerDir(c *config.Config) string {
	if c.Engine.Kind != config.EngineSim || c.GPU.SimLedger == "" {
		return ""
	}
	return filepath.Dir(c.GPU.SimLedger)
}

// span formats d as a systemd time span, in the largest whole unit of
// seconds, milliseconds or microseconds (systemd's resolution).
func span(d time.Duration) string {
	switch {
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	case d%time.Millisecond == 0:
		return strconv.FormatInt(int64(d/time.Millisecond), 10) + "ms"
	default:
		return strconv.FormatInt(int64(d/time.Microsecond), 10) + "us"
	}
}

// arg is one command-line argument and the field it came from, for errors.
type arg struct {
	val   string
	field string
}

// dropIn renders the agent's drop-in, or nil after recording errors.
func (r *renderer) dropIn(a *config.Agent) []byte {
	before := len(r.errs)
	if !agentNameRE.MatchString(a.Name) {
		r.agentErr(a, "name", "%q is not a valid agent name (1-63 of a-z, 0-9, '-', '_')", a.Name)
		return nil
	}
	argv := r.argv(a)
	env := r.env(a)
	conflicts := r.conflicts(a)

	var u unitFile
	u.line("%s from %s; edit that file and run vagentctl apply.", header, commentText(a.File))
	if len(conflicts) > 0 {
		// Conflicts=: starting this agent stops those that cannot share its
		// GPU, in the same transaction. The stop must finish (and the
		// engine's processes be gone) before the start begins, and systemd
		// orders a stop before a start whenever the two units are ordered
		// at all, in either direction. So each pair is ordered once, the
		// later name After= the earlier: After= both ways would order the
		// stop jobs of three mutually conflicting agents in a cycle, and
		// systemd would refuse the transaction ("Transaction order is
		// cyclic").
		u.line("")
		u.line("[Unit]")
		u.line("Conflicts=%s", strings.Join(conflicts, " "))
		var after []string
		for _, c := range conflicts {
			if c < a.Unit() {
				after = append(after, c)
			}
		}
		if len(after) > 0 {
			u.line("After=%s", strings.Join(after, " "))
		}
	}
	u.line("")
	u.line("[Service]")
	u.line("ExecStart=")
	u.b.WriteString("ExecStart=")
	for i, x := range argv {
		// One flag and its values per line, joined by continuation lines so
		// that `systemctl cat` stays readable.
		if i > 0 {
			if isFlag(x.val) {
				u.b.WriteString(" \\\n    ")
			} else {
				u.b.WriteByte(' ')
			}
		}
		if len(x.val) > maxArg {
			r.agentErr(a, x.field, "an argument of %d bytes is longer than the kernel passes to a program (MAX_ARG_STRLEN, %d)", len(x.val), maxArg)
			continue
		}
		// The binary is not subject to $VAR expansion (only its arguments
		// are), so its '$' is refused in argv rather than doubled.
		w, err := quoteWord(x.val, i > 0, false)
		if err != nil {
			r.agentErr(a, x.field, "%v", err)
			continue
		}
		u.b.WriteString(w)
	}
	u.b.WriteByte('\n')
	for _, kv := range env {
		if n := len(kv.key) + 1 + len(kv.val); n > maxArg {
			r.agentErr(a, kv.field, "%s: a variable of %d bytes is longer than the kernel passes to a program (MAX_ARG_STRLEN, %d)", kv.key, n, maxArg)
			continue
		}
		// Quoted whole, so that a space in the value cannot start a
		// second assignment.
		w, err := quoteWord(kv.key+"="+kv.val, false, true)
		if err != nil {
			r.agentErr(a, kv.field, "%s: %v", kv.key, err)
			continue
		}
		u.line("Environment=%s", w)
	}
	u.checkLines(func(format string, args ...any) { r.agentErr(a, "", format, args...) })
	if len(r.errs) > before {
		return nil
	}
	return []byte(u.b.String())
}

// isFlag reports whether vllm serve reads a command-line word as an option
// rather than a value (config.IsOption: argparse's rule and vLLM's).
func isFlag(s string) bool { return config.IsOption(s) }

// argv is the engine's command line: binary, "serve", model, then flags
// from the typed fields and the extra_args verbatim.
func (r *renderer) argv(a *config.Agent) []arg {
	c := r.cfg
	bin, binField := c.EngineBinary(), "engine.venv"
	if c.Engine.Kind == config.EngineSim {
		binField = "engine.sim_binary"
	}
	switch {
	case !filepath.IsAbs(bin) || filepath.Clean(bin) != bin:
		r.mainErr(binField, "the engine binary %q must be a clean absolute path", bin)
	case strings.Contains(bin, "$"):
		r.mainErr(binField, "the engine binary %q must not contain '$'", bin)
	}
	args := []arg{{bin, binField}, {"serve", ""}}

	// Values that start with '-' would be read by argparse as flags.
	value := func(field, v string) bool {
		if strings.HasPrefix(v, "-") {
			r.agentErr(a, field, "%q must not start with '-'", v)
			return false
		}
		return true
	}
	add := func(field, flag string, vals ...string) {
		if r.flags != nil && !r.flags.Has(flag) {
			r.agentErr(a, field, "vLLM %s (engine.vllm_version) has no %s", c.Engine.VLLMVersion, flag)
		}
		args = append(args, arg{flag, field})
		for _, v := range vals {
			args = append(args, arg{v, field})
		}
	}
	// addText adds a free-text value; one that starts with '-' is attached
	// with '=' so argparse cannot mistake it for a flag.
	addText := func(field, flag, v string) {
		if strings.HasPrefix(v, "-") {
			add(field, flag)
			args[len(args)-1].val += "=" + v
			return
		}
		add(field, flag, v)
	}

	if a.Model == "" {
		r.agentErr(a, "model", "must be set")
	} else if err := config.CheckPath(a.Model); config.IsLocalModel(a.Model) && err != nil {
		// The engine runs from "/": config.Load makes a relative model
		// directory absolute against its agent file.
		r.agentErr(a, "model", "a local model directory %v", err)
	} else if value("model", a.Model) {
		args = append(args, arg{a.Model, "model"})
	}
	add("", "--host", "127.0.0.1")
	if a.Port < 1 || a.Port > 65535 {
		r.agentErr(a, "port", "must be 1-65535, not %d", a.Port)
	}
	add("port", "--port", strconv.Itoa(a.Port))
	if len(a.ServedNames) > 0 {
		for _, n := range a.ServedNames {
			if n == "" {
				r.agentErr(a, "served_names", "entries must not be empty")
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
			r.agentErr(a, "gpu_memory_utilization", "must be in (0, 1], not %v", u)
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
	if gen, err := generationConfig(a.Sampling); err != nil {
		r.agentErr(a, "sampling", "%v", err)
	} else if gen != "" {
		add("sampling", "--override-generation-config", gen)
	}
	if c.Sleeps(a) {
		// Sleep mode: a switch away puts the engine to sleep instead of
		// stopping it (the supervisor drives /sleep and /wake_up).
		add("switch_mode", "--enable-sleep-mode")
	}

	for i, x := range a.ExtraArgs {
		if !isFlag(x) {
			args = append(args, arg{x, "extra_args"})
			continue
		}
		name, _, _ := strings.Cut(x, "=")
		switch err := config.CheckExtraArg(a.ExtraArgs, i); {
		case err != nil:
			r.agentErr(a, "extra_args", "%v", err)
		case contains(neverFlags, name):
			r.agentErr(a, "extra_args", "entry %d %q: vagent never passes %s to vLLM", i+1, x, name)
		case contains(config.ManagedFlags, name):
			r.agentErr(a, "extra_args", "entry %d %q repeats a flag vagent sets from its own key; set that key instead", i+1, x)
		case r.flags != nil && !r.flags.Has(name):
			r.agentErr(a, "extra_args", "entry %d %q: vLLM %s (engine.vllm_version) has no flag %s (spell flags in full, with dashes)",
				i+1, x, c.Engine.VLLMVersion, name)
		}
		args = append(args, arg{x, "extra_args"})
	}
	return args
}

func contains(set []string, s string) bool {
	for _, x := range set {
		if x == s {
			return true
		}
	}
	return false
}

// generationConfig is the JSON for --override-generation-config: the keys of
// a Hugging Face generation config (max_tokens is max_new_tokens there),
// sorted, or "" when no sampling parameter is set.
func generationConfig(s config.Sampling) (string, error) {
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
	if s.MaxTokens != nil {
		m["max_new_tokens"] = *s.MaxTokens
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

// envVar is one Environment= assignment and the field it came from.
type envVar struct {
	key, val, field string
}

// env is the engine's environment: what vagent sets, in a fixed order, then
// engine.env and the agent's env merged (the agent wins) in sorted order.
// A configured variable that vagent also sets replaces vagent's value in
// place, so each variable appears once; the GPU selection, key, weights and
// simulator ledger cannot be replaced.
func (r *renderer) env(a *config.Agent) []envVar {
	c := r.cfg
	gpus := make([]string, len(a.GPUs))
	for i, g := range a.GPUs {
		if g < 0 {
			r.agentErr(a, "gpus", "GPU index %d must not be negative", g)
		}
		gpus[i] = strconv.Itoa(g)
	}
	if len(a.GPUs) == 0 {
		r.agentErr(a, "gpus", "must list at least one GPU index")
	}
	cache := c.Paths.CacheDir
	vars := []envVar{
		{"HF_HOME", c.Paths.HFHome, "paths.hf_home"},
		// Weights come from `vagentctl pull`; the engine never downloads.
		{"HF_HUB_OFFLINE", "1", ""},
		{"CUDA_VISIBLE_DEVICES", strings.Join(gpus, ","), "gpus"},
		// CUDA numbers devices fastest first unless told otherwise; NVML,
		// and so vagent's gpu indexes, use PCI bus order.
		{"CUDA_DEVICE_ORDER", "PCI_BUS_ID", ""},
		// Every cache in one directory the engine user may write, so that
		// it works under ProtectSystem= and survives restarts.
		{"HOME", c.Paths.StateDir, "paths.state_dir"},
		{"XDG_CACHE_HOME", cache, "paths.cache_dir"},
		{"TRITON_CACHE_DIR", path.Join(cache, "triton"), "paths.cache_dir"},
		{"TORCHINDUCTOR_CACHE_DIR", path.Join(cache, "torchinductor"), "paths.cache_dir"},
		{"CUDA_CACHE_PATH", path.Join(cache, "nv"), "paths.cache_dir"},
		{"VLLM_CACHE_ROOT", path.Join(cache, "vllm"), "paths.cache_dir"},
		// A host that runs offline does not report usage.
		{"VLLM_NO_USAGE_STATS", "1", ""},
	}
	if c.Engine.Kind == config.EngineSim {
		vars = append(vars,
			envVar{"VLLM_SIM_LEDGER", c.GPU.SimLedger, "gpu.sim_ledger"},
			envVar{"VLLM_SIM_GPUS", strconv.Itoa(c.GPU.SimCount), "gpu.sim_count"},
			envVar{"VLLM_SIM_TOTAL_MIB", strconv.FormatUint(c.GPU.SimTotalMiB, 10), "gpu.sim_total_mib"},
			envVar{"VLLM_SIM_VERSION", c.Engine.VLLMVersion, "engine.vllm_version"},
		)
		if s := c.GPU.SimLoadSeconds; s > 0 {
			vars = append(vars, envVar{"VLLM_SIM_LOAD_SECONDS", strconv.FormatFloat(s, 'f', -1, 64), "gpu.sim_load_seconds"})
		}
	}
	if c.Sleeps(a) {
		// vLLM serves /sleep, /wake_up and /is_sleeping only in dev mode.
		// Those routes take no API key (vLLM guards only /v1/*): the engine
		// listens on 127.0.0.1 only, and the gateway never forwards them.
		vars = append(vars, envVar{"VLLM_SERVER_DEV_MODE", "1", "switch_mode"})
	}
	index := map[string]int{}
	for i, v := range vars {
		index[v.key] = i
	}
	user := map[string]envVar{}
	for k, v := range c.Engine.Env {
		user[k] = envVar{k, v, "engine.env"}
	}
	for k, v := range a.Env {
		user[k] = envVar{k, v, "env"}
	}
	keys := make([]string, 0, len(user))
	for k := range user {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := user[k]
		switch i, ok := index[k]; {
		case !envNameRE.MatchString(k):
			r.envErr(a, v.field, "%q is not a valid environment variable name", k)
		case contains(lockedEnv, k):
			r.envErr(a, v.field, "%s is set by vagent itself and cannot be overridden", k)
		case ok:
			vars[i] = v
		default:
			vars = append(vars, v)
		}
	}
	return vars
}

// envErr reports a bad variable of engine.env in the main file, or of env in
// the agent's file.
func (r *renderer) envErr(a *config.Agent, field, format string, args ...any) {
	if field == "engine.env" {
		r.mainErr(field, format, args...)
		return
	}
	r.agentErr(a, field, format, args...)
}

// conflicts are the units of the agents that cannot run beside a on one of
// the GPUs they share, sorted; none for sleep agents, whose sleeping engine
// stays up beside the one that runs (config.Config.MayConflict).
func (r *renderer) conflicts(a *config.Agent) []string {
	reserve := r.cfg.GPU.ReserveMiB << 20
	var out []string
	for _, o := range r.cfg.Agents {
		if o == a || o.Name == a.Name || !agentNameRE.MatchString(o.Name) || !r.cfg.MayConflict(a, o) {
			continue
		}
		for _, g := range a.GPUs {
			if onGPU(o, g) && config.CannotShare(a, o, r.totals[g], reserve) {
				out = append(out, o.Unit())
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

func onGPU(a *config.Agent, g int) bool {
	for _, x := range a.GPUs {
		if x == g {
			return true
		}
	}
	return false
}
