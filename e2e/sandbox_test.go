package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// writeUnit puts a unit that prints line and then stays up into s.
func writeUnit(t *testing.T, s *sandbox.Sandbox, name, line string) {
	t.Helper()
	unit := fmt.Sprintf(`[Unit]
Description=vagent e2e smoke unit

[Service]
ExecStart=/bin/sh -c 'echo %s; exec sleep infinity'
`, line)
	if err := os.WriteFile(filepath.Join(s.UnitDir(), name), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startUnit reloads systemd and starts name over D-Bus, as vagent does.
func startUnit(ctx context.Context, t *testing.T, s *sandbox.Sandbox, name string) {
	t.Helper()
	conn, err := s.Systemd(ctx)
	if err != nil {
		t.Fatalf("connect to sandbox systemd: %v", err)
	}
	defer conn.Close()
	if err := conn.ReloadContext(ctx); err != nil {
		t.Fatalf("daemon-reload: %v", err)
	}
	done := make(chan string, 1)
	if _, err := conn.StartUnitContext(ctx, name, "replace", done); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			t.Fatalf("start %s: job %s\n%s", name, res, s.Journal(ctx, name))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("start %s: no job result after 30s", name)
	}
	p, err := conn.GetUnitPropertyContext(ctx, name, "ActiveState")
	if err != nil {
		t.Fatalf("ActiveState of %s: %v", name, err)
	}
	if got := p.Value.Value(); got != "active" {
		t.Fatalf("ActiveState of %s = %v, want active", name, got)
	}
}

// waitJournal waits until unit's journal holds line.
func waitJournal(ctx context.Context, t *testing.T, s *sandbox.Sandbox, unit, line string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		j := s.Journal(ctx, unit)
		if strings.Contains(j, line) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal of %s lacks %q; it holds:\n%s", unit, line, j)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestE2ESandboxSmoke(t *testing.T) {
	ctx := t.Context()
	s := sandbox.New(t, sandbox.Options{})
	ns, dir := s.PIDNamespace(), s.Dir()
	if ns == "" {
		t.Fatal("sandbox has no PID namespace")
	}

	const unit = "vagent-e2e-smoke.service"
	line := "vagent-e2e-smoke-" + filepath.Base(dir)
	writeUnit(t, s, unit, line)
	startUnit(ctx, t, s, unit)

	if out, err := s.Systemctl(ctx, "is-active", unit); err != nil || strings.TrimSpace(out) != "active" {
		t.Fatalf("systemctl is-active %s = %q, %v", unit, out, err)
	}
	waitJournal(ctx, t, s, unit, line)

	// Commands run inside see the sandbox: its systemd is PID 1 there, and
	// the host's /etc cannot be written.
	out, _, code, err := s.Exec(ctx, "cat", "/proc/1/comm")
	if err != nil || code != 0 || strings.TrimSpace(out) != "systemd" {
		t.Fatalf("inside, PID 1 is %q (exit %d, %v), want systemd", out, code, err)
	}
	if _, _, code, err := s.Exec(ctx, "touch", "/etc/vagent-e2e-probe"); err != nil || code == 0 {
		os.Remove("/etc/vagent-e2e-probe")
		t.Fatalf("inside, writing /etc succeeded (exit %d, %v); it must be read-only", code, err)
	}
	if _, err := s.Systemctl(ctx, "is-active", "no-such-unit.service"); err == nil {
		t.Fatal("systemctl is-active of a missing unit succeeded")
	}

	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if left := sandbox.ProcessesIn(ns); len(left) > 0 {
		t.Fatalf("processes left in the sandbox's namespace %s after Close: %v", ns, left)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("sandbox dir %s still there after Close (%v)", dir, err)
	}
}

// TestE2ESandboxIsolation boots two sandboxes at once and runs a unit of the
// same name in each: stopping it in one must leave the other's running, as
// each sandbox's systemd owns its own cgroups and bus.
func TestE2ESandboxIsolation(t *testing.T) {
	ctx := t.Context()
	boxes := []*sandbox.Sandbox{sandbox.New(t, sandbox.Options{}), sandbox.New(t, sandbox.Options{})}
	if boxes[0].BusAddress() == boxes[1].BusAddress() || boxes[0].PIDNamespace() == boxes[1].PIDNamespace() {
		t.Fatal("two sandboxes share a bus or a PID namespace")
	}

	const unit = "vagent-e2e-twin.service"
	for i, b := range boxes {
		writeUnit(t, b, unit, fmt.Sprintf("twin-%d", i))
		startUnit(ctx, t, b, unit)
	}
	if _, err := boxes[0].Systemctl(ctx, "stop", unit); err != nil {
		t.Fatalf("stop in sandbox 0: %v", err)
	}
	if out, _ := boxes[0].Systemctl(ctx, "is-active", unit); strings.TrimSpace(out) == "active" {
		t.Fatal("unit still active in sandbox 0 after stop")
	}
	time.Sleep(200 * time.Millisecond)
	if out, err := boxes[1].Systemctl(ctx, "is-active", unit); err != nil || strings.TrimSpace(out) != "active" {
		t.Fatalf("stopping the unit in sandbox 0 touched sandbox 1: is-active = %q, %v", out, err)
	}
	waitJournal(ctx, t, boxes[1], unit, "twin-1")
	if j := boxes[1].Journal(ctx, unit); strings.Contains(j, "twin-0") {
		t.Fatalf("sandbox 1's journal holds sandbox 0's line:\n%s", j)
	}
}

// TestE2ESandboxBootFailure boots a sandbox that cannot come up (no bus) and
// checks that Boot says why and leaves nothing behind.
func TestE2ESandboxBootFailure(t *testing.T) {
	if !sandbox.Required() {
		t.Skip("e2e sandbox needs root")
	}
	before := processCount()
	s, err := sandbox.Boot(t.Context(), sandbox.Options{
		BootTimeout: 3 * time.Second,
		Mask:        []string{"dbus.socket", "dbus.service"},
	})
	if err == nil {
		s.Close()
		t.Fatal("Boot succeeded without a bus")
	}
	msg := err.Error()
	t.Logf("Boot failed as it should:\n%s", msg)
	if !strings.Contains(msg, "not running after") || !strings.Contains(msg, "--- console") || !strings.Contains(msg, "systemd") {
		t.Errorf("Boot error does not say what happened:\n%s", msg)
	}
	if n := processCount(); n > before {
		t.Errorf("%d processes in other PID namespaces before a failed Boot, %d after", before, n)
	}
}

// processCount counts the processes in PID namespaces other than this
// test's: what a sandbox leaves behind lives there, while the host's own
// processes (builds, other programs) come and go and say nothing of it.
func processCount() int {
	self, _ := os.Readlink("/proc/self/ns/pid")
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := fmt.Sscan(e.Name(), new(int)); err != nil {
			continue
		}
		if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && ns != self {
			n++
		}
	}
	return n
}

// TestE2ESandboxBuildAndConfig builds a main package into the sandbox, runs
// it inside by name, and installs the shipped configuration pointed at the
// sandbox.
func TestE2ESandboxBuildAndConfig(t *testing.T) {
	ctx := t.Context()
	s := sandbox.New(t, sandbox.Options{})
	for range 2 { // the second build comes from the cache
		if err := s.Build(ctx, "./e2e/cmd/demo"); err != nil {
			t.Fatal(err)
		}
	}
	_, stderr, code, err := s.Exec(ctx, "demo", "-h")
	if err != nil || code != 0 || !strings.Contains(stderr, "-configs") {
		t.Fatalf("demo -h inside: exit %d, %v, stderr:\n%s", code, err, stderr)
	}

	cfg, err := s.InstallConfig("../configs", map[string]any{"gpu.sim_load_seconds": 0.5})
	if err != nil {
		t.Fatal(err)
	}
	out, _, code, err := s.Exec(ctx, "sh", "-c", `cat "$VAGENT_CONFIG"; ls "$(dirname "$VAGENT_CONFIG")/agents"`)
	if err != nil || code != 0 {
		t.Fatalf("read config inside: exit %d, %v", code, err)
	}
	for _, want := range []string{
		`sim_binary = "` + s.Path("bin", "vllm-sim") + `"`,
		`unit_dir = "` + s.UnitDir() + `"`,
		`sim_ledger = "` + s.Path("run/vagent/sim-ledger.json") + `"`,
		"sim_load_seconds = 0.5",
		"dev.toml",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("installed config %s lacks %q:\n%s", cfg, want, out)
		}
	}

	port, err := sandbox.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EditConfig("agents/dev.toml", map[string]any{"port": port}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.Path("etc/vagent/agents/dev.toml"))
	if err != nil || !strings.Contains(string(b), fmt.Sprintf("\nport = %d\n", port)) {
		t.Fatalf("agents/dev.toml after EditConfig (%v):\n%s", err, b)
	}
}
