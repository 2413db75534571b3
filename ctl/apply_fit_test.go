package ctl

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// apply refuses an agent the plan says can never start, before anything is
// written; --force installs it with a warning.
func TestApplyRefusesAgentThatCanNeverStart(t *testing.T) {
	conf, dir := hostConfig(t, "configs/examples/24gb", func(m string) string {
		return strings.Replace(m, "sim_total_mib = 24564", "sim_total_mib = 16376", 1)
	})
	_, errOut, code := runIssueCmd(t, conf, "apply")
	if code != ExitFailure {
		t.Fatalf("apply: exit %d, want 1\n%s", code, errOut)
	}
	for _, want := range []string{"agent architect (" + filepath.Join(dir, "agents", "architect.toml") + ") can never start on its GPU as configured: does not fit: its weights alone",
		"apply --force"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "units")); !os.IsNotExist(err) {
		t.Errorf("units dir after a refused apply: %v", err)
	}
	// --force, checked short of the D-Bus connection that would follow.
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	var warn strings.Builder
	if err := checkNeverFits(context.Background(), cfg, map[int]uint64{0: 16376 << 20}, true, &warn); err != nil {
		t.Errorf("--force: %v", err)
	}
	if !strings.Contains(warn.String(), "warning: agent architect") {
		t.Errorf("--force: no warning:\n%s", warn.String())
	}
}
