package sandbox

import (
	"os"
	"strings"
	"testing"
)

func TestSetTOML(t *testing.T) {
	doc := `# main
model = "m"

[engine]
kind = "sim"
sim_binary = "/usr/bin/vllm-sim" # trailing

[paths]
unit_dir = "/etc/systemd/system"

[[odd]]
unit_dir = 1
`
	got, err := SetTOML([]byte(doc), map[string]any{
		"engine.sim_binary": "/s/bin/vllm-sim",
		"engine.venv":       "/s/venv",
		"paths.unit_dir":    "/s/units",
		"gpu.sim_total_mib": uint64(8192),
		"gpu.reserve_frac":  1.0,
		"supervisor.on":     true,
		"model":             "n",
		"port":              18001,
		"gpus":              []int{0, 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `# main
model = "n"
gpus = [0, 1]
port = 18001

[engine]
kind = "sim"
sim_binary = "/s/bin/vllm-sim"
venv = "/s/venv"

[paths]
unit_dir = "/s/units"

[[odd]]
unit_dir = 1

[gpu]
reserve_frac = 1.0
sim_total_mib = 8192

[supervisor]
on = true
`
	if string(got) != want {
		t.Errorf("SetTOML:\n%s\nwant:\n%s", got, want)
	}
}

func TestSetTOMLRejects(t *testing.T) {
	for _, set := range []map[string]any{
		{".key": "x"},
		{"a.b.c": "x"},
		{"a.b": "line\nbreak"},
		{"a.b": []string{"x"}},
	} {
		if _, err := SetTOML(nil, set); err == nil {
			t.Errorf("SetTOML(%v) succeeded", set)
		}
	}
}

func TestCheckBaseDirRefusesShadowed(t *testing.T) {
	for _, d := range []string{"/tmp/vagent-e2e-no", "/run/vagent-e2e-no", "/var/log/vagent-e2e-no", "/etc/vagent-e2e-no"} {
		if _, err := checkBaseDir(d); err == nil || !strings.Contains(err.Error(), "replaces") {
			t.Errorf("checkBaseDir(%s) = %v, want a refusal", d, err)
		}
		if _, err := os.Lstat(d); err == nil {
			t.Errorf("checkBaseDir(%s) created it", d)
		}
	}
}
