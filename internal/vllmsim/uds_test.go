package vllmsim

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUnixSocket: with --uds the simulator binds the socket at once and
// listens only once the model is loaded, as vLLM does for a port (0.10.1
// and later have --uds, so both modelled versions take it), and opens no
// TCP port.
func TestUnixSocket(t *testing.T) {
	for _, version := range []string{"0.18.0", "0.12.0"} {
		t.Run(version, func(t *testing.T) {
			path := tempLedger(t)
			sock := filepath.Join(t.TempDir(), "dev.sock")
			// --host and --port too: vLLM ignores them beside --uds.
			port := freePort(t)
			p := execSim(t, procEnv(path, version, map[string]string{"VLLM_SIM_LOAD_SECONDS": "1"}), port, model7B, "--uds", sock)
			p.waitOutput(t, "Starting to load model")
			// Bound during the load, and nothing listens: connects are refused.
			if _, err := os.Stat(sock); err != nil {
				t.Fatalf("no socket during the load: %v", err)
			}
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				t.Fatal("connect succeeded during the load")
			} else if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("connect during load: %v, want connection refused", err)
			}
			hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
			deadline := time.Now().Add(10 * time.Second)
			for {
				resp, err := hc.Get("http://localhost/health")
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no health on the socket\nstdout:\n%s\nstderr:\n%s", p.stdout, p.stderr)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
				c.Close()
				t.Errorf("a server on a socket listens on --port %d too", port)
			}
			if !strings.Contains(p.stdout.String(), "on unix:"+sock) {
				t.Errorf("the start line does not name the socket:\n%s", p.stdout)
			}
			if strings.Contains(p.stdout.String(), "http://") {
				t.Errorf("a server on a socket names a URL:\n%s", p.stdout)
			}
		})
	}
}

// TestUnixSocketLeftOver: vLLM binds without removing what is at the path,
// so a socket left by a dead server makes the start fail.
func TestUnixSocketLeftOver(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "dev.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	path := tempLedger(t)
	code, _, stderr := runSim(t, procEnv(path, "0.18.0", nil), "serve", model7B, "--uds", sock)
	if code != 1 || !strings.Contains(stderr, "create_server_unix_socket") || !strings.Contains(stderr, "OSError: [Errno 98] Address already in use") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
}
