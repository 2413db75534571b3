package config

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

const referenceFile = "../docs/configuration.md"

// TestConfigurationReferenceIsCurrent fails when a key is undocumented or
// docs/configuration.md differs from what the code generates. Run
// "make docs" to regenerate it.
func TestConfigurationReferenceIsCurrent(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteReference(&buf); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("VAGENT_UPDATE_DOCS") != "" {
		if err := os.WriteFile(filepath.FromSlash(referenceFile), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(filepath.FromSlash(referenceFile))
	if err != nil {
		t.Fatalf("%v (run make docs)", err)
	}
	if !bytes.Equal(have, buf.Bytes()) {
		t.Errorf("%s is stale: run make docs", referenceFile)
	}
}

func TestReferenceRefusesUndocumentedKeys(t *testing.T) {
	saved := agentDocs["pinned"]
	delete(agentDocs, "pinned")
	defer func() { agentDocs["pinned"] = saved }()
	if _, _, err := Reference(); err == nil {
		t.Fatal("an undocumented key passed")
	}
	mainDocs["gpu.no_such_key"] = keyDoc{doc: "x"}
	defer delete(mainDocs, "gpu.no_such_key")
	agentDocs["pinned"] = saved
	if _, _, err := Reference(); err == nil {
		t.Fatal("documentation of a missing key passed")
	}
}
