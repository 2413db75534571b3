// Package units renders and writes the systemd units that run vagent's
// agents: one template, vagent@.service, holding what every agent shares, and
// per agent a drop-in, vagent@NAME.service.d/50-vagent.conf, holding its
// command line, environment and Conflicts=; and vagentd.socket, the
// listening sockets systemd holds for vagentd (socket.go). systemd then is the only place
// that knows what runs, and `systemctl start vagent@dev` by hand is as safe
// as a start through vagentd: units that cannot share a GPU conflict, so
// systemd stops the other one itself.
//
// Every value that comes from configuration is escaped for systemd (quoted,
// '%' and '$' doubled, newlines refused), so a rendered unit always parses
// and no value can add a directive.
package units

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
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

// Render renders the template, every agent's drop-in and vagentd's socket
// unit (SocketName) from cfg.
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
	r.eng = engine.Of(cfg)

	files := Files{TemplateName: r.template(), SocketName: r.socket()}
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
	eng    engine.Engine
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
	argv, errs := r.eng.Command(r.cfg, a)
	r.errs = append(r.errs, errs...)
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
	if ep := r.eng.Endpoint(r.cfg, a); ep.Network() == "unix" {
		r.socketDir(&u, a, ep.Address())
	}
	u.line("ExecStart=")
	u.b.WriteString("ExecStart=")
	for i, x := range argv {
		// One flag and its values per line, joined by continuation lines so
		// that `systemctl cat` stays readable.
		if i > 0 {
			if config.IsOption(x.Val) {
				u.b.WriteString(" \\\n    ")
			} else {
				u.b.WriteByte(' ')
			}
		}
		if len(x.Val) > maxArg {
			r.agentErr(a, x.Field, "an argument of %d bytes is longer than the kernel passes to a program (MAX_ARG_STRLEN, %d)", len(x.Val), maxArg)
			continue
		}
		// The binary is not subject to $VAR expansion (only its arguments
		// are), so its '$' is refused in argv rather than doubled.
		w, err := quoteWord(x.Val, i > 0, false)
		if err != nil {
			r.fieldErr(a, x.Field, "%v", err)
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
			r.fieldErr(a, kv.field, "%s: %v", kv.key, err)
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

// socketDir renders the commands that ready the engine's unix socket
// before each start, systemd's own restarts included. The directory is
// made, as the engine's user and group, enterable by them only, so that no
// other local user reaches the engine; a socket left by an engine that died
// is removed, since vLLM binds without removing it and would fail with
// "Address already in use".
func (r *renderer) socketDir(u *unitFile, a *config.Agent, sock string) {
	dir, err := quoteWord(path.Dir(sock), true, false)
	if err == nil {
		err = config.CheckPath(sock)
	}
	file, err2 := quoteWord(sock, true, false)
	if err = errors.Join(err, err2); err != nil {
		r.mainErr("paths.run_dir", "%v", err)
		return
	}
	u.line("ExecStartPre=install -d -m 0750 %s", dir)
	u.line("ExecStartPre=rm -f -- %s", file)
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
	}
	// Then what the engine itself needs (its cache, its simulator's
	// ledger, its sleep mode).
	for _, v := range r.eng.Env(c, a) {
		vars = append(vars, envVar{v.Key, v.Val, v.Field})
	}
	locked := append(r.eng.LockedEnv(), config.ManagedEnv...)
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
			r.fieldErr(a, v.field, "%q is not a valid environment variable name", k)
		case slices.Contains(locked, k):
			r.fieldErr(a, v.field, "%s is set by vagent itself and cannot be overridden", k)
		case ok:
			vars[i] = v
		default:
			vars = append(vars, v)
		}
	}
	return vars
}

// fieldErr reports a bad value in the file that sets field: the main file
// for its keys (paths.hf_home, engine.env, ...), else the agent's file.
func (r *renderer) fieldErr(a *config.Agent, field, format string, args ...any) {
	if config.MainField(field) {
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
