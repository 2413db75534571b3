package units

import (
	"errors"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/engine/vllmflags"
)

const gib16 = uint64(16376) << 20 // what a "16 GB" card reports

func loadConfig(t *testing.T, path string) *config.Config {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return cfg
}

// unit is a rendered drop-in as systemd reads it.
type unit struct {
	directives []directive
	argv       []string
	env        map[string]string
	envOrder   []string
}

func (u *unit) values(section, key string) []string {
	var out []string
	for _, d := range u.directives {
		if d.section == section && d.key == key {
			out = append(out, d.value)
		}
	}
	return out
}

// readDropIn parses the drop-in of agent name from files and checks the
// shape every drop-in has: a reset ExecStart= then one command line.
func readDropIn(t *testing.T, files Files, name string) *unit {
	t.Helper()
	data, ok := files[DropInPath(name)]
	if !ok {
		t.Fatalf("no drop-in for %s among %v", name, keys(files))
	}
	ds, err := parseUnit(string(data))
	if err != nil {
		t.Fatalf("drop-in %s does not parse: %v\n%s", name, err, data)
	}
	u := &unit{directives: ds, env: map[string]string{}}
	execs := u.values("Service", "ExecStart")
	if len(execs) != 2 || execs[0] != "" {
		t.Fatalf("drop-in %s: want ExecStart= then one command, got %q", name, execs)
	}
	if u.argv, err = parseExec(execs[1]); err != nil {
		t.Fatalf("drop-in %s: ExecStart: %v", name, err)
	}
	for _, v := range u.values("Service", "Environment") {
		kvs, err := parseEnv(v)
		if err != nil {
			t.Fatalf("drop-in %s: Environment=%s: %v", name, v, err)
		}
		if len(kvs) != 1 {
			t.Fatalf("drop-in %s: Environment=%s holds %d assignments, want 1", name, v, len(kvs))
		}
		if _, dup := u.env[kvs[0][0]]; dup {
			t.Errorf("drop-in %s: %s set twice", name, kvs[0][0])
		}
		u.env[kvs[0][0]] = kvs[0][1]
		u.envOrder = append(u.envOrder, kvs[0][0])
	}
	return u
}

func keys(f Files) []string {
	var out []string
	for k := range f {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// flagValue is the argument after flag in argv, or "" and false.
func flagValue(argv []string, flag string) (string, bool) {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1], true
		}
	}
	return "", false
}

const wantDevDropIn = `

[Unit]
Conflicts=vagent@architect.service vagent@po.service
After=vagent@architect.service

[Service]
ExecStartPre=install -d -m 0750 /run/vagent/engines
ExecStartPre=rm -f -- /run/vagent/engines/dev.sock
ExecStart=
ExecStart=/usr/bin/vllm-sim serve Qwen/Qwen2.5-Coder-14B-Instruct-AWQ \
    --uds /run/vagent/engines/dev.sock \
    --served-model-name dev \
    --gpu-memory-utilization 0.92 \
    --max-model-len 12288 \
    --max-num-seqs 16 \
    --enable-auto-tool-choice \
    --tool-call-parser hermes \
    --override-generation-config '{"temperature":0.3,"top_p":0.95}'
Environment="HF_HOME=/var/lib/vagent/hf"
Environment="HF_HUB_OFFLINE=1"
Environment="CUDA_VISIBLE_DEVICES=0"
Environment="CUDA_DEVICE_ORDER=PCI_BUS_ID"
Environment="HOME=/var/lib/vagent"
Environment="XDG_CACHE_HOME=/var/cache/vagent"
Environment="TRITON_CACHE_DIR=/var/cache/vagent/triton"
Environment="TORCHINDUCTOR_CACHE_DIR=/var/cache/vagent/torchinductor"
Environment="CUDA_CACHE_PATH=/var/cache/vagent/nv"
Environment="VLLM_CACHE_ROOT=/var/cache/vagent/vllm"
Environment="VLLM_NO_USAGE_STATS=1"
Environment="VLLM_SIM_LEDGER=/run/vagent/sim-ledger.json"
Environment="VLLM_SIM_GPUS=1"
Environment="VLLM_SIM_TOTAL_MIB=16376"
Environment="VLLM_SIM_VERSION=0.18.0"
`

func TestShippedDevDropIn(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	files, err := Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	got := string(files[DropInPath("dev")])
	head, body, _ := strings.Cut(got, "\n")
	if want := "# Written by vagent from " + cfg.Agent("dev").File + "; edit that file and run vagentctl apply."; head != want {
		t.Errorf("header\n got %q\nwant %q", head, want)
	}
	if "\n"+body != wantDevDropIn {
		t.Errorf("dev drop-in\n got:\n%s\nwant:\n%s", body, wantDevDropIn)
	}

	u := readDropIn(t, files, "dev")
	wantArgv := []string{"/usr/bin/vllm-sim", "serve", "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ",
		"--uds", "/run/vagent/engines/dev.sock", "--served-model-name", "dev",
		"--gpu-memory-utilization", "0.92", "--max-model-len", "12288", "--max-num-seqs", "16",
		"--enable-auto-tool-choice", "--tool-call-parser", "hermes",
		"--override-generation-config", `{"temperature":0.3,"top_p":0.95}`}
	if !reflect.DeepEqual(u.argv, wantArgv) {
		t.Errorf("argv\n got %q\nwant %q", u.argv, wantArgv)
	}
}

// TestShippedAgents checks what every shipped agent's unit must hold,
// for the 16 GB set and the 24 GB example.
func TestShippedAgents(t *testing.T) {
	for _, path := range []string{"../configs/vagent.toml", "../configs/examples/24gb/vagent.toml"} {
		cfg := loadConfig(t, path)
		files, err := Render(cfg, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(files) != 2+len(cfg.Agents) || len(cfg.Agents) != 3 {
			t.Fatalf("%s: files %v for %d agents", path, keys(files), len(cfg.Agents))
		}
		flags, _ := vllmflags.For(cfg.Engine.VLLMVersion)
		bin, _ := engine.VLLM{Sim: cfg.Engine.Kind == config.EngineSim}.Binary(cfg)
		for _, a := range cfg.Agents {
			u := readDropIn(t, files, a.Name)
			if u.argv[0] != bin || u.argv[1] != "serve" || u.argv[2] != a.Model {
				t.Errorf("%s: command starts %q", a.Name, u.argv[:3])
			}
			for _, x := range u.argv[3:] {
				if strings.HasPrefix(x, "-") && !flags.Has(x) {
					t.Errorf("%s: flag %s not accepted by vLLM %s", a.Name, x, cfg.Engine.VLLMVersion)
				}
				if x == "--disable-log-requests" || x == "--task" || x == "--api-key" {
					t.Errorf("%s: renders %s", a.Name, x)
				}
			}
			// No TCP port: a unix socket only the engine's user and group
			// may reach, readied before each start.
			if _, ok := flagValue(u.argv, "--port"); ok || a.Port != 0 {
				t.Errorf("%s: a shipped agent opens a port: %q", a.Name, u.argv)
			}
			if p, _ := flagValue(u.argv, "--uds"); p != cfg.EngineSocket(a.Name) {
				t.Errorf("%s: --uds %q, want %s", a.Name, p, cfg.EngineSocket(a.Name))
			}
			if pre := u.values("Service", "ExecStartPre"); len(pre) != 2 || pre[0] != "install -d -m 0750 "+cfg.EngineSocketDir() || pre[1] != "rm -f -- "+cfg.EngineSocket(a.Name) {
				t.Errorf("%s: ExecStartPre=%q", a.Name, pre)
			}
			if g, _ := flagValue(u.argv, "--gpu-memory-utilization"); g != ftoa(a.GPUMemoryUtilization) {
				t.Errorf("%s: --gpu-memory-utilization %q", a.Name, g)
			}
			if u.env["CUDA_VISIBLE_DEVICES"] != "0" || u.env["HF_HUB_OFFLINE"] != "1" || u.env["HF_HOME"] != cfg.Paths.HFHome {
				t.Errorf("%s: env %v", a.Name, u.env)
			}
			if _, ok := u.env["VLLM_API_KEY"]; ok {
				t.Errorf("%s: the API key is in the unit", a.Name)
			}
			// Every shipped agent claims over half the card: each conflicts
			// with both others.
			var others []string
			for _, o := range cfg.Agents {
				if o != a {
					others = append(others, o.Unit())
				}
			}
			if got := conflictsOf(t, files, a.Name); !reflect.DeepEqual(got, others) {
				t.Errorf("%s: Conflicts=%q, want %q", a.Name, got, others)
			}
		}
	}
}

func itoa(n int) string     { return strconv.Itoa(n) }
func ftoa(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func TestTemplate(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	cfg.Units.User = "vagent"
	cfg.Units.Group = "render"
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := parseUnit(string(files[TemplateName]))
	if err != nil {
		t.Fatalf("template does not parse: %v", err)
	}
	got := map[string]string{}
	for _, d := range ds {
		k := d.section + "." + d.key
		if prev, dup := got[k]; dup {
			// SystemCallFilter= is an allow list, then a deny list.
			if k != "Service.SystemCallFilter" {
				t.Errorf("%s set twice", k)
			}
			got[k] = prev + "\n" + d.value
			continue
		}
		got[k] = d.value
	}
	want := map[string]string{
		"Unit.Description":           "vagent agent %i",
		"Unit.Documentation":         Documentation,
		"Unit.After":                 "network-online.target",
		"Unit.StartLimitIntervalSec": "600s",
		"Unit.StartLimitBurst":       "3",
		"Service.Type":               "exec",
		"Service.User":               "vagent",
		"Service.Group":              "render",
		"Service.EnvironmentFile":    "/var/lib/vagent/engine-key.env",
		"Service.Environment":        `"PYTHONUNBUFFERED=1"`,
		"Service.Restart":            "on-failure",
		"Service.RestartSec":         "5s",
		"Service.TimeoutStartSec":    "900s",
		"Service.TimeoutStopSec":     "30s",
		"Service.KillMode":           "mixed",
		"Service.KillSignal":         "SIGTERM",
		"Service.NoNewPrivileges":    "yes",
		"Service.PrivateTmp":         "yes",
		// Hardening (units.go's hardening).
		"Service.PrivateMounts":           "yes",
		"Service.ProtectSystem":           "strict",
		"Service.ProtectHome":             "yes",
		"Service.ReadWritePaths":          "-/var/lib/vagent -/var/cache/vagent -/var/lib/vagent/hf -/run/vagent",
		"Service.PrivateDevices":          "no",
		"Service.DevicePolicy":            "closed",
		"Service.DeviceAllow":             "char-nvidia* rw",
		"Service.ProtectKernelTunables":   "yes",
		"Service.ProtectKernelModules":    "yes",
		"Service.ProtectKernelLogs":       "yes",
		"Service.ProtectControlGroups":    "yes",
		"Service.ProtectClock":            "yes",
		"Service.ProtectHostname":         "yes",
		"Service.ProtectProc":             "invisible",
		"Service.ProcSubset":              "all",
		"Service.RestrictNamespaces":      "yes",
		"Service.RestrictRealtime":        "yes",
		"Service.RestrictSUIDSGID":        "yes",
		"Service.LockPersonality":         "yes",
		"Service.MemoryDenyWriteExecute":  "no",
		"Service.RemoveIPC":               "yes",
		"Service.CapabilityBoundingSet":   "",
		"Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
		"Service.SystemCallArchitectures": "native",
		"Service.SystemCallFilter":        "@system-service @resources\n~@privileged",
		"Service.SystemCallErrorNumber":   "EPERM",
		"Service.UMask":                   "0027",
		"Install.WantedBy":                "multi-user.target",
	}
	if !reflect.DeepEqual(got, want) {
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s=%q, want %q", k, got[k], v)
			}
		}
		for k, v := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected %s=%q", k, v)
			}
		}
	}

	// Without a user the unit runs as systemd's default; % in a path is
	// not a specifier.
	cfg.Units.User, cfg.Units.Group = "", ""
	cfg.Paths.StateDir = "/srv/100%state"
	files, err = Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := string(files[TemplateName])
	if strings.Contains(tmpl, "User=") || strings.Contains(tmpl, "Group=") {
		t.Errorf("User=/Group= without units.user:\n%s", tmpl)
	}
	if !strings.Contains(tmpl, "\nEnvironmentFile=/srv/100%%state/engine-key.env\n") {
		t.Errorf("state dir not escaped:\n%s", tmpl)
	}
}

// testConfig is a valid configuration built in code, so that tests can put
// in values config.Load would refuse: units must not trust its input.
func testConfig(agents ...*config.Agent) *config.Config {
	c := config.Defaults()
	c.Path = "/etc/vagent/vagent.toml"
	c.Agents = agents
	return &c
}

func testAgent(name string, util float64, gpus ...int) *config.Agent {
	if len(gpus) == 0 {
		gpus = []int{0}
	}
	return &config.Agent{
		Name: name, File: "/etc/vagent/agents/" + name + ".toml",
		Model: "Qwen/Qwen2.5-7B-Instruct-AWQ", Revision: "main", Port: 8000 + len(name),
		GPUs: gpus, GPUMemoryUtilization: util, Dtype: "auto", KVCacheDtype: "auto",
		TensorParallelSize: len(gpus),
	}
}

func conflictsOf(t *testing.T, files Files, name string) []string {
	t.Helper()
	u := readDropIn(t, files, name)
	c := u.values("Unit", "Conflicts")
	if len(c) == 0 {
		if a := u.values("Unit", "After"); len(a) > 0 {
			t.Errorf("%s: After=%q without Conflicts=", name, a)
		}
		return nil
	}
	if len(c) > 1 {
		t.Fatalf("%s: %d Conflicts= lines", name, len(c))
	}
	// Each conflicting pair is ordered exactly once, the later name after
	// the earlier, so that the orderings can never form a cycle.
	conflicts := strings.Fields(c[0])
	var wantAfter []string
	for _, o := range conflicts {
		if o < config.UnitName(name) {
			wantAfter = append(wantAfter, o)
		}
	}
	var after []string
	for _, a := range u.values("Unit", "After") {
		after = append(after, strings.Fields(a)...)
	}
	if !reflect.DeepEqual(after, wantAfter) {
		t.Errorf("%s: After=%q, want %q", name, after, wantAfter)
	}
	return conflicts
}

func TestConflicts(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	files, err := Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.Agents {
		if got := conflictsOf(t, files, a.Name); len(got) != 2 {
			t.Errorf("shipped %s (0.92 of 16 GB) conflicts with %v, want both others", a.Name, got)
		}
	}

	for _, tc := range []struct {
		name   string
		agents []*config.Agent
		totals map[int]uint64
		want   map[string][]string
	}{
		{"0.4+0.4 fit on 16 GB", []*config.Agent{testAgent("a", 0.4), testAgent("b", 0.4)},
			map[int]uint64{0: gib16}, map[string][]string{}},
		{"0.92+0.4 do not", []*config.Agent{testAgent("a", 0.92), testAgent("b", 0.4)},
			map[int]uint64{0: gib16}, map[string][]string{"a": {"vagent@b.service"}, "b": {"vagent@a.service"}}},
		{"different GPUs never conflict", []*config.Agent{testAgent("a", 0.92, 0), testAgent("b", 0.92, 1)},
			map[int]uint64{0: gib16, 1: gib16}, map[string][]string{}},
		// 0.49+0.49 of 1 GiB leave 20 MiB, less than the 256 MiB reserve.
		{"the reserve counts when the size is known", []*config.Agent{testAgent("a", 0.49), testAgent("b", 0.49)},
			map[int]uint64{0: 1 << 30}, map[string][]string{"a": {"vagent@b.service"}, "b": {"vagent@a.service"}}},
		{"unknown size: fractions alone", []*config.Agent{testAgent("a", 0.49), testAgent("b", 0.49)},
			nil, map[string][]string{}},
		{"unknown size: over 1 conflicts", []*config.Agent{testAgent("a", 0.6), testAgent("b", 0.5)},
			nil, map[string][]string{"a": {"vagent@b.service"}, "b": {"vagent@a.service"}}},
		{"a tensor-parallel agent conflicts on the GPU it shares", []*config.Agent{
			testAgent("tp", 0.9, 0, 1), testAgent("one", 0.5, 1), testAgent("zero", 0.05, 0)},
			map[int]uint64{0: gib16, 1: gib16},
			map[string][]string{"tp": {"vagent@one.service"}, "one": {"vagent@tp.service"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, err := Render(testConfig(tc.agents...), tc.totals)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.agents {
				got := conflictsOf(t, files, a.Name)
				if !reflect.DeepEqual(got, tc.want[a.Name]) {
					t.Errorf("%s conflicts with %v, want %v", a.Name, got, tc.want[a.Name])
				}
			}
		})
	}
}

// configError finds the *config.Error for field among err's.
func configError(t *testing.T, err error, file, field string) *config.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one for %s in %s", field, file)
	}
	var es config.Errors
	if !errors.As(err, &es) {
		t.Fatalf("error %v is %T, want config.Errors", err, err)
	}
	for _, e := range es {
		if e.File == file && e.Field == field {
			return e
		}
	}
	t.Fatalf("no error for %s in %s among:\n%v", field, file, err)
	return nil
}

func TestExtraArgs(t *testing.T) {
	a := testAgent("dev", 0.5)
	a.ExtraArgs = []string{"--max-num-batched-tokens", "8192", "--seed=-1", "--enable-log-requests",
		"--max-logprobs", "-1"}
	cfg := testConfig(a)
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := readDropIn(t, files, "dev")
	if tail := u.argv[len(u.argv)-len(a.ExtraArgs):]; !reflect.DeepEqual(tail, a.ExtraArgs) {
		t.Errorf("extra args rendered as %q, want %q at the end", tail, a.ExtraArgs)
	}

	for _, tc := range []struct {
		version string
		arg     string
		msg     string
	}{
		{"0.18.0", "--no-such-flag", "has no flag --no-such-flag"},
		{"0.18.0", "--max_num_seqs=4", "has no flag --max_num_seqs"},
		{"0.18.0", "--max-num-seq", "has no flag --max-num-seq"}, // argparse prefixes: never
		{"0.18.0", "--port=9", "repeats a flag vagent sets"},
		{"0.18.0", "-tp", "repeats a flag vagent sets"},
		{"0.12.0", "--disable-log-requests", "never passes"}, // 0.12 still parses it
		{"0.12.0", "--task", "never passes"},
		{"0.18.0", "--help", "never passes"},
		{"0.12.0", "--shutdown-timeout", "has no flag"}, // 2026 versions only
	} {
		a := testAgent("dev", 0.5)
		a.ExtraArgs = []string{"--seed", "1", tc.arg}
		cfg := testConfig(a)
		cfg.Engine.VLLMVersion = tc.version
		files, err := Render(cfg, nil)
		if files != nil {
			t.Errorf("%s: files returned with an error", tc.arg)
		}
		e := configError(t, err, a.File, "extra_args")
		if e.Agent != "dev" || !strings.Contains(e.Msg, tc.msg) || !strings.Contains(e.Msg, "entry 3") {
			t.Errorf("%s on %s: %v", tc.arg, tc.version, e)
		}
	}
}

func TestRenderedFlags(t *testing.T) {
	yes, no := true, false
	temp, topK, maxTok := 0.0, 40, 512
	a := testAgent("dev", 0.5, 0, 1)
	a.KVCacheMemoryBytes = 4 << 30
	a.Dtype, a.KVCacheDtype, a.Quantization = "bfloat16", "fp8", "awq_marlin"
	a.EnablePrefixCaching = &no
	a.EnforceEager, a.TrustRemoteCode = true, true
	a.Revision = "v1.0"
	a.ChatTemplate = "-{{ messages }}"
	a.ReasoningParser = "deepseek_r1"
	a.Sampling = config.Sampling{Temperature: &temp, TopK: &topK, MaxTokens: &maxTok}
	files, err := Render(testConfig(a), nil)
	if err != nil {
		t.Fatal(err)
	}
	u := readDropIn(t, files, "dev")
	want := []string{"/usr/bin/vllm-sim", "serve", a.Model, "--host", "127.0.0.1", "--port", itoa(a.Port),
		"--kv-cache-memory-bytes", "4294967296", "--dtype", "bfloat16", "--quantization", "awq_marlin",
		"--kv-cache-dtype", "fp8", "--no-enable-prefix-caching", "--tensor-parallel-size", "2",
		"--enforce-eager", "--chat-template=-{{ messages }}", "--revision", "v1.0", "--trust-remote-code",
		"--reasoning-parser", "deepseek_r1",
		"--override-generation-config", `{"temperature":0,"top_k":40}`}
	if !reflect.DeepEqual(u.argv, want) {
		t.Errorf("argv\n got %q\nwant %q", u.argv, want)
	}
	if u.env["CUDA_VISIBLE_DEVICES"] != "0,1" {
		t.Errorf("CUDA_VISIBLE_DEVICES=%q", u.env["CUDA_VISIBLE_DEVICES"])
	}

	// Unset typed fields render nothing; a served name list renders in order.
	b := testAgent("po", 0.3)
	b.EnablePrefixCaching = &yes
	b.ServedNames = []string{"po", "product-owner"}
	files, err = Render(testConfig(b), nil)
	if err != nil {
		t.Fatal(err)
	}
	u = readDropIn(t, files, "po")
	want = []string{"/usr/bin/vllm-sim", "serve", b.Model, "--host", "127.0.0.1", "--port", itoa(b.Port),
		"--served-model-name", "po", "product-owner", "--gpu-memory-utilization", "0.3", "--enable-prefix-caching"}
	if !reflect.DeepEqual(u.argv, want) {
		t.Errorf("argv\n got %q\nwant %q", u.argv, want)
	}
}

func TestEnvironment(t *testing.T) {
	a := testAgent("dev", 0.5)
	a.Env = map[string]string{"HOME": "/home/dev", "ZED": "agent", "SHARED": "agent", "VLLM_SIM_LOAD_SECONDS": "0.5"}
	cfg := testConfig(a)
	cfg.Engine.Env = map[string]string{"SHARED": "engine", "ALPHA": "a b $HOME 100%"}
	cfg.GPU.SimLoadSeconds = 2.50
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := readDropIn(t, files, "dev")
	wantOrder := []string{"HF_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "HOME", "XDG_CACHE_HOME",
		"TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH", "VLLM_CACHE_ROOT", "VLLM_NO_USAGE_STATS",
		"VLLM_SIM_LEDGER", "VLLM_SIM_GPUS", "VLLM_SIM_TOTAL_MIB", "VLLM_SIM_VERSION", "VLLM_SIM_LOAD_SECONDS",
		"ALPHA", "SHARED", "ZED"}
	if !reflect.DeepEqual(u.envOrder, wantOrder) {
		t.Errorf("env order\n got %q\nwant %q", u.envOrder, wantOrder)
	}
	for k, v := range map[string]string{"HOME": "/home/dev", "SHARED": "agent", "ALPHA": "a b $HOME 100%",
		"VLLM_SIM_LOAD_SECONDS": "0.5", "VLLM_SIM_TOTAL_MIB": "16376", "VLLM_SIM_GPUS": "1"} {
		if u.env[k] != v {
			t.Errorf("%s=%q, want %q", k, u.env[k], v)
		}
	}

	// The simulator's load time is written without trailing zeros.
	a.Env = nil
	cfg.GPU.SimLoadSeconds = 3
	files, _ = Render(cfg, nil)
	if got := readDropIn(t, files, "dev").env["VLLM_SIM_LOAD_SECONDS"]; got != "3" {
		t.Errorf("VLLM_SIM_LOAD_SECONDS=%q", got)
	}

	// A real engine: the venv's vllm, no simulator settings.
	cfg.Engine.Kind = config.EngineVLLM
	cfg.Engine.Venv = "/opt/vagent/venv"
	files, err = Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	u = readDropIn(t, files, "dev")
	if u.argv[0] != "/opt/vagent/venv/bin/vllm" {
		t.Errorf("binary %q", u.argv[0])
	}
	for k := range u.env {
		if strings.HasPrefix(k, "VLLM_SIM_") {
			t.Errorf("%s set for a real engine", k)
		}
	}
}

func TestRenderRefuses(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name   string
		mutate func(c *config.Config, a *config.Agent)
		main   bool // the error is the main file's
		field  string
	}{
		{"newline in model", func(c *config.Config, a *config.Agent) { a.Model = "a\nExecStartPre=/bin/evil" }, false, "model"},
		{"CR in chat template", func(c *config.Config, a *config.Agent) { a.ChatTemplate = "x\ry" }, false, "chat_template"},
		{"NUL in extra arg", func(c *config.Config, a *config.Agent) { a.ExtraArgs = []string{"a\x00"} }, false, "extra_args"},
		{"newline in env", func(c *config.Config, a *config.Agent) { a.Env = map[string]string{"X": "1\nUser=root"} }, false, "env"},
		{"invalid UTF-8", func(c *config.Config, a *config.Agent) { a.ServedNames = []string{"\xff"} }, false, "served_names"},
		{"model looks like a flag", func(c *config.Config, a *config.Agent) { a.Model = "--help" }, false, "model"},
		{"served name looks like a flag", func(c *config.Config, a *config.Agent) { a.ServedNames = []string{"-x"} }, false, "served_names"},
		{"bad env name", func(c *config.Config, a *config.Agent) { a.Env = map[string]string{"A B": "1"} }, false, "env"},
		{"locked env", func(c *config.Config, a *config.Agent) { a.Env = map[string]string{"CUDA_VISIBLE_DEVICES": "1"} }, false, "env"},
		{"locked engine env", func(c *config.Config, a *config.Agent) { c.Engine.Env = map[string]string{"VLLM_SIM_LEDGER": "/x"} }, true, "engine.env"},
		{"bad agent name", func(c *config.Config, a *config.Agent) { a.Name = "../x" }, false, "name"},
		{"NaN sampling", func(c *config.Config, a *config.Agent) { a.Sampling.TopP = &nan }, false, "sampling"},
		{"relative binary", func(c *config.Config, a *config.Agent) { c.Engine.SimBinary = "vllm-sim" }, true, "engine.sim_binary"},
		{"$ in binary", func(c *config.Config, a *config.Agent) { c.Engine.SimBinary = "/opt/$X/vllm-sim" }, true, "engine.sim_binary"},
		{"unclean venv", func(c *config.Config, a *config.Agent) { c.Engine.Kind, c.Engine.Venv = "vllm", "/opt//venv" }, true, "engine.venv"},
		{"newline in HF home", func(c *config.Config, a *config.Agent) { c.Paths.HFHome = "/x\n" }, true, "paths.hf_home"},
		{"user with space", func(c *config.Config, a *config.Agent) { c.Units.User = "a b\n" }, true, "units.user"},
		{"bad version", func(c *config.Config, a *config.Agent) { c.Engine.VLLMVersion = "latest" }, true, "engine.vllm_version"},
		{"bad port", func(c *config.Config, a *config.Agent) { a.Port = 70000 }, false, "port"},
		{"no port on a vLLM without --uds", func(c *config.Config, a *config.Agent) { a.Port = 0; c.Engine.VLLMVersion = "0.9.2" }, false, "port"},
		{"no GPU", func(c *config.Config, a *config.Agent) { a.GPUs = nil }, false, "gpus"},
		{"argument longer than MAX_ARG_STRLEN", func(c *config.Config, a *config.Agent) { a.ChatTemplate = strings.Repeat("x", maxArg+1) }, false, "chat_template"},
		{"variable longer than MAX_ARG_STRLEN", func(c *config.Config, a *config.Agent) { a.Env = map[string]string{"X": strings.Repeat("x", maxArg-1)} }, false, "env"},
		{"command line longer than LONG_LINE_MAX", func(c *config.Config, a *config.Agent) {
			for range 9 {
				a.ExtraArgs = append(a.ExtraArgs, "--tokenizer", strings.Repeat("t", maxArg))
			}
		}, false, ""},
		{"user name longer than a template line", func(c *config.Config, a *config.Agent) { c.Units.User = strings.Repeat("u", maxLine) }, true, ""},
		{"state dir with ..", func(c *config.Config, a *config.Agent) { c.Paths.StateDir = "/var/lib/../lib/vagent" }, true, "paths.state_dir"},
		{"state dir too long for the key file", func(c *config.Config, a *config.Agent) { c.Paths.StateDir = "/" + strings.Repeat("s/", 2040) + "s" }, true, "paths.state_dir"},
		{"tab in a writable path", func(c *config.Config, a *config.Agent) { c.Paths.CacheDir = "/var/cache/va\tgent" }, true, "paths.cache_dir"},
		{"relative local model", func(c *config.Config, a *config.Agent) { a.Model = "./models/dev" }, false, "model"},
		{"a number argparse reads as an option", func(c *config.Config, a *config.Agent) { a.ExtraArgs = []string{"--seed", "-1e5"} }, false, "extra_args"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAgent("dev", 0.5)
			cfg := testConfig(a, testAgent("po", 0.5))
			tc.mutate(cfg, a)
			files, err := Render(cfg, nil)
			if files != nil {
				t.Error("files returned with an error")
			}
			file := a.File
			if tc.main {
				file = cfg.Path
			}
			e := configError(t, err, file, tc.field)
			if !tc.main && e.Agent != a.Name {
				t.Errorf("error names agent %q: %v", e.Agent, e)
			}
		})
	}

	// Two agents of one name would write one file.
	if _, err := Render(testConfig(testAgent("dev", 0.1), testAgent("dev", 0.1)), nil); err == nil {
		t.Error("two agents called dev rendered")
	}
	// A system prompt is never rendered, so its lines are fine.
	a := testAgent("dev", 0.5)
	a.SystemPrompt = "line one\nline two"
	if _, err := Render(testConfig(a), nil); err != nil {
		t.Errorf("system prompt with newlines: %v", err)
	}
}

func TestQuoteWord(t *testing.T) {
	for _, tc := range []struct {
		in, exec, env string
	}{
		{"plain-word_1.2/x:y=z,+@", "plain-word_1.2/x:y=z,+@", `"K=plain-word_1.2/x:y=z,+@"`},
		{"", `""`, `"K="`},
		{"a b", `"a b"`, `"K=a b"`},
		{"100%", `"100%%"`, `"K=100%%"`},
		{"$HOME", `"$$HOME"`, `"K=$HOME"`},
		{`{"t":1}`, `'{"t":1}'`, `'K={"t":1}'`},
		{`it's "x"`, `"it's \"x\""`, `"K=it's \"x\""`},
		{`back\slash`, `"back\\slash"`, `"K=back\\slash"`},
		{";", `";"`, `"K=;"`},
		{"#x", `"#x"`, `"K=#x"`},
		{"tab\there", `"tab\x09here"`, `"K=tab\x09here"`},
		{"{% if x %}ü{% endif %}", `"{%% if x %%}ü{%% endif %%}"`, `"K={%% if x %%}ü{%% endif %%}"`},
	} {
		got, err := quoteWord(tc.in, true, false)
		if err != nil || got != tc.exec {
			t.Errorf("exec %q: got %s (%v), want %s", tc.in, got, err, tc.exec)
		}
		argv, err := parseExec("/bin/x " + got)
		if err != nil || len(argv) != 2 || argv[1] != tc.in {
			t.Errorf("exec %q: %s reads back as %q (%v)", tc.in, got, argv, err)
		}
		got, err = quoteWord("K="+tc.in, false, true)
		if err != nil || got != tc.env {
			t.Errorf("env %q: got %s (%v), want %s", tc.in, got, err, tc.env)
		}
		kv, err := parseEnv(got)
		if err != nil || len(kv) != 1 || kv[0][1] != tc.in {
			t.Errorf("env %q: %s reads back as %q (%v)", tc.in, got, kv, err)
		}
	}
	for _, bad := range []string{"a\nb", "a\rb", "a\x00b", "\xc3"} {
		if _, err := quoteWord(bad, true, false); err == nil {
			t.Errorf("%q quoted", bad)
		}
	}
}
