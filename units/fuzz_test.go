package units

import (
	"errors"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vagent-dev/vagent/config"
)

// FuzzRender puts arbitrary text where configuration text lands in a unit
// (model, served name, chat template, an env variable, an extra_args value;
// the system prompt is never rendered) and checks the invariant: Render
// either refuses, or every drop-in reads back, with systemd's own rules, as
// exactly the directives vagent meant, the command line as exactly the
// argument list and the environment as exactly the variables.
func FuzzRender(f *testing.F) {
	for _, s := range [][6]string{
		{"Qwen/Qwen2.5-7B-Instruct-AWQ", "dev", "", "FOO", "bar", "8"},
		{"org/m", "a b", "{% for m in messages %}{{ m.content }}{% endfor %}", "PS1", "$ ", "$HOME"},
		{"/models/x y", "50%", "%i %n %% %", "HOME", "/home/%u", "%%"},
		{"m", "${X}", "$X ${X} $$", "X", "${HOME}", "$"},
		{"m", "n", `"quoted" 'single' \backslash\`, "Q", `it's "x"`, `\`},
		{"m", "n", ";", "S", "; rm -rf /", ";"},
		{"m", "n", `\;`, "S", `\;`, `\`},
		{"m", "n", "#not a comment", "C", "#x", ";x"},
		{"./relative/model", "n", "./relative.jinja", "R", "x", "y"},
		{"/models/../x", "n", "/templates//t.jinja", "R", "x", "y"},
		{"m", "n", " leading and trailing ", "W", " x ", " "},
		{"m", "n", "tab\there\x01\x7f", "T", "\t", "\x1b[31m"},
		{"m", "n", "line\n[Service]\nUser=root", "N", "1\nExecStartPre=/bin/sh", "a\rb"},
		{"m", "n", "nul\x00", "Z", "\x00", "\xff"},
		{"m", "n", "ende\\", "E", "x\\", "y\\"},
		{"m", "n", "-starts-with-dash", "D", "-", "-1"},
		{"-m", "-n", "", "1BAD", "v", "--seed"},
		{"", "", "", "", "", ""},
		{"m", "n", "ünïcödé ✓ \u00a0nbsp", "U", "日本語", "Ω"},
		{"m", "n", `{"a":"b"}`, "J", `{"k":"v"}`, `'{"x":1}'`},
		{"m", "n", "", "CUDA_VISIBLE_DEVICES", "1", "x"},
		{"m", "n", "", "VLLM_NO_USAGE_STATS", "0", "x"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], "system\nprompt")
	}
	f.Fuzz(func(t *testing.T, model, served, chat, envKey, envVal, extra, prompt string) {
		temp := 0.3
		a := testAgent("dev", 0.92)
		a.Port = 8001
		a.Model, a.ServedNames, a.ChatTemplate = model, []string{served}, chat
		a.Env = map[string]string{envKey: envVal}
		a.ExtraArgs = []string{"--tokenizer", extra}
		a.SystemPrompt = prompt
		a.Sampling.Temperature = &temp
		cfg := testConfig(a, testAgent("po", 0.92))
		files, err := Render(cfg, map[int]uint64{0: gib16})

		clean := func(s string) bool { return utf8.ValidString(s) && !strings.ContainsAny(s, "\n\r\x00") }
		envOK := fuzzEnvNameRE.MatchString(envKey) && !slices.Contains(fuzzLockedEnv, envKey)
		mustFail := !clean(model) || !clean(served) || !clean(chat) || !clean(envVal) || !clean(extra) ||
			model == "" || served == "" || strings.HasPrefix(model, "-") || strings.HasPrefix(served, "-") || !envOK
		// A local model or template file must be a path systemd and the
		// engine (run from "/") read as meant: config.Load makes it so.
		mustFail = mustFail || config.IsLocalModel(model) && config.CheckPath(model) != nil ||
			config.IsChatTemplateFile(chat) && config.CheckPath(chat) != nil
		mayFail := mustFail || strings.HasPrefix(extra, "-") // a flag vLLM may not have
		if err != nil {
			if !mayFail {
				t.Fatalf("valid input refused: %v", err)
			}
			var es config.Errors
			if !errors.As(err, &es) || len(es) == 0 || files != nil {
				t.Fatalf("refusal is %T %v with files %v", err, err, files != nil)
			}
			return
		}
		if mustFail {
			t.Fatalf("rendered input that cannot be carried:\n%s", files[DropInPath("dev")])
		}

		u := readDropIn(t, files, "dev")
		var shape []string
		for _, d := range u.directives {
			shape = append(shape, d.section+"."+d.key)
		}
		wantEnv := map[string]string{
			"HF_HOME": "/var/lib/vagent/hf", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
			"HOME": "/var/lib/vagent", "XDG_CACHE_HOME": "/var/cache/vagent",
			"TRITON_CACHE_DIR": "/var/cache/vagent/triton", "TORCHINDUCTOR_CACHE_DIR": "/var/cache/vagent/torchinductor",
			"CUDA_CACHE_PATH": "/var/cache/vagent/nv", "VLLM_CACHE_ROOT": "/var/cache/vagent/vllm",
			"VLLM_NO_USAGE_STATS": "1", "VLLM_SIM_LEDGER": "/run/vagent/sim-ledger.json",
			"VLLM_SIM_GPUS": "1", "VLLM_SIM_TOTAL_MIB": "16376", "VLLM_SIM_VERSION": "0.18.0",
		}
		wantEnv[envKey] = envVal
		wantShape := []string{"Unit.Conflicts", "Service.ExecStart", "Service.ExecStart"}
		for range wantEnv {
			wantShape = append(wantShape, "Service.Environment")
		}
		if !reflect.DeepEqual(shape, wantShape) {
			t.Fatalf("directives\n got %q\nwant %q\n%s", shape, wantShape, files[DropInPath("dev")])
		}
		if c := u.values("Unit", "Conflicts"); c[0] != "vagent@po.service" {
			t.Fatalf("Conflicts=%q", c)
		}
		if !reflect.DeepEqual(u.env, wantEnv) {
			t.Fatalf("environment\n got %q\nwant %q", u.env, wantEnv)
		}

		want := []string{"/usr/bin/vllm-sim", "serve", model, "--host", "127.0.0.1", "--port", "8001",
			"--served-model-name", served, "--gpu-memory-utilization", "0.92"}
		switch {
		case chat == "":
		case strings.HasPrefix(chat, "-"):
			want = append(want, "--chat-template="+chat)
		default:
			want = append(want, "--chat-template", chat)
		}
		want = append(want, "--override-generation-config", `{"temperature":0.3}`, "--tokenizer", extra)
		if !reflect.DeepEqual(u.argv, want) {
			t.Fatalf("command line\n got %q\nwant %q\n%s", u.argv, want, files[DropInPath("dev")])
		}

		po := readDropIn(t, files, "po")
		if got := po.values("Unit", "After"); !reflect.DeepEqual(got, []string{"vagent@dev.service"}) {
			t.Fatalf("po: After=%q", got)
		}
		if _, err := parseUnit(string(files[TemplateName])); err != nil {
			t.Fatalf("template: %v", err)
		}
	})
}

// The rules a fuzzed variable name must meet, written out here rather than
// taken from the package, so that the test checks them.
var (
	fuzzEnvNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	fuzzLockedEnv = []string{"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "VLLM_API_KEY", "HF_HOME", "HF_HUB_OFFLINE",
		"VLLM_SIM_LEDGER", "VLLM_SIM_GPUS", "VLLM_SIM_TOTAL_MIB", "VLLM_SIM_VERSION"}
)
