package venv

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/venv/wheeltest"
)

// python3 finds a python3 that can make venvs. Under CI or as root its
// absence fails the test: these tests are what proves the installer really
// works, and CI installs python3 and python3-venv for them.
func python3(t *testing.T) string {
	t.Helper()
	required := os.Getenv("CI") != "" || os.Geteuid() == 0
	p, err := exec.LookPath("python3")
	if err == nil {
		var out []byte
		out, err = exec.Command(p, "-c", "import venv, ensurepip").CombinedOutput()
		if err != nil {
			err = errors.New(strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		if required {
			t.Fatalf("python3 with the venv module is needed (apt-get install python3 python3-venv): %v", err)
		}
		t.Skipf("python3 with the venv module not available: %v", err)
	}
	return p
}

// hermeticPip keeps the host's pip settings (PIP_FIND_LINKS, a mirror in
// PIP_INDEX_URL, a pip.conf) out of the test, which installs from its own
// wheels only.
func hermeticPip(t *testing.T) {
	t.Helper()
	for _, k := range []string{"PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_REQUIRE_VIRTUALENV", "PIP_USER", "PIP_TARGET", "PIP_PREFIX"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("PIP_CONFIG_FILE", os.DevNull)
}

// cliPrints is a vllm/cli.py whose console script prints its version and
// arguments, so the test can tell which engine `current/bin/vllm` runs.
const cliPrints = `import sys
import vllm


def main():
    print("vllm", vllm.__version__, " ".join(sys.argv[1:]))
`

// TestRealPip installs tiny local wheels with python3 -m venv and pip,
// offline: install, upgrade, rollback, a wheel that fails to import, a wheel
// that imports the wrong version, reuse and pruning.
func TestRealPip(t *testing.T) {
	py := python3(t)
	hermeticPip(t)
	tmp := t.TempDir()
	wheels := filepath.Join(tmp, "wheels")
	for _, w := range []wheeltest.Wheel{
		{Version: "0.18.0", CLI: cliPrints},
		{Version: "0.18.1", CLI: cliPrints},
		{Version: "0.18.2", CLI: cliPrints, Init: "raise RuntimeError('this vllm is broken on purpose')\n"},
		{Version: "0.18.3", CLI: cliPrints},
		{Version: "0.18.4", Init: "__version__ = '9.9.9'\n"},
	} {
		if _, err := wheeltest.Build(wheels, w); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	m := &Manager{Dir: filepath.Join(tmp, "engines"), OS: Host(), Out: &out}
	install := func(v string) (*Result, error) {
		out.Reset()
		return m.Install(t.Context(), Options{
			Version: v, Installer: InstallerPip, Python: py,
			FindLinks: []string{wheels}, CacheDir: filepath.Join(tmp, "cache"), Keep: DefaultKeep,
		})
	}
	must := func(v string) *Result {
		t.Helper()
		res, err := install(v)
		if err != nil {
			t.Fatalf("install %s: %v\nprogress:\n%s", v, err, out.String())
		}
		return res
	}
	// runs runs the engine the way a unit does: through the current link.
	runs := func() string {
		t.Helper()
		b, err := exec.Command(filepath.Join(m.Dir, CurrentLink, "bin", "vllm"), "serve", "m").CombinedOutput()
		if err != nil {
			t.Fatalf("current/bin/vllm: %v: %s", err, b)
		}
		return strings.TrimSpace(string(b))
	}
	links := func() string { return link(t, m, CurrentLink) + " " + link(t, m, PreviousLink) }

	res := must("0.18.0")
	if got := runs(); got != "vllm 0.18.0 serve m" {
		t.Errorf("current runs %q", got)
	}
	for _, want := range []string{"create: " + py + " -m venv", "--no-index --find-links " + wheels, "Successfully installed vllm-0.18.0", "imports vllm 0.18.0", "switch: current -> vllm-0.18.0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, out.String())
		}
	}
	if !res.Offline || res.Installer != "pip" || !strings.Contains(readFile(t, res.Log), "Successfully installed vllm-0.18.0") {
		t.Errorf("result %+v, log:\n%s", res, readFile(t, res.Log))
	}

	must("0.18.1")
	if got := runs(); got != "vllm 0.18.1 serve m" || links() != "vllm-0.18.1 vllm-0.18.0" {
		t.Errorf("after the upgrade: runs %q, links %q", got, links())
	}

	out.Reset()
	if _, err := m.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := runs(); got != "vllm 0.18.0 serve m" || links() != "vllm-0.18.0 vllm-0.18.1" {
		t.Errorf("after the rollback: runs %q, links %q", got, links())
	}

	// A wheel whose import fails.
	res, err := install("0.18.2")
	var ie *InstallError
	if !errors.As(err, &ie) || ie.Phase != "verify" || !strings.Contains(err.Error(), "RuntimeError: this vllm is broken on purpose") {
		t.Fatalf("broken wheel: %v", err)
	}
	if !strings.Contains(err.Error(), "full log: "+res.Log) || !strings.Contains(readFile(t, res.Log), "Traceback") {
		t.Errorf("the error or log lacks the traceback: %v", err)
	}
	if got := runs(); got != "vllm 0.18.0 serve m" || links() != "vllm-0.18.0 vllm-0.18.1" {
		t.Errorf("after a failed install: runs %q, links %q", got, links())
	}
	if _, err := os.Stat(filepath.Join(m.Dir, "vllm-0.18.2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the broken engine was left: %v", err)
	}

	// A wheel that imports but reports another version.
	if _, err := install("0.18.4"); err == nil || !strings.Contains(err.Error(), `imports vllm "9.9.9", not 0.18.4`) {
		t.Errorf("wrong version: %v", err)
	}

	// A version the wheelhouse lacks: pip's own words.
	if _, err := install("0.17.0"); err == nil || !strings.Contains(err.Error(), "No matching distribution found for vllm==0.17.0") {
		t.Errorf("missing version: %v", err)
	}

	// Reinstalling 0.18.1 reuses its engine; then 0.18.3 prunes 0.18.0.
	if res := must("0.18.1"); !res.Reused {
		t.Errorf("0.18.1 was rebuilt")
	}
	res = must("0.18.3")
	if got := runs(); got != "vllm 0.18.3 serve m" || links() != "vllm-0.18.3 vllm-0.18.1" {
		t.Errorf("after 0.18.3: runs %q, links %q", got, links())
	}
	if len(res.Pruned) != 1 || filepath.Base(res.Pruned[0]) != "vllm-0.18.0" {
		t.Errorf("pruned %q", res.Pruned)
	}
	if got := names(t, m); got != "vllm-0.18.1 vllm-0.18.3" {
		t.Errorf("engines left: %q", got)
	}
}
