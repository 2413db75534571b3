package ctl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportOut: --out DIR writes one file per object and prints their
// paths; without it the same objects go to stdout as one YAML stream; the
// keys not carried go to stderr either way.
func TestExportOut(t *testing.T) {
	cfg := filepath.Join("..", "configs", "vagent.toml")
	dir := filepath.Join(t.TempDir(), "k8s")
	var o, e bytes.Buffer
	if code := Main(context.Background(), []string{"vagentctl", "-c", cfg, "export", "kubernetes", "--agents", "dev", "--out", dir}, &o, &e); code != 0 {
		t.Fatalf("exit %d: %s", code, e.String())
	}
	var files []string
	for _, n := range []string{"dev-model-cache-pvc.yaml", "dev-deployment.yaml", "dev-service.yaml"} {
		files = append(files, filepath.Join(dir, n))
	}
	if got := strings.Fields(o.String()); strings.Join(got, " ") != strings.Join(files, " ") {
		t.Errorf("stdout %q, want %q", got, files)
	}
	if !strings.Contains(e.String(), "vagentctl export: not carried: agent \"dev\": system_prompt: ") {
		t.Errorf("stderr %q", e.String())
	}
	var joined []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		joined = append(joined, string(b))
	}

	o.Reset()
	e.Reset()
	if code := Main(context.Background(), []string{"vagentctl", "-c", cfg, "export", "kubernetes", "--agents", "dev"}, &o, &e); code != 0 {
		t.Fatalf("exit %d: %s", code, e.String())
	}
	if want := strings.Join(joined, "---\n"); o.String() != want {
		t.Errorf("stdout stream differs from the files:\n%s\nwant:\n%s", o.String(), want)
	}
}
