package fsync

import (
	"path/filepath"
	"testing"
)

func TestDir(t *testing.T) {
	if err := Dir(t.TempDir()); err != nil {
		t.Errorf("syncing a directory: %v", err)
	}
	if err := Dir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("syncing a missing directory did not fail")
	}
}
