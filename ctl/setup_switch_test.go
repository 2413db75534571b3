package ctl

import (
	"encoding/json"
	"strings"
	"testing"
)

// setup ends with the advice on sleep mode: where the host RAM holds the
// agents asleep at level 1 it says to set it, and once set, that it is.
func TestSetupAdvisesSleepMode(t *testing.T) {
	fakeMeminfo(t, 64, 48)
	fail := ""
	setupFakes(t, &fail)
	conf, _ := hostConfig(t, "configs", nil)
	out, errOut, code := runIssueCmd(t, conf, "setup")
	if code != ExitOK {
		t.Fatalf("exit %d %s\n%s", code, errOut, out)
	}
	want := `switching: set switch_mode = "sleep" for architect, dev, po: a switch back is a level-1 wake of about 0.6-0.9 s instead of a cold start of about 29.5-31.9 s; `
	if !strings.Contains(out, want) || !strings.Contains(out, "then vagentctl apply)\nsetup: ") {
		t.Errorf("setup lacks %q before its closing line:\n%s", want, out)
	}

	conf, _ = hostConfig(t, "configs", sleepMode)
	out, _, _ = runIssueCmd(t, conf, "setup", "--json")
	var rep setupReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if a := rep.Advice; a == nil || a.Mode != "sleep" || a.Level != 1 || !a.AlreadySet || !strings.HasPrefix(rep.Switching, "as configured: ") {
		t.Errorf("sleep mode set: %q %+v", rep.Switching, rep.Advice)
	}

	// A host whose RAM holds the engines but not the weights: level 2.
	fakeMeminfo(t, 16, 12)
	out, _, _ = runIssueCmd(t, conf, "setup")
	if !strings.Contains(out, `switching: set switch_mode = "sleep" with sleep_level = 2 for architect, dev, po: `) || !strings.Contains(out, "; not level 1: ") {
		t.Errorf("level-2 advice missing:\n%s", out)
	}
}
