package ctl

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
)

// fakeMeminfo makes plan read a host with availGiB of totalGiB available.
func fakeMeminfo(t *testing.T, totalGiB, availGiB uint64) {
	t.Helper()
	saved := planMeminfo
	t.Cleanup(func() { planMeminfo = saved })
	planMeminfo = func() (plan.Meminfo, error) {
		return plan.Meminfo{TotalBytes: totalGiB << 30, AvailableBytes: availGiB << 30, Source: "/proc/meminfo"}, nil
	}
}

func sleepMode(main string) string {
	return strings.Replace(main, `switch_mode = "restart"`, `switch_mode = "sleep"`, 1)
}

func TestPlanPrintsSwitchCostsAndAdvice(t *testing.T) {
	fakeMeminfo(t, 64, 48)
	conf, _ := hostConfig(t, "configs", nil)
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"switch costs, estimated from the checkpoint read at 2 GB/s, the weights copied over PCIe at 12 GB/s, an engine start of 15.0 s and torch.compile 10.0 s",
		"AGENT      SWITCH   COLD START  WAKE L1  WAKE L2  HOST RAM ASLEEP L1  L2",
		"architect  restart  31.9 s      0.9 s    5.9 s    12.29 GiB           3.00 GiB",
		"po         restart  29.5 s      0.6 s    3.3 s    8.19 GiB            3.00 GiB",
		"host RAM: 64.00 GiB, 48.00 GiB available (/proc/meminfo); sleepers may hold 22.50 GiB",
		`advice: switch_mode = "sleep" for architect, dev, po: a switch back is a level-1 wake of about 0.6-0.9 s instead of a cold start of about 29.5-31.9 s`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	// No sleep agent configured: no verdict on them.
	if strings.Contains(out, "sleep agents ") {
		t.Errorf("a verdict on sleep agents none of which is configured:\n%s", out)
	}
	// The verdict stays the last line.
	if !strings.HasSuffix(out, "\n\n3 of 3 agents fit their GPU alone\n") {
		t.Errorf("plan does not end with its verdict:\n%s", out)
	}

	// Sleep agents on a host whose RAM holds their engines, not their
	// weights: plan says they do not fit and advises level 2.
	fakeMeminfo(t, 16, 12)
	conf, _ = hostConfig(t, "configs", sleepMode)
	out, _, code = runIssueCmd(t, conf, "plan")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{
		"architect  sleep L1  31.9 s",
		"sleep agents DO NOT FIT (the supervisor sleeps at level 2 what the budget cannot hold, and stops the least recently used sleeper): at most 1 asleep at once (architect) would hold 12.29 GiB at level 1 (weights and engines), more than the 4.50 GiB sleepers may hold",
		`advice: switch_mode = "sleep" with sleep_level = 2 for architect, dev, po: a wake reloads the weights in about 3.3-5.9 s instead of a cold start of about 29.5-31.9 s; not level 1: `,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
}

func TestPlanJSONCarriesSwitching(t *testing.T) {
	conf, _ := hostConfig(t, "configs", sleepMode)
	out, errOut, code := runIssueCmd(t, conf, "plan", "--json", "--host-ram-mib", "65536", "--disk-gbps", "0.5", "--pcie-gbps", "24")
	if code != ExitOK {
		t.Fatalf("exit %d %s\n%s", code, errOut, out)
	}
	var p plan.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	s := p.Switching
	if s == nil || s.Host.Source != "--host-ram-mib" || s.Host.AvailableBytes != 64<<30 || s.Rates.DiskBytesPerSec != 0.5e9 || s.Rates.PCIeBytesPerSec != 24e9 {
		t.Fatalf("switching: %+v", s)
	}
	if len(s.Agents) != 3 || s.Agents[1].Agent != "dev" || s.Agents[1].Mode != "sleep" || s.Agents[1].Level != 1 {
		t.Fatalf("agents: %+v", s.Agents)
	}
	dev := s.Agents[1]
	// 9.98 GB read at 0.5 GB/s: 20 s of the cold start and of the level-2 wake.
	var read float64
	for _, part := range dev.ColdStart.Parts {
		if part.What == "read the checkpoint from disk" {
			read = part.Seconds
		}
	}
	if read < 19.9 || read > 20.0 || dev.WakeLevel2.Seconds < 20 || dev.WakeLevel1.Seconds > 1 {
		t.Errorf("dev at 0.5 GB/s disk, 24 GB/s PCIe: read %.2f s, %+v", read, dev)
	}
	if c := s.Configured; c == nil || !c.Fits || c.Level != 1 || len(c.Asleep) != 1 {
		t.Errorf("configured: %+v", c)
	}
	if a := s.Advice; a.Mode != "sleep" || a.Level != 1 || !a.AlreadySet || a.Level1 == nil {
		t.Errorf("advice: %+v", a)
	}
	for _, k := range []string{`"switching"`, `"cold_start"`, `"wake_level1"`, `"wake_level2"`, `"host_ram"`, `"sleep_budget_bytes"`, `"advice"`, `"measured": false`} {
		if !strings.Contains(out, k) {
			t.Errorf("JSON lacks %s", k)
		}
	}
}

// What vagentd timed (its status over the control socket) replaces the
// estimates, and what sleepers hold counts in the host RAM.
func TestPlanUsesWhatVagentdMeasured(t *testing.T) {
	conf, sock := daemonConfig(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/vagent/v1/status" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode([]map[string]any{
			{"agent": "dev", "state": "running", "measured": supervisor.SwitchTimes{ColdStart: 47 * time.Second, WakeLevel2: 4200 * time.Millisecond}},
			{"agent": "po", "state": "sleeping", "sleeping": true, "host_bytes": 8 << 30},
		})
	})}
	go srv.Serve(ln)
	defer srv.Close()

	out, errOut, code := runCtl(t, conf, "plan", "--offline", "--json", "--host-ram-mib", "32768")
	if code != 0 {
		t.Fatalf("exit %d %s", code, errOut)
	}
	var p plan.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	dev := p.Switching.Agents[1]
	if !dev.ColdStart.Measured || dev.ColdStart.Seconds != 47 || dev.WakeLevel1.Measured || !dev.WakeLevel2.Measured || dev.WakeLevel2.Seconds != 4.2 {
		t.Errorf("dev: cold %+v, wake L1 %+v, wake L2 %+v", dev.ColdStart, dev.WakeLevel1, dev.WakeLevel2)
	}
	if h := p.Switching.Host; h.HeldBytes != 8<<30 || h.BudgetBytes != (32<<30+8<<30-plan.EngineHostBytes)/2 {
		t.Errorf("host: %+v", h)
	}
	out, _, _ = runCtl(t, conf, "plan", "--offline", "--host-ram-mib", "32768")
	if !strings.Contains(out, "47.0 s measured") {
		t.Errorf("text lacks the measured cold start:\n%s", out)
	}
}

func TestPlanSwitchFlagsAndHostErrors(t *testing.T) {
	conf, _ := hostConfig(t, "configs", nil)
	for _, bad := range [][]string{{"--disk-gbps", "0"}, {"--pcie-gbps", "-3"}, {"--host-ram-mib", "lots"}} {
		_, errOut, code := runIssueCmd(t, conf, append([]string{"plan"}, bad...)...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d %s, want 2", bad, code, errOut)
		}
	}
	saved := planMeminfo
	defer func() { planMeminfo = saved }()
	planMeminfo = func() (plan.Meminfo, error) {
		return plan.Meminfo{}, errors.New("open /proc/meminfo: no such file or directory")
	}
	_, errOut, code := runIssueCmd(t, conf, "plan")
	want := "vagentctl: plan: host RAM unknown: open /proc/meminfo: no such file or directory; pass --host-ram-mib N to plan for a host with N MiB available\n"
	if code != ExitFailure || errOut != want {
		t.Errorf("exit %d, stderr %q; want %q", code, errOut, want)
	}
	if _, errOut, code := runIssueCmd(t, conf, "plan", "--host-ram-mib", "32768"); code != ExitOK {
		t.Errorf("--host-ram-mib stands in for /proc/meminfo: exit %d %s", code, errOut)
	}
}
