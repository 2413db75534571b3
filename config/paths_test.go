package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every configured path that systemd would ignore (and so start an engine
// without its key, for EnvironmentFile=) or that the kernel cannot open is
// refused at load, naming the file, the line and the key.
func TestBadPathsAndNamesAreRefusedAtLoad(t *testing.T) {
	long := "/" + strings.Repeat("d/", 2050) + "x" // 4102 bytes, components fine
	longName := "/var/lib/" + strings.Repeat("n", 256)
	cases := []struct {
		name string
		main string
		want []string
	}{
		{"state_dir with ..", "[paths]\nstate_dir = \"/var/lib/vagent/../vagent\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir:", `".." component`}},
		{"state_dir with .", "[paths]\nstate_dir = \"/var/lib/./vagent\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir:", `"." component`}},
		{"state_dir not absolute", "[paths]\nstate_dir = \"var/lib/vagent\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir: must be an absolute path"}},
		{"state_dir with //", "[paths]\nstate_dir = \"/var//lib/vagent\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir:", `not normalized (systemd would ignore it): write "/var/lib/vagent"`}},
		{"state_dir with a trailing slash", "[paths]\nstate_dir = \"/var/lib/vagent/\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir:", "not normalized"}},
		{"state_dir longer than PATH_MAX", "[paths]\nstate_dir = \"" + long + "\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir: is 4102 bytes, longer than PATH_MAX allows (4095)"}},
		{"state_dir leaving no room for its files", "[paths]\nstate_dir = \"" + long[:3900] + "\"\n",
			[]string{"vagent.toml:2:", "paths.state_dir: is 3900 bytes; a directory may have at most 3839"}},
		{"component longer than NAME_MAX", "[paths]\nhf_home = \"" + longName + "\"\n",
			[]string{"vagent.toml:2:", "paths.hf_home: has a component of 256 bytes, longer than NAME_MAX allows (255)"}},
		{"tab in run_dir", "[paths]\nrun_dir = \"/run/va\\tgent\"\n",
			[]string{"vagent.toml:2:", "paths.run_dir: must not contain control characters"}},
		{"cache_dir", "[paths]\ncache_dir = \"/var/cache/../vagent\"\n",
			[]string{"vagent.toml:2:", "paths.cache_dir:"}},
		{"unit_dir", "[paths]\nunit_dir = \"etc/systemd/system\"\n",
			[]string{"vagent.toml:2:", "paths.unit_dir: must be an absolute path"}},
		{"agents_dir with ..", "[paths]\nagents_dir = \"../agents\"\n",
			[]string{"vagent.toml:2:", `paths.agents_dir: "../agents" has a ".." component: write an absolute path instead`}},
		{"venv of the vllm engine", "[engine]\nkind = \"vllm\"\nvenv = \"/opt/../venv\"\n",
			[]string{"vagent.toml:3:", "engine.venv:"}},
		{"sim binary", "[engine]\nsim_binary = \"/usr/bin/../bin/vllm-sim\"\n",
			[]string{"vagent.toml:2:", "engine.sim_binary:"}},
		{"sim ledger", "[gpu]\nsim_ledger = \"/run/vagent/./ledger.json\"\n",
			[]string{"vagent.toml:2:", "gpu.sim_ledger:"}},
		{"keys file", "[gateway]\nkeys_file = \"/etc/vagent/../keys.toml\"\n",
			[]string{"vagent.toml:2:", "gateway.keys_file:"}},
		{"control socket too long for sun_path", "[gateway]\ncontrol_socket = \"/run/" + strings.Repeat("s", 120) + "\"\n",
			[]string{"vagent.toml:2:", "gateway.control_socket: is 125 bytes; a unix socket's path may have at most 107"}},
		{"1 MiB user", "[units]\nuser = \"" + strings.Repeat("u", 1<<20) + "\"\n",
			[]string{"vagent.toml:2:", "units.user: a user name is at most 31 characters (systemd's limit), not 1048576"}},
		{"user with a dollar", "[units]\nuser = \"vagent$\"\n",
			[]string{"vagent.toml:2:", `units.user: "vagent$" is not a valid user name`}},
		{"uppercase group", "[units]\ngroup = \"Vagent\"\n",
			[]string{"vagent.toml:2:", `units.group: "Vagent" is not a valid group name`}},
		{"control group too long", "[gateway]\ncontrol_group = \"" + strings.Repeat("g", 32) + "\"\n",
			[]string{"vagent.toml:2:", "gateway.control_group: a group name is at most 31 characters"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.main, map[string]string{"po": goodAgent}))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want config.Errors, got %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestGoodPathsAndNamesLoad(t *testing.T) {
	c, err := Load(writeConfig(t, `[paths]
state_dir = "/srv/vagent state/100% $HOME \"q\" 'a' \\ #;"
agents_dir = "./agents"
[units]
user = "_vagent-svc"
group = "vagent"
[gateway]
control_socket = "/run/`+strings.Repeat("s", SocketPathMax-5)+`"
`, map[string]string{"po": goodAgent}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Paths.StateDir != `/srv/vagent state/100% $HOME "q" 'a' \ #;` {
		t.Errorf("state_dir %q", c.Paths.StateDir)
	}
}

// A relative model directory is the agent file's neighbour, wherever
// vagentctl runs from: the engine runs from "/", so the path is made
// absolute at load and everything after sees the same directory.
func TestRelativeModelIsResolvedAgainstTheAgentFile(t *testing.T) {
	path := writeConfig(t, "", map[string]string{
		"po": "model = \"./models/po\"\nserved_names = [\"po\"]\nport = 8002\n",
	})
	want := filepath.Join(filepath.Dir(path), "agents", "models", "po")
	if err := os.MkdirAll(want, 0o755); err != nil {
		t.Fatal(err)
	}
	// A directory of the same name relative to the working directory must
	// not be what is checked.
	t.Chdir(t.TempDir())
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Agent("po").Model; got != want {
		t.Errorf("model %q, want %q", got, want)
	}

	cwd := t.TempDir()
	if err := os.MkdirAll(filepath.Join(cwd, "models", "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(cwd)
	path = writeConfig(t, "", map[string]string{"dev": "model = \"./models/dev\"\nserved_names = [\"dev\"]\nport = 8001\n"})
	_, err = Load(path)
	if err == nil || !strings.Contains(err.Error(), `agents/dev.toml:1: agent "dev": model: "./models/dev" (`) ||
		!strings.Contains(err.Error(), "relative to the agent file) is a path but not an existing directory") {
		t.Errorf("a model found only relative to the working directory: %v", err)
	}

	path = writeConfig(t, "", map[string]string{"qa": "model = \"../models/qa\"\nserved_names = [\"qa\"]\nport = 8003\n"})
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), `model: "../models/qa" has a ".." component`) {
		t.Errorf("a model with ..: %v", err)
	}
}

// A chat template file is opened by vLLM from the engine's working
// directory, "/": a relative one is made absolute against its agent file
// like a model directory; an inline template or a built-in name is left
// alone.
func TestRelativeChatTemplateIsResolvedAgainstTheAgentFile(t *testing.T) {
	path := writeConfig(t, "", map[string]string{
		"po":  goodAgent + "chat_template = \"./templates/po.jinja\"\n",
		"dev": "model = \"Qwen/x\"\nport = 8001\nchat_template = \"{% for m in messages %}{{ m.content }}{% endfor %}\"\n",
		"qa":  "model = \"Qwen/y\"\nport = 8003\nchat_template = \"template_chatml.jinja\"\n",
	})
	want := filepath.Join(filepath.Dir(path), "agents", "templates", "po.jinja")
	if err := os.MkdirAll(filepath.Dir(want), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(want, []byte("{{ messages }}"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Agent("po").ChatTemplate; got != want {
		t.Errorf("chat_template %q, want %q", got, want)
	}
	if got := c.Agent("dev").ChatTemplate; !strings.HasPrefix(got, "{%") {
		t.Errorf("inline template changed to %q", got)
	}
	if got := c.Agent("qa").ChatTemplate; got != "template_chatml.jinja" {
		t.Errorf("built-in template name changed to %q", got)
	}

	path = writeConfig(t, "", map[string]string{"po": goodAgent + "chat_template = \"./missing.jinja\"\n"})
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), `agents/po.toml:3: agent "po": chat_template: "./missing.jinja" (`) ||
		!strings.Contains(err.Error(), "is a path but not an existing file") {
		t.Errorf("a missing template file: %v", err)
	}
}
