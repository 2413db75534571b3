package enginekey

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func TestEnsureCreatesOnceAndReuses(t *testing.T) {
	cfg := config.Defaults()
	cfg.Paths.StateDir = filepath.Join(t.TempDir(), "state")
	k1, err := Ensure(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != 64 {
		t.Errorf("key %q: want 64 hex digits", k1)
	}
	fi, err := os.Stat(cfg.EngineKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := Ensure(&cfg)
	if err != nil || k2 != k1 {
		t.Errorf("second Ensure = %q, %v; want the first %q", k2, err, k1)
	}
	// A key written by vagentctl apply is used as is.
	if err := os.WriteFile(cfg.EngineKeyFile(), []byte("VLLM_API_KEY=abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, err := Ensure(&cfg); err != nil || k != "abc" {
		t.Errorf("Ensure = %q, %v; want abc", k, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(cfg.EngineKeyFile()))
	if len(ents) != 1 {
		t.Errorf("state dir holds %d files, want only the key", len(ents))
	}
}

func TestEnsureGivesTheKeyToTheEngineUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	cfg := config.Defaults()
	cfg.Paths.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Units.User = "nobody"
	if _, err := Ensure(&cfg); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(cfg.EngineKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	if got := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); got != nobody.Uid {
		t.Errorf("key file owned by uid %s, want nobody (%s)", got, nobody.Uid)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
}
