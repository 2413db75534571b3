package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
	"github.com/vagent-dev/vagent/internal/syncbuf"
)

// The test binary doubles as vllm-sim when this variable is set, so that
// signals and exit codes are those of a real process.
const execEnv = "VLLM_SIM_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execEnv) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func simCommand(t *testing.T, ledgerPath string, args ...string) (*exec.Cmd, *syncbuf.Buffer, *syncbuf.Buffer) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), execEnv+"=1", "VLLM_SIM_LEDGER="+ledgerPath,
		"VLLM_SIM_LOAD_SECONDS=0", "VLLM_SIM_RELEASE_MS=100", "VLLM_SIM_TTFT_MS=0")
	var out, errw syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	return cmd, &out, &errw
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitHealthy(t *testing.T, port int, out *syncbuf.Buffer) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never healthy:\n%s", out)
}

func entriesOf(t *testing.T, path string, pid int) []ledger.Entry {
	t.Helper()
	st, err := ledger.Open(path, 0, 0).Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []ledger.Entry
	for _, e := range st.Entries {
		if e.PID == pid {
			out = append(out, e)
		}
	}
	return out
}

func TestUnknownFlagExitsTwo(t *testing.T) {
	cmd, _, errw := simCommand(t, filepath.Join(t.TempDir(), "l.json"), "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--foo")
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit: %v", err)
	}
	if want := "usage: vllm serve [model_tag] [options]\nvllm serve: error: unrecognized arguments: --foo\n"; errw.String() != want {
		t.Errorf("stderr %q, want %q", errw.String(), want)
	}
}

// TestUsageErrorsExitTwo: like vllm's argparse, a missing or unknown
// subcommand and an unknown top-level option exit 2 with the usage line.
func TestUsageErrorsExitTwo(t *testing.T) {
	const usage = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...\n"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "vllm: error: the following arguments are required: subparser\n"},
		{[]string{"bogus"}, "vllm: error: argument subparser: invalid choice: 'bogus'"},
		{[]string{"--bogus"}, "vllm: error: argument subparser: invalid choice: '--bogus'"},
		{[]string{"serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--port"}, "vllm serve: error: argument --port: expected one argument\n"},
	} {
		cmd, out, errw := simCommand(t, filepath.Join(t.TempDir(), "l.json"), tc.args...)
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("vllm-sim %q: exit %v, want 2", tc.args, err)
		}
		if s := errw.String(); !strings.Contains(s, tc.want) || !strings.HasPrefix(s, "usage: vllm") || (len(tc.args) < 2 && !strings.HasPrefix(s, usage)) {
			t.Errorf("vllm-sim %q: stderr %q, want the usage line and %q", tc.args, s, tc.want)
		}
		if out.String() != "" {
			t.Errorf("vllm-sim %q: stdout %q", tc.args, out.String())
		}
	}
}

func TestSIGTERMReleasesMemory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	port := freePort(t)
	cmd, out, _ := simCommand(t, path, "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--host", "127.0.0.1", "--port", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitHealthy(t, port, out)
	pid := cmd.Process.Pid
	if es := entriesOf(t, path, pid); len(es) != 1 || es[0].State != ledger.StateLoaded {
		t.Fatalf("ledger while serving: %+v", es)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, out)
	}
	if es := entriesOf(t, path, pid); len(es) != 0 {
		t.Errorf("entry left after SIGTERM: %+v", es)
	}
	if !strings.Contains(out.String(), "Shutting down FastAPI HTTP server.") {
		t.Errorf("no shutdown line:\n%s", out)
	}
}

func TestSIGKILLLeavesEntryUntilPruned(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	port := freePort(t)
	cmd, out, _ := simCommand(t, path, "serve", "Qwen/Qwen2.5-7B-Instruct-AWQ", "--host", "127.0.0.1", "--port", strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, port, out)
	pid := cmd.Process.Pid
	cmd.Process.Kill()
	cmd.Wait()
	if es := entriesOf(t, path, pid); len(es) != 1 {
		t.Fatalf("SIGKILL cannot clean up, the entry stays until pruned: %+v", es)
	}
	if err := ledger.Open(path, 1, 0).Prune(); err != nil {
		t.Fatal(err)
	}
	if es := entriesOf(t, path, pid); len(es) != 0 {
		t.Errorf("prune kept a dead engine's entry: %+v", es)
	}
}
