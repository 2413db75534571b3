package units

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

// tomlString writes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// templateShape is every directive of the template, in order, with User=
// and Group= where set: no value may add, drop or hide one.
func templateShape(user, group bool) []string {
	shape := []string{"Unit.Description", "Unit.Documentation", "Unit.After", "Unit.StartLimitIntervalSec",
		"Unit.StartLimitBurst", "Service.Type"}
	if user {
		shape = append(shape, "Service.User")
	}
	if group {
		shape = append(shape, "Service.Group")
	}
	shape = append(shape, "Service.EnvironmentFile", "Service.Environment", "Service.Restart", "Service.RestartSec",
		"Service.TimeoutStartSec", "Service.TimeoutStopSec", "Service.KillMode", "Service.KillSignal",
		"Service.NoNewPrivileges", "Service.PrivateTmp", "Service.PrivateMounts", "Service.ProtectSystem",
		"Service.ProtectHome", "Service.ReadWritePaths", "Service.PrivateDevices", "Service.DevicePolicy",
		"Service.DeviceAllow", "Service.ProtectKernelTunables", "Service.ProtectKernelModules",
		"Service.ProtectKernelLogs", "Service.ProtectControlGroups", "Service.ProtectClock",
		"Service.ProtectHostname", "Service.ProtectProc", "Service.ProcSubset", "Service.RestrictNamespaces",
		"Service.RestrictRealtime", "Service.RestrictSUIDSGID", "Service.LockPersonality",
		"Service.MemoryDenyWriteExecute", "Service.RemoveIPC", "Service.CapabilityBoundingSet",
		"Service.RestrictAddressFamilies", "Service.SystemCallArchitectures", "Service.SystemCallFilter",
		"Service.SystemCallFilter", "Service.SystemCallErrorNumber", "Service.UMask", "Install.WantedBy")
	return shape
}

// FuzzLoadRender runs what `vagentctl apply` runs, config.Load and Render,
// on files holding arbitrary paths, names, a model, an extra argument and
// arbitrary TOML at the end of an agent file, and checks the invariant:
// Load and Render either refuse with located config.Errors, or every
// rendered unit reads back, with systemd's rules for each directive, as
// exactly the directives vagent writes, with exactly the configured paths,
// user, model and arguments, and every path one systemd uses rather than
// ignores.
func FuzzLoadRender(f *testing.F) {
	for _, s := range [][7]string{
		{"/var/lib/vagent", "/var/cache/vagent", "", "", "Qwen/Qwen2.5-7B-Instruct-AWQ", "8", ""},
		{"/srv/vagent state", "/srv/100% \"q\" 'a'", "vagent", "vagent", "./models/dev", "x", ""},
		{"/srv/back\\slash $HOME [x]*?", "/srv/#c ;x", "_svc", "", "org/m", "-1", "chat_template = \"{{ x }}\"\n"},
		{"/var/lib/../lib/vagent", "/var/cache//vagent", "Root", "a$", "../m", "-1e5", ""},
		{"/var/lib/vagent/", "var/cache", strings.Repeat("u", 40), "g", "/models/dev", "-inf", "[env]\nX = \"1\\nUser=root\"\n"},
		{"/srv/tab\there", "/srv/" + strings.Repeat("n", 256), "u", "g", ".", "--seed", "pinned = true\n"},
		{"/" + strings.Repeat("p/", 2000) + "p", "/c", "u", "g", "m", "-0.5", "served_names = [\"a\", \"-b\"]\n"},
		{"/s", "/c", "u", "g", "./models/dev", "ok", "extra_args = [\"--seed\"]\n"},
		{"/s", "/c", "u\x00", "g\n", "./models/dev\r", "a\nb", "= broken"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6])
	}
	f.Fuzz(func(t *testing.T, stateDir, cacheDir, user, group, model, extra, raw string) {
		for _, s := range []string{stateDir, cacheDir, user, group, model, extra} {
			if !utf8.ValidString(s) {
				return // a TOML file cannot hold it
			}
		}
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "agents", "models", "dev"), 0o755); err != nil {
			t.Fatal(err)
		}
		main := fmt.Sprintf("[paths]\nstate_dir = %s\ncache_dir = %s\n[units]\nuser = %s\ngroup = %s\n",
			tomlString(stateDir), tomlString(cacheDir), tomlString(user), tomlString(group))
		agent := fmt.Sprintf("model = %s\nport = 8001\nserved_names = [\"dev\"]\nextra_args = [\"--tokenizer\", %s]\n%s\n",
			tomlString(model), tomlString(extra), raw)
		path := filepath.Join(dir, "vagent.toml")
		agentFile := filepath.Join(dir, "agents", "dev.toml")
		if err := os.WriteFile(path, []byte(main), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(agentFile, []byte(agent), 0o644); err != nil {
			t.Fatal(err)
		}

		located := func(err error) {
			t.Helper()
			var es config.Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("refusal is %T, not config.Errors: %v", err, err)
			}
			for _, e := range es {
				if e.File != path && e.File != agentFile {
					t.Fatalf("error names no configuration file: %v", e)
				}
			}
		}
		cfg, err := config.Load(path)
		if err != nil {
			located(err)
			return
		}
		if cfg.Paths.StateDir != stateDir || cfg.Paths.CacheDir != cacheDir || cfg.Units.User != user || cfg.Units.Group != group {
			t.Fatalf("loaded %+v %+v from %q %q %q %q", cfg.Paths, cfg.Units, stateDir, cacheDir, user, group)
		}
		a := cfg.Agent("dev")
		files, err := Render(cfg, nil)
		if err != nil {
			located(err)
			if files != nil {
				t.Fatal("files returned with an error")
			}
			return
		}

		tpl := templateDirectives(t, files)
		var shape []string
		for _, d := range tpl.directives {
			shape = append(shape, d.section+"."+d.key)
		}
		if want := templateShape(user != "", group != ""); !reflect.DeepEqual(shape, want) {
			t.Fatalf("template directives\n got %q\nwant %q\n%s", shape, want, files[TemplateName])
		}
		if user != "" {
			if got, err := unspecify(tpl.values("Service", "User")[0]); err != nil || got != user {
				t.Fatalf("User= reads back as %q (%v), want %q", got, err, user)
			}
		}
		key, err := unspecify(tpl.values("Service", "EnvironmentFile")[0])
		if err == nil {
			key, err = unglob(key)
		}
		if err != nil || key != stateDir+"/engine-key.env" || systemdPathOK(key) != nil {
			t.Fatalf("EnvironmentFile= reads back as %q (%v): systemd would not load the key from %q", key, err, stateDir+"/engine-key.env")
		}
		rw, err := parsePathList(tpl.values("Service", "ReadWritePaths")[0])
		if err != nil {
			t.Fatalf("ReadWritePaths=: %v", err)
		}
		var want []string
		for _, d := range []string{stateDir, cacheDir, cfg.Paths.HFHome, cfg.Paths.RunDir, filepath.Dir(cfg.GPU.SimLedger)} {
			if !slices.Contains(want, "-"+d) {
				want = append(want, "-"+d)
			}
		}
		if !reflect.DeepEqual(rw, want) {
			t.Fatalf("ReadWritePaths= reads back as %q, want %q", rw, want)
		}

		u := readDropIn(t, files, "dev")
		for _, d := range u.directives {
			if k := d.section + "." + d.key; k != "Service.ExecStart" && k != "Service.Environment" {
				t.Fatalf("drop-in has %s=\n%s", k, files[DropInPath("dev")])
			}
		}
		if u.argv[0] != engineBinary(cfg) || u.argv[1] != "serve" || u.argv[2] != a.Model {
			t.Fatalf("command line %q, want %s serve %s ...", u.argv, engineBinary(cfg), a.Model)
		}
		if config.IsLocalModel(model) && a.Model != filepath.Join(dir, "agents", "models", "dev") {
			t.Fatalf("local model %q resolved to %q", model, a.Model)
		}
		if tail := u.argv[len(u.argv)-len(a.ExtraArgs):]; !reflect.DeepEqual(tail, a.ExtraArgs) {
			t.Fatalf("command line ends %q, want extra_args %q", tail, a.ExtraArgs)
		}
		if u.env["HOME"] != stateDir || u.env["XDG_CACHE_HOME"] != cacheDir {
			t.Fatalf("HOME=%q XDG_CACHE_HOME=%q", u.env["HOME"], u.env["XDG_CACHE_HOME"])
		}
	})
}

func engineBinary(c *config.Config) string {
	bin, _ := engine.VLLM{Sim: c.Engine.Kind == config.EngineSim}.Binary(c)
	return bin
}
