package config

import (
	"fmt"
	"testing"
)

func TestMainField(t *testing.T) {
	for field, want := range map[string]bool{
		"paths.hf_home": true, "engine.env": true, "gpu.sim_ledger": true, "gateway.listen": true,
		"units.user": true, "supervisor.switch_mode": true,
		"gpus": false, "env": false, "sampling.temperature": false, "model": false, "": false, "paths": false,
	} {
		if got := MainField(field); got != want {
			t.Errorf("MainField(%q) = %v, want %v", field, got, want)
		}
	}
}

func TestDurationsPrintAsWritten(t *testing.T) {
	for written, want := range map[string]string{
		"10m": "10m", "1m": "1m", "60s": "1m", "1h": "1h", "90m": "1h30m", "1m30s": "1m30s", "30s": "30s",
		"10ms": "10ms", "1.5s": "1.5s", "0s": "0s", "2h0m1s": "2h0m1s", "25h": "25h",
	} {
		var d Duration
		if err := d.UnmarshalText([]byte(written)); err != nil {
			t.Fatal(err)
		}
		if got := d.String(); got != want {
			t.Errorf("%q prints as %q, want %q", written, got, want)
		}
		if got := fmt.Sprint(d); got != want {
			t.Errorf("%q with %%v: %q, want %q", written, got, want)
		}
		var back Duration
		if err := back.UnmarshalText([]byte(d.String())); err != nil || back != d {
			t.Errorf("%q does not read back: %v %v", d.String(), back, err)
		}
	}
}

func TestSuggest(t *testing.T) {
	main, agent := knownKeys(true), knownKeys(false)
	for _, tc := range []struct {
		unknown string
		main    bool
		want    string
	}{
		{"sampling.temprature", false, "sampling.temperature"},
		{"max_model_lenn", false, "max_model_len"},
		{"gpu_memroy_utilization", false, "gpu_memory_utilization"},
		{"top_p", false, "sampling.top_p"},
		{"flavour", false, ""},
		{"x", false, ""},
		{"gpu.backedn", true, "gpu.backend"},
		{"gatway", true, "gateway"},
		{"gateway.port", true, ""},
		{"paths.hf_hom", true, "paths.hf_home"},
	} {
		known := agent
		if tc.main {
			known = main
		}
		if got := suggest(tc.unknown, known); got != tc.want {
			t.Errorf("suggest(%q) = %q, want %q", tc.unknown, got, tc.want)
		}
	}
}
