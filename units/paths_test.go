package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// awkwardDirs are directories that are valid paths but need escaping in
// one directive or another.
var awkwardDirs = []string{
	`/srv/vagent state`,
	`/srv/100% "double" 'single'`,
	`/srv/back\slash $HOME ${X}`,
	`/srv/#not-a-comment ;x`,
	"/srv/ünïcödé",
	`/srv/glob*?[a]`,
}

func templateDirectives(t *testing.T, files Files) *unit {
	t.Helper()
	ds, err := parseUnit(string(files[TemplateName]))
	if err != nil {
		t.Fatalf("template does not parse: %v\n%s", err, files[TemplateName])
	}
	return &unit{directives: ds}
}

// ReadWritePaths= is split without C unescaping: each configured directory
// must read back exactly, by systemd's rules for that directive.
func TestReadWritePathsReadBack(t *testing.T) {
	for _, dir := range awkwardDirs {
		t.Run(dir, func(t *testing.T) {
			cfg := testConfig(testAgent("dev", 0.5))
			cfg.Paths.StateDir = dir
			cfg.Paths.CacheDir = dir + "/cache"
			files, err := Render(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			u := templateDirectives(t, files)
			rw := u.values("Service", "ReadWritePaths")
			if len(rw) != 1 {
				t.Fatalf("ReadWritePaths= %q", rw)
			}
			got, err := parsePathList(rw[0])
			if err != nil {
				t.Fatalf("ReadWritePaths=%s: %v", rw[0], err)
			}
			want := []string{"-" + dir, "-" + dir + "/cache", "-/var/lib/vagent/hf", "-/run/vagent"}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ReadWritePaths=%s reads back as\n %q, want\n %q", rw[0], got, want)
			}
			ef := u.values("Service", "EnvironmentFile")
			if len(ef) != 1 {
				t.Fatalf("EnvironmentFile= %q", ef)
			}
			key, err := unspecify(ef[0])
			if err == nil {
				key, err = unglob(key)
			}
			if err != nil || key != dir+"/engine-key.env" || systemdPathOK(key) != nil {
				t.Errorf("EnvironmentFile=%s reads back as %q (%v), want %q", ef[0], key, err, dir+"/engine-key.env")
			}
			if env := readDropIn(t, files, "dev").env; env["HOME"] != dir || env["XDG_CACHE_HOME"] != dir+"/cache" {
				t.Errorf("HOME=%q XDG_CACHE_HOME=%q", env["HOME"], env["XDG_CACHE_HOME"])
			}
		})
	}

	// What no escaping of this directive carries is refused, not mangled:
	// "\x09" here would read back as "x09".
	cfg := testConfig(testAgent("dev", 0.5))
	cfg.Paths.CacheDir = "/var/cache/va\tgent"
	if _, err := Render(cfg, nil); err == nil || !strings.Contains(err.Error(), "paths.cache_dir: must not contain control characters") {
		t.Errorf("a tab in a writable path: %v", err)
	}
}

// writeProbe writes a unit using path in the directives vagent renders
// paths into, exactly as Render escapes them.
func writeProbe(t *testing.T, dir, name, path string) {
	t.Helper()
	rw, err := pathWord("-", path)
	if err != nil {
		rw = `"-` + strings.ReplaceAll(strings.ReplaceAll(path, `\`, `\\`), `"`, `\"`) + `"`
	}
	unit := "[Service]\nExecStart=/bin/true\nEnvironmentFile=" + strings.ReplaceAll(path, "%", "%%") +
		"\nReadWritePaths=" + rw + "\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
}

// config.CheckPath refuses exactly what would make systemd drop
// EnvironmentFile= (and start the engine without its key) or a
// ReadWritePaths= entry, and accepts what systemd reads: checked against
// systemd-analyze verify.
func TestCheckPathAgreesWithSystemd(t *testing.T) {
	analyze := systemdAnalyze(t)
	long := "/" + strings.Repeat("p/", 2048) + "x" // 4098 bytes
	refused := map[string]string{
		"dotdot":   "/var/lib/vagent/../vagent/engine-key.env",
		"relative": "var/lib/vagent/engine-key.env",
		"toolong":  long,
		"longname": "/var/" + strings.Repeat("n", 256),
	}
	accepted := map[string]string{}
	for i, d := range awkwardDirs {
		accepted[string(rune('a'+i))] = d + "/engine-key.env"
	}
	accepted["max"] = "/" + strings.Repeat("m", 255) + long[:4095-257] + "q" // 4095 bytes

	dir := t.TempDir()
	warn := map[string]bool{}
	for name, p := range refused {
		if config.CheckPath(p) == nil {
			t.Errorf("CheckPath accepts %s %q", name, p)
		}
		writeProbe(t, dir, "refused-"+name+".service", p)
		warn["refused-"+name+".service"] = true
	}
	for name, p := range accepted {
		if err := config.CheckPath(p); err != nil {
			t.Errorf("CheckPath refuses %s %q: %v", name, p, err)
		}
		writeProbe(t, dir, "accepted-"+name+".service", p)
		warn["accepted-"+name+".service"] = false
	}
	for unit, want := range warn {
		cmd := exec.Command(analyze, "verify", "--man=no", filepath.Join(dir, unit))
		cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
		out, _ := cmd.CombinedOutput()
		// Lines 3 and 4: EnvironmentFile= and ReadWritePaths=.
		warned := strings.Contains(string(out), unit+":3: ") && strings.Contains(string(out), unit+":4: ")
		switch {
		case want && !warned:
			t.Errorf("%s: systemd does not drop both paths CheckPath refuses:\n%s", unit, out)
		case !want && strings.TrimSpace(string(out)) != "":
			t.Errorf("%s: systemd-analyze verify:\n%s", unit, out)
		default:
			t.Logf("%s: %s", unit, strings.TrimSpace(string(out)))
		}
	}
}
