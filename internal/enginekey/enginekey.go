// Package enginekey keeps the API key engines require and only vagent
// knows: vagentctl apply and vagentd both make sure it exists, the units read
// it through EnvironmentFile=, and vagent's own clients send it upstream.
package enginekey

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/config"
)

// Ensure returns the engines' API key from cfg.EngineKeyFile(), creating
// the file (mode 0600, "VLLM_API_KEY=...") when it does not exist yet. The
// engines read the same file through EnvironmentFile=, so vagentd and the
// engines agree on the key without it ever appearing on a command line.
// Creation is race-free against `vagentctl apply` doing the same: the new
// file is linked into place only if none exists, and the winner's key is
// read back.
func Ensure(cfg *config.Config) (string, error) {
	path := cfg.EngineKeyFile()
	if key, err := Read(path); err == nil {
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
	// CreateTemp makes the file 0600. Engines and vagentd running as the
	// engine user must read it too: it goes to that user (systemd reads an
	// EnvironmentFile= as root, vagentd does not).
	if err := chownToEngineUser(tmp, cfg); err != nil {
		tmp.Close()
		return "", err
	}
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
	return Read(path)
}

// chownToEngineUser gives f to [units] user (and group) when set.
func chownToEngineUser(f *os.File, cfg *config.Config) error {
	if cfg.Units.User == "" {
		return nil
	}
	u, err := user.Lookup(cfg.Units.User)
	if err != nil {
		return fmt.Errorf("engine key: units.user %q: %w", cfg.Units.User, err)
	}
	gid := u.Gid
	if cfg.Units.Group != "" {
		g, err := user.LookupGroup(cfg.Units.Group)
		if err != nil {
			return fmt.Errorf("engine key: units.group %q: %w", cfg.Units.Group, err)
		}
		gid = g.Gid
	}
	uid, _ := strconv.Atoi(u.Uid)
	g, _ := strconv.Atoi(gid)
	if err := f.Chown(uid, g); err != nil {
		return fmt.Errorf("engine key: %w", err)
	}
	return nil
}

// Read returns the key in the environment file at path.
func Read(path string) (string, error) {
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
