package models_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/models/hubtest"
)

func tarGz(t *testing.T, files map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "m/", Typeflag: tar.TypeDir, Mode: 0o755})
	for name, data := range files {
		if err := tw.WriteHeader(&tar.Header{Name: "m/" + name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func TestPullSourceArchiveWithChecksum(t *testing.T) {
	weights := hubtest.RandomData(3, 300<<10)
	archive := tarGz(t, map[string][]byte{"config.json": []byte(`{}`), "model.safetensors": weights})
	sum := sha256.Sum256(archive)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "m.tar.gz", hubtest.Epoch, bytes.NewReader(archive))
	}))
	defer srv.Close()
	home := t.TempDir()
	p, ev := newPuller(t, hubtest.New(), home, nil)

	res, err := p.PullSource(t.Context(), "po", srv.URL+"/m.tar.gz?checksum=sha256:"+hex.EncodeToString(sum[:]), "tiny")
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(home, "local", "tiny")
	if res.Dir != want || res.Files != 2 {
		t.Errorf("result %+v, want 2 files in %s", res, want)
	}
	if got, _ := os.ReadFile(filepath.Join(want, "model.safetensors")); !bytes.Equal(got, weights) {
		t.Error("weights differ")
	}
	if s := ev.of(models.EventSummary); len(s) != 1 || s[0].Source != "getter" || s[0].Snapshot != want {
		t.Errorf("summary %+v", s)
	}
	// The pulled directory is a local model pull accepts.
	if _, err := p.Pull(t.Context(), "po", want, ""); err != nil {
		t.Errorf("pulled directory is not a usable local model: %v", err)
	}

	// A wrong checksum fails and leaves the previous copy alone.
	bad := strings.Repeat("0", 64)
	_, err = p.PullSource(t.Context(), "po", srv.URL+"/m.tar.gz?checksum=sha256:"+bad, "tiny")
	if err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("bad checksum: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(want, "model.safetensors")); !bytes.Equal(got, weights) {
		t.Error("a failed pull damaged the previous copy")
	}
	ents, _ := os.ReadDir(filepath.Join(home, "local"))
	if len(ents) != 1 {
		t.Errorf("leftovers in local/: %v", ents)
	}
}

func TestPullSourceLocalDirectory(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "config.json"), []byte(`{}`), 0o644)
	os.WriteFile(filepath.Join(src, "model.safetensors"), []byte("w"), 0o644)
	home := t.TempDir()
	p, _ := newPuller(t, hubtest.New(), home, nil)
	dest := filepath.Join(home, "copy")
	res, err := p.PullSource(t.Context(), "", src, dest)
	if err != nil {
		t.Fatal(err)
	}
	if res.Dir != dest || res.Files != 2 {
		t.Errorf("result %+v", res)
	}
	if fi, err := os.Lstat(filepath.Join(dest, "config.json")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("config.json not copied as a file: %v", err)
	}
	empty := t.TempDir()
	if _, err := p.PullSource(t.Context(), "", empty, "x"); err == nil || !strings.Contains(err.Error(), "no config.json") {
		t.Errorf("source without config.json: %v", err)
	}
	if _, err := p.PullSource(t.Context(), "", src, "../x"); err == nil {
		t.Error("destination escaping HF_HOME/local accepted")
	}
}
