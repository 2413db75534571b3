// Package wheeltest builds tiny Python wheels named vllm for tests of the
// managed venv: pip installs them offline (--no-index --find-links DIR)
// like the real thing, in a second, without a GPU or a network.
package wheeltest

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Wheel describes a wheel of the package "vllm".
type Wheel struct {
	// Version is the distribution's version and vllm.__version__.
	Version string
	// Init replaces vllm/__init__.py (default: __version__ = "VERSION").
	// Make it raise to get a wheel whose import fails.
	Init string
	// CLI, when set, is vllm/cli.py, and the wheel declares the console
	// script vllm = vllm.cli:main, as vLLM does.
	CLI string
}

// SimCLI is a vllm/cli.py whose main execs the simulator at sim, with the
// environment entries in env (KEY=value) added, so that `vllm serve ...`
// from the venv runs vllm-sim with the same arguments.
func SimCLI(sim string, env ...string) string {
	var b strings.Builder
	b.WriteString("import os\nimport sys\n\n")
	fmt.Fprintf(&b, "SIM = %s\n", pyString(sim))
	b.WriteString("ENV = {\n")
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "    %s: %s,\n", pyString(k), pyString(v))
	}
	b.WriteString("}\n\n\ndef main():\n")
	b.WriteString("    env = dict(os.environ)\n    env.update(ENV)\n")
	b.WriteString("    os.execve(SIM, [\"vllm-sim\"] + sys.argv[1:], env)\n")
	return b.String()
}

// pyString quotes s as a Python string literal.
func pyString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// Build writes w into dir as vllm-VERSION-py3-none-any.whl and returns its
// path. The wheel is complete (METADATA, WHEEL, RECORD with hashes,
// entry_points.txt), so pip installs it without complaint.
func Build(dir string, w Wheel) (string, error) {
	if w.Version == "" {
		return "", fmt.Errorf("wheel: no version")
	}
	info := "vllm-" + w.Version + ".dist-info"
	files := map[string]string{
		"vllm/__init__.py": fmt.Sprintf("__version__ = %s\n", pyString(w.Version)),
		info + "/METADATA": fmt.Sprintf("Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: a stand-in for vLLM built by vagent's tests\n", w.Version),
		info + "/WHEEL":    "Wheel-Version: 1.0\nGenerator: vagent-wheeltest\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
	}
	if w.Init != "" {
		files["vllm/__init__.py"] = w.Init
	}
	if w.CLI != "" {
		files["vllm/cli.py"] = w.CLI
		files[info+"/entry_points.txt"] = "[console_scripts]\nvllm = vllm.cli:main\n"
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("vllm-%s-py3-none-any.whl", w.Version))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	zw := zip.NewWriter(f)
	var record strings.Builder
	for _, n := range names {
		body := []byte(files[n])
		fw, err := zw.Create(n)
		if err != nil {
			f.Close()
			return "", err
		}
		if _, err := fw.Write(body); err != nil {
			f.Close()
			return "", err
		}
		sum := sha256.Sum256(body)
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", n, base64.RawURLEncoding.EncodeToString(sum[:]), len(body))
	}
	rec := info + "/RECORD"
	record.WriteString(rec + ",,\n")
	fw, err := zw.Create(rec)
	if err == nil {
		_, err = fw.Write([]byte(record.String()))
	}
	if err == nil {
		err = zw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("wheel %s: %w", path, err)
	}
	return path, nil
}
