package ctl

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// treeState maps every path under root, except below skip, to its type,
// mode and content hash.
func treeState(t *testing.T, root, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		v := info.Mode().String()
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		out[strings.TrimPrefix(p, root)] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// vagentctl render writes the units into --out and nothing anywhere else:
// not the simulator's ledger, not the state or run directories, not HOME.
func TestRenderWritesOnlyUnderOut(t *testing.T) {
	root := t.TempDir()
	conf := filepath.Join(root, "etc", "vagent.toml")
	if err := os.MkdirAll(filepath.Join(root, "etc", "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"architect", "dev", "po"} {
		b, err := os.ReadFile("../configs/agents/" + a + ".toml")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc", "agents", a+".toml"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	main := fmt.Sprintf(`[engine]
sim_binary = %[1]q
[paths]
unit_dir = %[2]q
state_dir = %[3]q
run_dir = %[4]q
hf_home = %[5]q
cache_dir = %[6]q
[gpu]
backend = "sim"
sim_ledger = %[7]q
[gateway]
control_socket = %[8]q
`, root+"/bin/vllm-sim", root+"/units", root+"/state", root+"/run", root+"/state/hf", root+"/cache",
		root+"/run/sim-ledger.json", root+"/run/vagentd.sock")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"home", "run", "state"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("HOME", filepath.Join(root, "home"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(root, "home", ".cache"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(root, "run"))

	out := filepath.Join(root, "out")
	before := treeState(t, root, out)
	stdout, stderr, code := runCtl(t, conf, "render", "--out", out)
	if code != 0 {
		t.Fatalf("render: exit %d\n%s%s", code, stdout, stderr)
	}
	after := treeState(t, root, out)
	for p, v := range after {
		if before[p] != v {
			t.Errorf("render wrote %s outside --out (%s)", p, v)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("render removed %s outside --out", p)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "vagent@dev.service.d", "50-vagent.conf")); err != nil {
		t.Errorf("render did not write the units: %v\n%s", err, stdout)
	}
}
