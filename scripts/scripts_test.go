package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSystem puts stand-ins for dpkg-query, apt-get, id and
// systemd-machine-id-setup first in PATH: dpkg-query reports the packages in
// installed as installed, apt-get notes each call in the returned log, id -u
// prints uid.
func fakeSystem(t *testing.T, uid string, installed ...string) (env []string, aptLog string) {
	t.Helper()
	dir := t.TempDir()
	aptLog = filepath.Join(dir, "apt.log")
	scripts := map[string]string{
		"dpkg-query": `pkg=${!#}
case " $FAKE_INSTALLED " in *" $pkg "*) printf 'ii ' ;; *) exit 1 ;; esac`,
		"apt-get": `echo "$*" >>"$FAKE_APT_LOG"`,
		"id":      `[ "$1" = -u ] && echo "$FAKE_UID"`,
		// Where /etc/machine-id is empty, the script would make one.
		"systemd-machine-id-setup": `true`,
	}
	for name, body := range scripts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/bash\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return append(os.Environ(),
		"PATH="+dir+":"+os.Getenv("PATH"),
		"FAKE_INSTALLED="+strings.Join(installed, " "),
		"FAKE_APT_LOG="+aptLog,
		"FAKE_UID="+uid,
		"VAGENT_TEST_DEPS_LOG="+filepath.Join(dir, "deps.log"),
	), aptLog
}

func runDeps(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"test-deps.sh"}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// all is every package test-deps.sh knows; the test names them to see that
// what is installed is left alone and each missing one is installed.
var all = []string{"systemd", "dbus", "util-linux", "mount", "python3", "python3-venv", "curl", "ca-certificates",
	"mmdebstrap", "debian-archive-keyring", "systemd-container", "lintian"}

func TestTestDepsInstallsOnlyWhatIsMissing(t *testing.T) {
	var have []string
	for _, p := range all {
		if p != "mmdebstrap" && p != "systemd-container" && p != "lintian" {
			have = append(have, p)
		}
	}
	env, aptLog := fakeSystem(t, "0", have...)
	out, err := runDeps(t, env)
	if err != nil {
		t.Fatalf("test-deps.sh: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(aptLog)
	want := "update -qq\ninstall -y -qq --no-install-recommends mmdebstrap systemd-container lintian\n"
	if string(got) != want {
		t.Errorf("apt-get calls:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(out, "installing mmdebstrap systemd-container lintian") {
		t.Errorf("test-deps.sh does not say what it installs:\n%s", out)
	}
}

func TestTestDepsNothingMissing(t *testing.T) {
	env, aptLog := fakeSystem(t, "1000", all...)
	out, err := runDeps(t, env)
	if err != nil || out != "" {
		t.Fatalf("with everything installed, as a user: %v %q", err, out)
	}
	if _, err := os.Stat(aptLog); !os.IsNotExist(err) {
		t.Error("apt-get ran with nothing missing")
	}
}

func TestTestDepsNotRoot(t *testing.T) {
	env, aptLog := fakeSystem(t, "1000", "systemd", "dbus")
	out, err := runDeps(t, env)
	if err == nil {
		t.Fatalf("missing packages without root: no error\n%s", out)
	}
	if !strings.Contains(out, "missing packages: util-linux mount") || !strings.Contains(out, "hint: run it as root") {
		t.Errorf("without root: %s", out)
	}
	if _, err := os.Stat(aptLog); !os.IsNotExist(err) {
		t.Error("apt-get ran without root")
	}
}

// makeN prints what make would run for args in the repository, without the
// flags of a make this test runs under (make unit).
func makeN(args ...string) ([]byte, error) {
	cmd := exec.Command("make", append([]string{"-C", "..", "-n", "--no-print-directory"}, args...)...)
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, e)
		}
	}
	return cmd.CombinedOutput()
}

// TestTestDepsDemo: make demo installs only what the demo needs.
func TestTestDepsDemo(t *testing.T) {
	env, aptLog := fakeSystem(t, "0", "systemd", "mount")
	if out, err := runDeps(t, env, "demo"); err != nil {
		t.Fatalf("test-deps.sh demo: %v\n%s", err, out)
	}
	got, _ := os.ReadFile(aptLog)
	if want := "update -qq\ninstall -y -qq --no-install-recommends dbus util-linux\n"; string(got) != want {
		t.Errorf("apt-get calls:\n%s\nwant:\n%s", got, want)
	}
	if out, err := runDeps(t, env, "bogus"); err == nil || !strings.Contains(out, "unknown argument bogus") {
		t.Errorf("test-deps.sh bogus: %v %s", err, out)
	}
	out, err := makeN("demo", "DEMO_ARGS=-keep")
	if err != nil || !strings.HasPrefix(string(out), "scripts/test-deps.sh demo\n") || !strings.Contains(string(out), "scripts/demo.sh -keep\n") {
		t.Errorf("make -n demo DEMO_ARGS=-keep: %v\n%s", err, out)
	}
}

// TestMakeTestInstallsFirst: make test runs test-deps.sh before the rest,
// and CI runs make test rather than installing packages itself.
func TestMakeTestInstallsFirst(t *testing.T) {
	// MAKE=true: make -n still runs the recursive make line, as "true".
	out, err := makeN("test", "MAKE=true")
	if err != nil {
		t.Fatalf("make -n test: %v\n%s", err, out)
	}
	want := "scripts/test-deps.sh\ntrue --no-print-directory lint vulncheck unit e2e install-test lintian\n"
	if string(out) != want {
		t.Errorf("make test runs:\n%s\nwant:\n%s", out, want)
	}
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "\nif ! make test ") || strings.Contains(string(ci), "apt-get") {
		t.Errorf(".ci/run must run make test and leave installing to it")
	}
}
