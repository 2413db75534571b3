package vllmflags

import "testing"

func TestKinds(t *testing.T) {
	s, err := For("0.18.0")
	if err != nil {
		t.Fatal(err)
	}
	for flag, want := range map[string]bool{
		"--enforce-eager": true, "--no-enforce-eager": true, "--enable-sleep-mode": true,
		"--trust-remote-code": true, "--enable-auto-tool-choice": true, "--enable-log-requests": true,
		"--disable-log-stats": true, "--headless": true, "-ep": true,
		"--port": false, "--served-model-name": false, "-tp": false, "--unknown": false,
	} {
		if got := s.Boolean(flag); got != want {
			t.Errorf("Boolean(%s) = %v, want %v", flag, got, want)
		}
	}
	if !s.Multi("--served-model-name") || !s.Multi("--api-key") || s.Multi("--port") {
		t.Error("Multi")
	}
	if s.Canonical("-tp") != "--tensor-parallel-size" || s.Canonical("-q") != "--quantization" || s.Canonical("--port=1") != "--port" {
		t.Error("Canonical")
	}
	if a := s.Aliases("--tensor-parallel-size"); len(a) != 1 || a[0] != "-tp" {
		t.Errorf("Aliases = %v", a)
	}
	old, _ := For("0.12.0")
	if !old.Boolean("--disable-log-requests") || s.Boolean("--disable-log-requests") {
		t.Error("--disable-log-requests exists in 0.12 only")
	}
}
