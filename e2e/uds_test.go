package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestE2EEnginesOnPrivateSockets: with the shipped agent files (no port)
// on vLLM 0.18, an engine opens no TCP port and listens on a unix socket in
// a directory an unprivileged local user cannot enter, so no engine route
// (/sleep, /collective_rpc, ...) is reachable but through vagentd; requests
// through vagentd work for that user, and vagentctl test reaches the engine
// on its socket.
func TestE2EEnginesOnPrivateSockets(t *testing.T) {
	g := newGatewayHostOn(t, newHostPorts(t, false), nil)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 4, false))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("chat through vagentd: %v %v %s", resp, err, body)
	}

	cfgSock := g.s.Path("run/vagent/engines/dev.sock")
	dir := filepath.Dir(cfgSock)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o750 {
		t.Errorf("%s has mode %v, want 0750", dir, fi.Mode().Perm())
	}
	// The engine's socket answers its owner...
	out, _, code, err := g.s.Exec(ctx, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", cfgSock, "http://localhost/health")
	if err != nil || code != 0 || out != "200" {
		t.Fatalf("root: /health on %s: %q exit %d %v", cfgSock, out, code, err)
	}
	// ...and opens no TCP port.
	pid := g.status()["dev"].MainPID
	if pid == 0 {
		t.Fatalf("no main PID for dev: %+v", g.status())
	}
	ss, _, _, err := g.s.Exec(ctx, "ss", "-Hltnp")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ss, "pid="+strconv.Itoa(pid)+",") || strings.Contains(ss, "vllm-sim") {
		t.Errorf("the engine (pid %d) listens on TCP:\n%s", pid, ss)
	}

	// An unprivileged local user: nobody, no groups.
	nobody := func(args ...string) (string, string, int) {
		t.Helper()
		out, errOut, code, err := g.s.Exec(ctx, "setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--"}, args...)...)
		if err != nil {
			t.Fatalf("setpriv %s: %v", strings.Join(args, " "), err)
		}
		return out, errOut, code
	}
	if out, errOut, code := nobody("ls", dir); code == 0 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("nobody lists %s: exit %d %s %s", dir, code, out, errOut)
	}
	for _, route := range []string{"/health", "/sleep?level=1", "/collective_rpc", "/v1/models"} {
		out, errOut, code := nobody("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--unix-socket", cfgSock, "http://localhost"+route)
		// curl says "Couldn't connect" for the EACCES of connect(2).
		if code != 7 || out != "000" {
			t.Errorf("nobody reaches %s on the engine's socket: exit %d %q %s", route, code, out, errOut)
		}
	}
	out, errOut, code := nobody("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json",
		"-d", `{"model":"dev","messages":[{"role":"user","content":"hi"}],"max_tokens":4}`, g.base+"/v1/chat/completions")
	if code != 0 || out != "200" {
		t.Errorf("nobody through vagentd: %q exit %d %s", out, code, errOut)
	}
	// Still asleep? No: the engine was never reached by nobody.
	if st := g.status()["dev"]; st.Sleeping || st.MainPID != pid {
		t.Errorf("dev after nobody's tries: %+v", st)
	}
	if out := g.mustCtl("test", "dev", "--max-tokens", "4"); !strings.Contains(out, "dev: ") {
		t.Errorf("vagentctl test dev: %s", out)
	}
}
