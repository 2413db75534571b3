package e2e

import (
	"context"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
	"github.com/vagent-dev/vagent/internal/enginekey"
)

// TestE2EAwkwardPaths runs an agent whose state, cache, weights and run
// directories hold every character that needs escaping in one directive or
// another, and reads back from the real systemd what it made of the units:
// the writable paths and the key file are exactly the configured ones, the
// engine could write its ledger under ProtectSystem=strict, and it runs
// with the key from the file. A state_dir systemd would ignore (with "..")
// is refused by apply, which then changes nothing.
func TestE2EAwkwardPaths(t *testing.T) {
	s := sandbox.New(t, sandbox.Options{})
	ctx := t.Context()
	if err := s.Build(ctx, "./cmd/vagentctl", "./cmd/vllm-sim"); err != nil {
		t.Fatal(err)
	}
	base := s.Path("srv", `va gent "q" 'a' 100% $HOME \b #;x ü [g]*?`)
	dirs := map[string]string{
		"paths.state_dir": base + "/state",
		"paths.hf_home":   base + "/hf",
		"paths.cache_dir": base + "/cache",
		"paths.run_dir":   base + "/run",
	}
	set := map[string]any{"gpu.sim_ledger": base + "/run/sim-ledger.json", "gpu.sim_load_seconds": 0.2}
	for k, v := range dirs {
		set[k] = v
	}
	if _, err := s.InstallConfig("../configs", set); err != nil {
		t.Fatal(err)
	}
	port, err := sandbox.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EditConfig("agents/dev.toml", map[string]any{"port": port}); err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, s: s, ports: map[string]int{"dev": port}}
	h.mustCtl("apply")
	h.mustCtl("start", "dev")

	conn, err := s.Systemd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	prop := func(name string) any {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		p, err := conn.GetUnitTypePropertyContext(c, "vagent@dev.service", "Service", name)
		if err != nil {
			t.Fatalf("%s of vagent@dev: %v", name, err)
		}
		return p.Value.Value()
	}

	rw, _ := prop("ReadWritePaths").([]string)
	for _, d := range []string{dirs["paths.state_dir"], dirs["paths.cache_dir"], dirs["paths.hf_home"], dirs["paths.run_dir"]} {
		if !slices.Contains(rw, "-"+d) {
			t.Errorf("systemd's ReadWritePaths %q lacks %q", rw, "-"+d)
		}
	}
	keyFile := dirs["paths.state_dir"] + "/engine-key.env"
	// EnvironmentFile= is a glob(3) pattern: its metacharacters escaped.
	pattern := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(keyFile)
	files, _ := prop("EnvironmentFiles").([][]any)
	if want := [][]any{{pattern, false}}; !reflect.DeepEqual(files, want) {
		t.Errorf("systemd's EnvironmentFiles %q, want %q", files, want)
	}

	// The engine runs with the key of the file, and wrote its ledger (its
	// GPU memory) into the run directory ProtectSystem=strict left it.
	key, err := enginekey.Read(keyFile)
	if err != nil || key == "" {
		t.Fatalf("engine key: %q %v", key, err)
	}
	pid, _ := prop("MainPID").(uint32)
	environ, errOut, code, err := s.Exec(ctx, "cat", "/proc/"+strconv.FormatUint(uint64(pid), 10)+"/environ")
	if err != nil || code != 0 {
		t.Fatalf("environ of %d: %v %d %s", pid, err, code, errOut)
	}
	if !slices.Contains(strings.Split(environ, "\x00"), "VLLM_API_KEY="+key) {
		t.Errorf("the engine runs without the key of %s", keyFile)
	}
	ledger, err := os.ReadFile(set["gpu.sim_ledger"].(string))
	if err != nil || !strings.Contains(string(ledger), "vagent@dev.service") {
		t.Errorf("the engine did not record its memory in %s: %v\n%s", set["gpu.sim_ledger"], err, ledger)
	}

	// A state_dir that systemd would ignore in EnvironmentFile= is refused
	// at load, before anything is written.
	h.mustCtl("stop", "dev")
	units := dirDigest(t, s.UnitDir())
	if err := s.EditConfig("vagent.toml", map[string]any{"paths.state_dir": base + "/state/../state"}); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := h.ctl("apply")
	if code == 0 || !strings.Contains(stderr, "paths.state_dir: ") || !strings.Contains(stderr, `".." component`) {
		t.Errorf("apply with a state_dir holding ..: exit %d\n%s", code, stderr)
	}
	if dirDigest(t, s.UnitDir()) != units {
		t.Error("a refused apply changed the unit directory")
	}
}
