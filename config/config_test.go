package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// shipped loads the configuration the project ships.
func shipped(t *testing.T, dir string) *Config {
	t.Helper()
	c, err := Load(filepath.Join("..", dir, "vagent.toml"))
	if err != nil {
		t.Fatalf("shipped config %s: %v", dir, err)
	}
	return c
}

func TestShippedConfigsLoad(t *testing.T) {
	c := shipped(t, "configs")
	want := map[string]struct {
		model string
		temp  float64
		port  int
	}{
		// No ports: the engines listen on unix sockets.
		"architect": {"Qwen/Qwen2.5-14B-Instruct-AWQ", 0.1, 0},
		"dev":       {"Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", 0.3, 0},
		"po":        {"Qwen/Qwen2.5-7B-Instruct-AWQ", 0.5, 0},
	}
	if len(c.Agents) != len(want) {
		t.Fatalf("got %d agents, want %d", len(c.Agents), len(want))
	}
	for _, a := range c.Agents {
		w, ok := want[a.Name]
		if !ok {
			t.Errorf("unexpected agent %s", a.Name)
			continue
		}
		if a.Model != w.model || a.Port != w.port || a.Sampling.Temperature == nil || *a.Sampling.Temperature != w.temp {
			t.Errorf("agent %s: model %s port %d temperature %v; want %+v", a.Name, a.Model, a.Port, a.Sampling.Temperature, w)
		}
		if a.Unit() != "vagent@"+a.Name+".service" {
			t.Errorf("unit %s", a.Unit())
		}
	}
	if c.Engine.Kind != EngineSim || c.GPU.Backend != GPUBackendAuto {
		t.Errorf("shipped default engine %s/%s, want the simulator", c.Engine.Kind, c.GPU.Backend)
	}
	shipped(t, "configs/examples/24gb")
	two := shipped(t, "configs/examples/2x24gb")
	if two.GPU.SimCount != 2 {
		t.Errorf("2x24gb: gpu.sim_count %d, want 2", two.GPU.SimCount)
	}
	for name, gpus := range map[string][]int{"architect": {0, 1}, "dev": {1}, "po": {0}} {
		a := two.Agent(name)
		if a == nil || !reflect.DeepEqual(a.GPUs, gpus) || a.TensorParallelSize != len(gpus) {
			t.Errorf("2x24gb %s: %+v, want gpus %v with tensor_parallel_size %d", name, a, gpus, len(gpus))
		}
	}
}

func TestShippedDefaultsMatchCodeDefaults(t *testing.T) {
	c := shipped(t, "configs")
	d := Defaults()
	if !reflect.DeepEqual(c.Engine, d.Engine) ||
		c.Paths != d.Paths || c.GPU != d.GPU || c.Gateway != d.Gateway || c.Units != d.Units || c.Supervisor != d.Supervisor {
		t.Errorf("configs/vagent.toml says it shows the defaults but differs:\n file %+v\n code %+v", c, d)
	}
}

// writeConfig lays out a main file and agent files in a temp dir.
func writeConfig(t *testing.T, main string, agents map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vagent.toml")
	if err := os.WriteFile(path, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, body := range agents {
		if err := os.WriteFile(filepath.Join(dir, "agents", name+".toml"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

const goodAgent = "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\nport = 8002\n"

func TestBadConfigsAreRejectedWithFileLineAndField(t *testing.T) {
	cases := []struct {
		name   string
		main   string
		agents map[string]string
		want   []string // substrings of the error
	}{
		{
			name:   "unknown key in agent",
			agents: map[string]string{"po": goodAgent + "\n[sampling]\ntemprature = 0.5\n"},
			want:   []string{"agents/po.toml:5:", `agent "po"`, "sampling.temprature: unknown key"},
		},
		{
			name:   "typo in an agent key gets a suggestion",
			agents: map[string]string{"po": goodAgent + "\n[sampling]\ntemprature = 0.5\n"},
			want:   []string{"agents/po.toml:5:", `sampling.temprature: unknown key; did you mean "sampling.temperature"?`},
		},
		{
			name:   "key outside its table gets a suggestion",
			agents: map[string]string{"po": "temperature = 0.5\n" + goodAgent},
			want:   []string{"agents/po.toml:1:", `temperature: unknown key; did you mean "sampling.temperature"?`},
		},
		{
			name: "typo in a main key and table",
			main: "[gpu]\nbackedn = \"sim\"\n[gatway]\nlisten = \"127.0.0.1:8080\"\n",
			want: []string{"vagent.toml:2:", `gpu.backedn: unknown key; did you mean "gpu.backend"?`,
				"vagent.toml:3:", `gatway: unknown key; did you mean "gateway"?`},
		},
		{
			name:   "nothing close, no suggestion",
			agents: map[string]string{"po": goodAgent + "flavour = \"vanilla\"\n"},
			want:   []string{"agents/po.toml:3:", "flavour: unknown key"},
		},
		{
			name: "every file's errors in one run",
			main: "[gateway]\nlisten = \"127.0.0.1:8080\"\nport = 9\n",
			agents: map[string]string{
				"po":  goodAgent + "gpu_memory_utilization = 1.5\n",
				"dev": "model = \"Qwen/x\nport = 1\n",
				"qa":  "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\nport = 8003\nrevision = \"../x\"\nmax_model_lenn = 4\n",
			},
			want: []string{"vagent.toml:3:", "gateway.port: unknown key",
				"agents/po.toml:3:", "gpu_memory_utilization: must be in (0, 1]",
				"agents/dev.toml:1:",
				"agents/qa.toml:3:", "revision:", "agents/qa.toml:4:", `max_model_lenn: unknown key; did you mean "max_model_len"?`},
		},
		{
			name: "unknown key in main",
			main: "[gateway]\nlisten = \"127.0.0.1:8080\"\nport = 9\n",
			want: []string{"vagent.toml:3:", "gateway.port: unknown key"},
		},
		{
			name: "duplicate port",
			agents: map[string]string{
				"po":  goodAgent,
				"dev": "model = \"Qwen/Qwen2.5-Coder-14B-Instruct-AWQ\"\n\nport = 8002\n",
			},
			want: []string{"agents/po.toml:2:", `agent "po"`, "port: 8002 is already used by agent \"dev\""},
		},
		{
			name:   "newline in a value",
			agents: map[string]string{"po": goodAgent + "chat_template = \"a\\nExecStartPre=/bin/evil\"\n"},
			want:   []string{"agents/po.toml:3:", "chat_template: must not contain a newline"},
		},
		{
			name:   "bad agent name",
			agents: map[string]string{"Bad.Name": goodAgent},
			want:   []string{"Bad.Name.toml", `agent "Bad.Name"`, "name: agent names"},
		},
		{
			name:   "utilization out of range",
			agents: map[string]string{"po": goodAgent + "gpu_memory_utilization = 1.5\n"},
			want:   []string{"agents/po.toml:3:", "gpu_memory_utilization: must be in (0, 1]"},
		},
		{
			name:   "model neither hub id nor directory",
			agents: map[string]string{"po": "model = \"/no/such/dir\"\nport = 8002\n"},
			want:   []string{"agents/po.toml:1:", `model: "/no/such/dir" is a path but not an existing directory`},
		},
		{
			name:   "extra args repeat a managed flag",
			agents: map[string]string{"po": goodAgent + "extra_args = [\"--port=9\"]\n"},
			want:   []string{"extra_args: entry 1 \"--port=9\" repeats a flag vagent sets"},
		},
		{
			name:   "wrong type",
			agents: map[string]string{"po": "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\nport = \"8002\"\n"},
			want:   []string{"agents/po.toml:2:", "port"},
		},
		{
			name:   "syntax error",
			agents: map[string]string{"po": "model = \"Qwen/x\nport = 1\n"},
			want:   []string{"agents/po.toml:1:"},
		},
		{
			name:   "alias taken by another agent",
			agents: map[string]string{"po": goodAgent, "dev": "model = \"Qwen/x\"\nport = 8001\naliases = [\"po\"]\n"},
			want:   []string{"agents/dev.toml:3:", `name "po" already belongs to agent "po"`},
		},
		{
			name:   "managed env",
			agents: map[string]string{"po": goodAgent + "[env]\nCUDA_VISIBLE_DEVICES = \"1\"\n"},
			want:   []string{"env: CUDA_VISIBLE_DEVICES is set by vagent itself"},
		},
		{
			name:   "Hub token in an agent's env",
			agents: map[string]string{"po": goodAgent + "[env]\nHF_TOKEN = \"hf_abc\"\n"},
			want:   []string{"agents/po.toml:", `agent "po"`, "env: HF_TOKEN looks like a secret", "HF_HOME/token"},
		},
		{
			name: "a secret in engine.env",
			main: "[engine]\nkind = \"sim\"\n[engine.env]\nWANDB_API_KEY = \"x\"\n",
			want: []string{"vagent.toml:", "engine.env: WANDB_API_KEY looks like a secret"},
		},
		{
			name: "engine kind",
			main: "[engine]\nkind = \"docker\"\n",
			want: []string{"vagent.toml:2:", "engine.kind: must be \"vllm\" or \"sim\""},
		},
		{
			name: "work concurrency",
			main: "[work]\nretention = \"24h\"\nconcurrency = 0\n",
			want: []string{"vagent.toml:3:", "work.concurrency: must be between 1 and 1024, not 0"},
		},
		{
			name: "work retention",
			main: "[work]\nretention = \"-1h\"\n",
			want: []string{"vagent.toml:2:", "work.retention: must not be negative"},
		},
		{
			name: "global switch mode",
			main: "[supervisor]\nhealth_timeout = \"1m\"\nswitch_mode = \"hibernate\"\n",
			want: []string{"vagent.toml:3:", "supervisor.switch_mode: must be \"restart\" or \"sleep\", not \"hibernate\""},
		},
		{
			name:   "agent switch mode",
			agents: map[string]string{"po": goodAgent + "switch_mode = \"nap\"\n"},
			want:   []string{"agents/po.toml:3:", `agent "po"`, "switch_mode: must be \"restart\" or \"sleep\""},
		},
		{
			name:   "sleep level",
			agents: map[string]string{"po": goodAgent + "sleep_level = 3\n"},
			want:   []string{"agents/po.toml:3:", "sleep_level: must be 1 (weights to host RAM) or 2"},
		},
		{
			name:   "dev mode is vagent's",
			agents: map[string]string{"po": goodAgent + "[env]\nVLLM_SERVER_DEV_MODE = \"1\"\n"},
			want:   []string{"env: VLLM_SERVER_DEV_MODE is set by vagent itself"},
		},
		{
			name:   "revision climbing out of the Hub cache",
			agents: map[string]string{"po": goodAgent + "revision = \"../../../../x\"\n"},
			want:   []string{"agents/po.toml:3:", `agent "po"`, `revision: "../../../../x" must not contain ".."`},
		},
		{
			name:   "absolute revision",
			agents: map[string]string{"po": goodAgent + "revision = \"/etc/passwd\"\n"},
			want:   []string{"agents/po.toml:3:", "revision: \"/etc/passwd\" must not start or end with '/'"},
		},
		{
			name:   "overlong revision",
			agents: map[string]string{"po": goodAgent + "revision = \"" + strings.Repeat("a", 300) + "\"\n"},
			want:   []string{"agents/po.toml:3:", "revision: is 300 bytes long"},
		},
		{
			name: "gateway bounds",
			main: "[gateway]\nmax_body_mib = 0\nbody_timeout = \"0s\"\nmax_connections = 0\nmax_requests_per_key = -1\n",
			want: []string{"vagent.toml:2:", "gateway.max_body_mib: must be between 1 and 4096, not 0",
				"vagent.toml:3:", "gateway.body_timeout: must be positive",
				"vagent.toml:4:", "gateway.max_connections: must be at least 1",
				"vagent.toml:5:", "gateway.max_requests_per_key: must be at least 1"},
		},
		{
			name: "batch upload bound",
			main: "[batch]\nmax_file_mib = 0\n",
			want: []string{"vagent.toml:2:", "batch.max_file_mib: must be between 1 and 1048576 (1 TiB), not 0"},
		},
		{
			name:   "sleep mode is a key, not an extra arg",
			agents: map[string]string{"po": goodAgent + "extra_args = [\"--enable-sleep-mode\"]\n"},
			want:   []string{"extra_args: entry 1 \"--enable-sleep-mode\" repeats a flag vagent sets"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.main, tc.agents)
			_, err := Load(path)
			if err == nil {
				t.Fatal("bad config accepted")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error %T is not config.Errors: %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestMultiLineSystemPromptIsAllowed(t *testing.T) {
	path := writeConfig(t, "", map[string]string{"po": goodAgent + "system_prompt = \"\"\"\nBe brief.\nBe kind.\n\"\"\"\n"})
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Agents[0].SystemPrompt; got != "Be brief.\nBe kind.\n" {
		t.Errorf("system prompt %q", got)
	}
}

func TestAgentDefaultsAndNames(t *testing.T) {
	path := writeConfig(t, "", map[string]string{"po": goodAgent + "served_names = [\"po-7b\"]\naliases = [\"po\", \"owner\"]\n"})
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	a := c.Agent("po")
	if a.GPUMemoryUtilization != 0.9 || a.Revision != "main" || len(a.GPUs) != 1 || a.GPUs[0] != 0 || a.TensorParallelSize != 1 {
		t.Errorf("defaults not applied: %+v", a)
	}
	if got := strings.Join(a.Names(), ","); got != "po,po-7b,owner" {
		t.Errorf("names %s", got)
	}
	if a.ServedName() != "po-7b" {
		t.Errorf("served name %s", a.ServedName())
	}
}

func TestPathPrecedence(t *testing.T) {
	t.Setenv(EnvPath, "/from/env.toml")
	if p := Path("/from/flag.toml"); p != "/from/flag.toml" {
		t.Errorf("flag: %s", p)
	}
	if p := Path(""); p != "/from/env.toml" {
		t.Errorf("env: %s", p)
	}
	t.Setenv(EnvPath, "")
	if p := Path(""); p != DefaultPath {
		t.Errorf("default: %s", p)
	}
}

func TestBudgetAndCannotShare(t *testing.T) {
	total := uint64(16376) << 20
	a := &Agent{Name: "a", GPUs: []int{0}, GPUMemoryUtilization: 0.92}
	b := &Agent{Name: "b", GPUs: []int{0}, GPUMemoryUtilization: 0.4}
	c := &Agent{Name: "c", GPUs: []int{0}, GPUMemoryUtilization: 0.4}
	d := &Agent{Name: "d", GPUs: []int{1}, GPUMemoryUtilization: 0.92}
	// vLLM 0.18 requests math.ceil(total × utilization): 0.92 × 16376 MiB
	// is 15797762129.92 bytes, so 15797762130.
	if got := a.Budget(total, 0); got != 15797762130 {
		t.Errorf("budget %d, want 15797762130 (rounded up, as vLLM does)", got)
	}
	pinned := &Agent{GPUMemoryUtilization: 0.9, KVCacheMemoryBytes: 2 << 30}
	if got := pinned.Budget(total, 5<<30); got != 7<<30 {
		t.Errorf("kv-pinned budget %d, want KV plus weights", got)
	}
	if !CannotShare(a, b, total, 256<<20) {
		t.Error("0.92 + 0.4 share one GPU")
	}
	if CannotShare(b, c, total, 256<<20) {
		t.Error("0.4 + 0.4 cannot share")
	}
	if CannotShare(a, d, total, 256<<20) {
		t.Error("agents on different GPUs conflict")
	}
	if !CannotShare(a, b, 0, 0) || CannotShare(b, c, 0, 0) {
		t.Error("unknown total: judge by fractions")
	}
}

func TestSwitchModeDefaults(t *testing.T) {
	path := writeConfig(t, "[supervisor]\nswitch_mode = \"sleep\"\nhost_ram_budget_mib = 20000\n", map[string]string{
		"po":  goodAgent,
		"dev": "model = \"Qwen/Qwen2.5-Coder-14B-Instruct-AWQ\"\nport = 8001\nswitch_mode = \"restart\"\n",
		"qa":  "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\nport = 8003\nsleep_level = 2\n",
	})
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Supervisor.HostRAMBudgetMiB != 20000 {
		t.Errorf("host_ram_budget_mib %d", c.Supervisor.HostRAMBudgetMiB)
	}
	for name, want := range map[string]string{"po": SwitchSleep, "dev": SwitchRestart, "qa": SwitchSleep} {
		if got := c.SwitchMode(c.Agent(name)); got != want {
			t.Errorf("%s: switch mode %q, want %q", name, got, want)
		}
	}
	if c.Agent("po").Level() != 1 || c.Agent("qa").Level() != 2 {
		t.Errorf("sleep levels %d %d, want 1 and 2", c.Agent("po").Level(), c.Agent("qa").Level())
	}
	if c.MayConflict(c.Agent("dev"), c.Agent("po")) {
		t.Error("a sleep agent may carry Conflicts=")
	}
	d := Defaults()
	if d.SwitchMode(&Agent{}) != SwitchRestart {
		t.Error("the default switch mode is not restart")
	}
}

// TestAgentListenConflicts: an agent's listener may not take another's
// port, the gateway's or an engine's; each refusal names the file and line.
func TestAgentListenConflicts(t *testing.T) {
	const model = "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\n"
	for _, tc := range []struct {
		name   string
		agents map[string]string
		want   []string
	}{
		{"two listeners on one port", map[string]string{"a": model + "listen = \"127.0.0.1:8000\"\n", "b": model + "\nlisten = \"127.0.0.1:8000\"\n"},
			[]string{"agents/b.toml:3:", "listen: port 8000 is already agent \"a\"'s listen"}},
		{"the gateway's port", map[string]string{"a": model + "listen = \"127.0.0.1:8080\"\n"},
			[]string{"agents/a.toml:2:", "listen: port 8080 is the gateway's"}},
		{"an engine's port", map[string]string{"a": model + "listen = \"127.0.0.1:8001\"\n", "b": model + "port = 8001\n"},
			[]string{"agents/a.toml:2:", "listen: port 8001 is agent \"b\"'s engine port"}},
		{"not an address", map[string]string{"a": model + "listen = \"8000\"\n"},
			[]string{"agents/a.toml", "listen: must be host:port"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, "[gateway]\nlisten = \"127.0.0.1:8080\"\n", tc.agents))
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := Load(writeConfig(t, "", map[string]string{"a": model + "listen = \"127.0.0.1:8000\"\n", "b": model + "listen = \"127.0.0.1:8001\"\n"})); err != nil {
		t.Errorf("two listeners on two ports: %v", err)
	}
}

// Two tensor-parallel agents over a 48 GiB and a 16 GiB card at 0.48 each:
// both fit the big card beside 1 GiB kept free, not the small one, so they
// cannot run together, as units render it (a Conflicts= per shared card).
func TestCannotShareOnEveryCard(t *testing.T) {
	a := &Agent{Name: "a", GPUs: []int{0, 1}, TensorParallelSize: 2, GPUMemoryUtilization: 0.48}
	b := &Agent{Name: "b", GPUs: []int{0, 1}, TensorParallelSize: 2, GPUMemoryUtilization: 0.48}
	c := &Agent{Name: "c", GPUs: []int{0}, GPUMemoryUtilization: 0.48}
	totals := map[int]uint64{0: 48 << 30, 1: 16 << 30}
	const reserve = 1 << 30
	if CannotShare(a, b, totals[0], reserve) || !CannotShare(a, b, totals[1], reserve) {
		t.Fatal("the cards do not differ as this test needs")
	}
	if !CannotShareOn(a, b, totals, reserve) || !CannotShareOn(b, a, totals, reserve) {
		t.Error("a and b share the 16 GiB card, which cannot hold both, yet they may run together")
	}
	if CannotShareOn(a, c, totals, reserve) {
		t.Error("a and c share only the 48 GiB card, which holds both, yet they conflict")
	}
}
