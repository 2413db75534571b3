package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vagent-dev/vagent/config"
)

// EngineKey returns the engines' API key from cfg.EngineKeyFile(), creating
// the file (mode 0600, "VLLM_API_KEY=...") when it does not exist yet. The
// engines read the same file through EnvironmentFile=, so vagentd and the
// engines agree on the key without it ever appearing on a command line.
// Creation is race-free against `vagentctl apply` doing the same: the new
// file is linked into place only if none exists, and the winner's key is
// read back.
func EngineKey(cfg *config.Config) (string, error) {
	path := cfg.EngineKeyFile()
	if key, err := readEngineKey(path); err == nil {
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("engine key: %w", err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("engine key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".engine-key-*")
	if err != nil {
		return "", fmt.Errorf("engine key: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600.
	_, werr := tmp.WriteString("VLLM_API_KEY=" + hex.EncodeToString(b) + "\n")
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return "", fmt.Errorf("engine key: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("engine key: %w", err)
	}
	return readEngineKey(path)
}

func readEngineKey(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("engine key: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "VLLM_API_KEY="); ok && v != "" {
			return strings.Trim(v, `"'`), nil
		}
	}
	return "", fmt.Errorf("engine key: %s has no VLLM_API_KEY= line", path)
}
