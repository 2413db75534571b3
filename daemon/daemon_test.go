package daemon

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func TestLoopback(t *testing.T) {
	for _, tc := range []struct {
		listen string
		want   bool
	}{
		{"127.0.0.1:8080", true},
		{"127.1.2.3:8080", true},
		{"localhost:8080", true},
		{"[::1]:8080", true},
		{":8080", false},
		{"0.0.0.0:8080", false},
		{"[::]:8080", false},
		{"192.168.1.10:8080", false},
		{"gpu-box:8080", false},
	} {
		got, err := Loopback(tc.listen)
		if err != nil {
			t.Errorf("Loopback(%q): %v", tc.listen, err)
		}
		if got != tc.want {
			t.Errorf("Loopback(%q) = %v, want %v", tc.listen, got, tc.want)
		}
	}
	if _, err := Loopback("8080"); err == nil {
		t.Error("Loopback(\"8080\"): no error")
	}
}

func TestLoadKeysRefusesPublicListenWithoutKeys(t *testing.T) {
	cfg := config.Defaults()
	cfg.Path = "/etc/vagent/vagent.toml"
	cfg.Gateway.Listen = "0.0.0.0:8080"
	var logs bytes.Buffer
	_, err := loadKeys(&cfg, NewLogger(&logs, 0))
	if err == nil || !strings.Contains(err.Error(), "keys_file") || !strings.Contains(err.Error(), "0.0.0.0:8080") {
		t.Fatalf("loadKeys on 0.0.0.0 without keys: %v", err)
	}
	if !strings.Contains(logs.String(), "refusing to start") {
		t.Errorf("no log line saying why:\n%s", logs.String())
	}

	cfg.Gateway.Listen = "127.0.0.1:8080"
	logs.Reset()
	keys, err := loadKeys(&cfg, NewLogger(&logs, 0))
	if err != nil || keys != nil {
		t.Fatalf("loadKeys on loopback: %v, %v", keys, err)
	}
	if !strings.Contains(logs.String(), "no keys file: listening on loopback only") {
		t.Errorf("log lacks the loopback line:\n%s", logs.String())
	}
}

func TestListenControl(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "vagentd.sock")
	ln, err := ListenControl(path, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	// A second vagentd must not steal a socket that answers.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := ListenControl(path, ""); err == nil || !strings.Contains(err.Error(), "another vagentd") {
		t.Errorf("second ListenControl on a live socket: %v", err)
	}
	// A stale socket (its vagentd died without removing it) is replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket gone: %v", err)
	}
	ln2, err := ListenControl(path, "")
	if err != nil {
		t.Fatalf("ListenControl over a stale socket: %v", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
	ln2.Close()

	// A file that is no socket is left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := ListenControl(file, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ListenControl on a regular file: %v", err)
	}
	if _, err := ListenControl(filepath.Join(dir, "g.sock"), "no-such-group-vagent-test"); err == nil {
		t.Error("ListenControl with an unknown group: no error")
	}
}

func TestMainUsage(t *testing.T) {
	var out bytes.Buffer
	// Every usage error exits 2 at once, before the configuration is read,
	// and says where to look.
	for _, args := range [][]string{
		{"--bogus"},
		{"-config"},
		{"--version=maybe"},
		{"serve"},
		{"--log-level", "loud"},
		{"--config", "/nonexistent/vagent.toml", "extra"},
	} {
		out.Reset()
		code := Main(context.Background(), append([]string{"vagentd"}, args...), &out)
		if code != ExitUsage {
			t.Errorf("vagentd %q: exit %d, want %d\n%s", args, code, ExitUsage, out.String())
		}
		if !strings.Contains(out.String(), "Usage of vagentd") && !strings.Contains(out.String(), "\nhint: ") {
			t.Errorf("vagentd %q: no usage and no hint:\n%s", args, out.String())
		}
	}
	out.Reset()
	if code := Main(context.Background(), []string{"vagentd", "--config", filepath.Join(t.TempDir(), "none.toml")}, &out); code != ExitFailure {
		t.Errorf("missing config: exit %d, want %d", code, ExitFailure)
	}
	if !strings.Contains(out.String(), "none.toml") {
		t.Errorf("missing config: log does not name the file:\n%s", out.String())
	}
}
