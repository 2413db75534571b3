package doctor

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// TestDoctorOnThisHost runs every check against this machine with the
// simulator: a real vllm-sim, real ports, real disk space, the real system
// bus (reachable or not). What depends on the machine (systemd, ports taken
// by others) is asserted only to be reported; what vagent controls is
// asserted exactly.
func TestDoctorOnThisHost(t *testing.T) {
	if testing.Short() {
		t.Skip("builds vllm-sim")
	}
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	os.Remove(h.cfg.Engine.SimBinary) // newHost's stand-in script
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(goBin, "build", "-o", h.cfg.Engine.SimBinary, "github.com/vagent-dev/vagent/cmd/vllm-sim").CombinedOutput(); err != nil {
		t.Fatalf("build vllm-sim: %v\n%s", err, out)
	}
	// No network in tests: the plan comes from the cache and the table.
	t.Setenv("HF_HUB_OFFLINE", "1")
	os.RemoveAll(h.cfg.Paths.UnitDir) // never applied on this host

	r := New(h.cfg, HostEnv(h.cfg)).Run(context.Background())
	var b bytes.Buffer
	r.Write(&b)
	t.Logf("doctor on this host:\n%s", b.String())

	expect(t, r,
		check{"driver", Pass, "simulator backend", ""},
		check{"compute capability", Pass, "GPU 0 8.9", ""},
		check{"nvidia_uvm", Skip, "", ""},
		check{"engine", Pass, "simulator " + h.cfg.Engine.SimBinary + ", vLLM 0.18.0 flags", ""},
		check{"model architect", Pass, "snapshot", ""},
		check{"units", Warn, "missing vagent@.service", "vagentctl apply"},
		check{"plan", Pass, "every agent fits its GPU alone", ""},
	)
	for _, name := range []string{"systemd", "socket architect", "socket dev", "socket po", "port gateway", "disk state_dir", "disk hf_home"} {
		res := find(r, name)
		if res == nil {
			t.Errorf("no %s check", name)
			continue
		}
		if res.Status != Pass && res.Fix == "" {
			t.Errorf("%s: %s without a fix: %s", name, res.Status, res.Finding)
		}
	}
	for _, name := range []string{"disk state_dir", "disk hf_home"} {
		if res := find(r, name); res != nil && !strings.Contains(res.Finding, "free for") {
			t.Errorf("%s: %s", name, res.Finding)
		}
	}
	if lines := strings.Count(b.String(), "\n"); lines != len(r.Results)+2 {
		t.Errorf("%d lines for %d checks", lines, len(r.Results))
	}
}
