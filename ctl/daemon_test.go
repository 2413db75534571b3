package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// fakeDaemon serves a control API on a unix socket and records the calls.
type fakeDaemon struct {
	calls []string
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Agent string `json:"agent"`
	}
	json.NewDecoder(r.Body).Decode(&body)
	f.calls = append(f.calls, r.Method+" "+r.URL.Path+" "+body.Agent)
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/vagent/v1/status":
		json.NewEncoder(w).Encode([]map[string]any{
			{"agent": "dev", "unit": "vagent@dev.service", "load_state": "loaded", "active_state": "active",
				"sub_state": "running", "main_pid": 42, "port": 8001, "healthy": true, "vram_bytes": 14 << 30,
				"state": "running", "in_flight": 3, "queued": 2, "pinned": true},
			{"agent": "po", "unit": "vagent@po.service", "load_state": "loaded", "active_state": "inactive",
				"sub_state": "dead", "port": 8002, "state": "stopped"},
		})
	case "/vagent/v1/switch":
		json.NewEncoder(w).Encode(supervisor.Result{Agent: body.Agent, Evicted: []string{"po"}, Duration: 1500 * time.Millisecond})
	case "/vagent/v1/stop":
		if body.Agent == "po" {
			w.WriteHeader(http.StatusConflict)
			w.Write([]byte(`{"error":{"message":"agent po is pinned","type":"invalid_request_error","code":"pinned"}}`))
			return
		}
		w.Write([]byte(`{}`))
	default:
		http.NotFound(w, r)
	}
}

// daemonConfig installs the shipped configuration with its control socket
// in a temporary directory.
func daemonConfig(t *testing.T) (conf, sock string) {
	t.Helper()
	dir := t.TempDir()
	sock = filepath.Join(dir, "vagentd.sock")
	data, err := os.ReadFile("../configs/vagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte(`control_socket = "/run/vagent/vagentd.sock"`), []byte(`control_socket = "`+sock+`"`), 1)
	conf = filepath.Join(dir, "vagent.toml")
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"architect", "dev", "po"} {
		b, err := os.ReadFile("../configs/agents/" + a + ".toml")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "agents", a+".toml"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return conf, sock
}

func runCtl(t *testing.T, conf string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), append([]string{"vagentctl", "--config", conf}, args...), &o, &e)
	return o.String(), e.String(), code
}

func TestCommandsGoThroughTheDaemon(t *testing.T) {
	conf, sock := daemonConfig(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDaemon{}
	srv := &http.Server{Handler: f}
	go srv.Serve(ln)
	defer srv.Close()

	out, errOut, code := runCtl(t, conf, "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("status printed %d lines:\n%s", len(lines), out)
	}
	for _, w := range []string{"AGENT", "STATE", "RESTARTS", "VRAM", "GATEWAY", "IN-FLIGHT", "QUEUED"} {
		if !strings.Contains(lines[0], w) {
			t.Errorf("status header lacks %s: %s", w, lines[0])
		}
	}
	if f := strings.Fields(lines[1]); f[0] != "dev" || f[len(f)-4] != "running" || f[len(f)-3] != "(pinned)" || f[len(f)-2] != "3" || f[len(f)-1] != "2" {
		t.Errorf("dev line: %s", lines[1])
	}

	out, errOut, code = runCtl(t, conf, "status", "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d: %s", code, errOut)
	}
	var st []controlapi.AgentState
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(st) != 2 || st[0].Agent != "dev" || st[0].MainPID != 42 || st[0].InFlight != 3 || st[0].State != "running" {
		t.Errorf("status --json: %+v", st)
	}

	out, errOut, code = runCtl(t, conf, "switch", "dev")
	if code != 0 || out != "switch: dev is healthy after 1.5s (stopped po)\n" {
		t.Errorf("switch: exit %d, out %q, err %q", code, out, errOut)
	}
	out, errOut, code = runCtl(t, conf, "stop", "dev")
	if code != 0 || !strings.HasPrefix(out, "stop: dev stopped after ") {
		t.Errorf("stop: exit %d, out %q, err %q", code, out, errOut)
	}
	_, errOut, code = runCtl(t, conf, "stop", "po")
	if code != 1 || !strings.Contains(errOut, "vagentd: agent po is pinned") {
		t.Errorf("refused stop: exit %d, stderr %q", code, errOut)
	}
	// An unknown agent is refused before anything is sent.
	_, _, code = runCtl(t, conf, "switch", "nobody")
	if code != 1 {
		t.Errorf("switch nobody: exit %d", code)
	}
	want := []string{
		"GET /vagent/v1/status ", "GET /vagent/v1/status ",
		"POST /vagent/v1/switch dev", "POST /vagent/v1/stop dev", "POST /vagent/v1/stop po",
	}
	if strings.Join(f.calls, "|") != strings.Join(want, "|") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}
}

// A failed start whose unit was stopped again shows as failed with its
// reason, not as systemd's "inactive (dead) success"; a vagentd that dies
// during a call is named as such.
func TestStatusShowsFailedAndLostDaemon(t *testing.T) {
	conf, sock := daemonConfig(t)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	reason := "agent dev failed to start: unit is failed (failed), result exit-code: torch.OutOfMemoryError: CUDA out of memory"
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case controlapi.PathStatus:
			json.NewEncoder(w).Encode([]controlapi.AgentState{
				{AgentStatus: supervisor.AgentStatus{Agent: "dev", Unit: "vagent@dev.service", LoadState: "loaded",
					ActiveState: "inactive", SubState: "dead", Result: "success", Port: 8001},
					State: controlapi.StateFailed, Error: reason},
				{AgentStatus: supervisor.AgentStatus{Agent: "po", Unit: "vagent@po.service", LoadState: "loaded",
					ActiveState: "inactive", SubState: "dead", Result: "success", Port: 8002},
					State: controlapi.StateStopped},
			})
		default:
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()

	out, errOut, code := runCtl(t, conf, "status")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("status printed %d lines, want the table and one reason:\n%s", len(lines), out)
	}
	if f := strings.Fields(lines[1]); f[0] != "dev" || f[1] != "failed" || strings.Contains(lines[1], "success") || strings.Contains(lines[1], "inactive") {
		t.Errorf("dev line: %s", lines[1])
	}
	if f := strings.Fields(lines[2]); f[0] != "po" || f[1] != "inactive" {
		t.Errorf("po line: %s", lines[2])
	}
	if lines[3] != "dev: "+reason {
		t.Errorf("reason line: %q", lines[3])
	}

	_, errOut, code = runCtl(t, conf, "switch", "dev")
	if code != 1 || !strings.Contains(errOut, "vagentd closed the connection mid-call (crashed or restarted?)") {
		t.Errorf("switch while vagentd dies: exit %d, stderr %q", code, errOut)
	}
}
