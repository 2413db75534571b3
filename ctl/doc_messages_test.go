package ctl

// Messages of docs/troubleshooting.md that need this package's unexported
// parts: vagentctl's own form of a failed start (without vagentd, with its
// hint), which only a D-Bus connection reaches through Main. The supervisor
// runs for real on fakes of systemd and the GPU; what Main then prints is
// docMainOutput, which TestDocMainOutputIsMain holds to Main's own output.
// docs/messages_test.go checks every other message and that these ids are
// in the documents.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/docs"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/internal/vllmsim"
	"github.com/vagent-dev/vagent/journal"
	"github.com/vagent-dev/vagent/supervisor"
)

// docMainOutput is what Main prints for err.
func docMainOutput(err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "vagentctl: %s\n", strings.ReplaceAll(err.Error(), "\n", "\nvagentctl: "))
	if h := hint(err); h != "" {
		fmt.Fprintf(&b, "hint: %s\n", h)
	}
	return b.String()
}

func TestDocMainOutputIsMain(t *testing.T) {
	conf, _ := hostConfig(t, "configs", nil)
	var out, errOut bytes.Buffer
	code := Main(t.Context(), []string{"vagentctl", "--config", conf, "switch", "nosuch"}, &out, &errOut)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	if want := docMainOutput(agentErr(cfg, "nosuch")); code != ExitFailure || errOut.String() != want {
		t.Errorf("Main printed %q (exit %d), docMainOutput %q", errOut.String(), code, want)
	}
}

// docSystemd is systemd for the supervisor: units in the states given,
// inactive otherwise; a started unit turns to failed, as an engine that
// exits during its start does.
type docSystemd struct {
	mu     sync.Mutex
	states map[string]supervisor.UnitState
}

func (s *docSystemd) Start(_ context.Context, unit string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.states[unit] = supervisor.UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "exit-code"}
	return nil
}
func (s *docSystemd) Stop(context.Context, string) error        { return nil }
func (s *docSystemd) Reload(context.Context) error              { return nil }
func (s *docSystemd) ResetFailed(context.Context, string) error { return nil }
func (s *docSystemd) Close()                                    {}
func (s *docSystemd) State(_ context.Context, unit string) (supervisor.UnitState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.states[unit]; ok {
		return st, nil
	}
	return supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Result: "success"}, nil
}

// docGPU is an empty 16 GB card.
type docGPU struct{}

func (docGPU) Memory(context.Context) (map[int]supervisor.GPUMemory, error) {
	return map[int]supervisor.GPUMemory{0: {Total: 16376 << 20, Free: 16376<<20 - 300<<20}}, nil
}
func (docGPU) AgentBytes(context.Context) (map[string]uint64, error) { return map[string]uint64{}, nil }

// docSimFailure runs the simulator as dev's engine with args, which must
// fail its start, and returns the root cause lifted from its output as
// from its journal.
func docSimFailure(t *testing.T, args ...string) string {
	t.Helper()
	env := map[string]string{"VLLM_SIM_LEDGER": filepath.Join(t.TempDir(), "ledger.json"), "VLLM_SIM_LOAD_SECONDS": "0"}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	argv := append([]string{"serve", "--host", "127.0.0.1", "--port", strconv.Itoa(freeTCPPort(t))}, args...)
	code := vllmsim.Main(ctx, argv, func(k string) string { return env[k] }, &out, &errOut)
	if code == 0 {
		t.Fatalf("the simulator did not fail:\n%s%s", out.String(), errOut.String())
	}
	var entries []journal.Entry
	for _, l := range strings.Split(strings.TrimRight(out.String()+errOut.String(), "\n"), "\n") {
		entries = append(entries, journal.Entry{Message: l, Priority: 6, Identifier: "vllm", PID: 4242})
	}
	return journal.RootCause(entries, engine.VLLM{}.Log(), journal.Exit{Code: journal.ExitedCode, Status: code, Result: "exit-code"})
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var docProducers = map[string]func(t *testing.T) string{
	// `vagentctl start dev` without vagentd, dev's engine failing.
	"start-local": func(t *testing.T) string {
		cause := docSimFailure(t, "Qwen/Qwen2.5-32B-Instruct-AWQ", "--gpu-memory-utilization", "0.92", "--max-model-len", "8192")
		cfg := docConfig(t)
		sup := supervisor.New(cfg, supervisor.Options{
			Systemd: &docSystemd{states: map[string]supervisor.UnitState{}}, GPU: docGPU{},
			RootCause: func(context.Context, string, time.Time, journal.Exit) string { return cause },
		})
		_, err := sup.Start(t.Context(), "dev")
		var se *supervisor.StartError
		if !errors.As(err, &se) {
			t.Fatalf("start: %v, want a StartError", err)
		}
		return docMainOutput(err)
	},
	// `vagentctl start dev` while po runs: start never evicts.
	"start-beside": func(t *testing.T) string {
		cfg := docConfig(t)
		sd := &docSystemd{states: map[string]supervisor.UnitState{
			"vagent@po.service": {LoadState: "loaded", ActiveState: "active", SubState: "running", MainPID: 4242}}}
		sup := supervisor.New(cfg, supervisor.Options{Systemd: sd, GPU: docGPU{}})
		_, err := sup.Start(t.Context(), "dev")
		if err == nil {
			t.Fatal("dev started beside po")
		}
		return docMainOutput(err)
	},
}

// docConfig is the shipped configuration with its run directory (the
// supervisor's locks) in a temporary directory.
func docConfig(t *testing.T) *config.Config {
	t.Helper()
	conf, _ := hostConfig(t, "configs", nil)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Paths.RunDir = t.TempDir()
	// Nothing of this host may answer dev's /health.
	cfg.Agent("dev").Port = freeTCPPort(t)
	return cfg
}

func TestDocumentedMessagesOfVagentctl(t *testing.T) {
	msgs, err := docs.Messages("../docs")
	if err != nil {
		t.Fatal(err)
	}
	for id, produce := range docProducers {
		t.Run(id, func(t *testing.T) {
			got := produce(t)
			if os.Getenv("VAGENT_DOCS_SHOW") != "" {
				t.Logf("produced:\n%s", got)
			}
			b, ok := msgs[id]
			if !ok {
				t.Fatalf("no ```text vagent-message id=%s block in docs/*.md", id)
			}
			if err := docs.Match(b.Text, got); err != nil {
				t.Errorf("%s: %v\nvagentctl printed:\n%s", b.Where(), err, got)
			}
		})
	}
}
