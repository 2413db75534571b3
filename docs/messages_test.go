package docs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/daemon"
	"github.com/vagent-dev/vagent/doctor"
	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/models/hubtest"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
)

// Checked elsewhere: ids whose messages need unexported code of another
// package, with the test that produces them. Those tests fail when their
// ids are missing from the documents.
var checkedElsewhere = map[string]string{
	"start-local":                 "ctl/doc_messages_test.go",
	"start-beside":                "ctl/doc_messages_test.go",
	"polkit-refused":              "supervisor/doc_messages_test.go",
	"start-limit-refused":         "supervisor/doc_messages_test.go",
	"start-backoff":               "supervisor/doc_messages_test.go",
	"never-fits":                  "supervisor/doc_messages_test.go",
	"restored-after-failed-start": "supervisor/doc_messages_test.go",
}

const (
	model7B  = "Qwen/Qwen2.5-7B-Instruct-AWQ"
	model14B = "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"
	model32B = "Qwen/Qwen2.5-32B-Instruct-AWQ"
)

// producers make each documented message from the code path that prints
// it. Each returns what was printed (stdout and stderr together, or the
// answer a client got).
var producers = map[string]func(t *testing.T) string{
	// vLLM's start failures, as vagentctl prints them through vagentd.
	"vllm-free-memory": func(t *testing.T) string {
		ledger := filepath.Join(t.TempDir(), "ledger.json")
		env := map[string]string{"VLLM_SIM_LEDGER": ledger, "VLLM_SIM_LOAD_SECONDS": "0"}
		simServe(t, env, model7B, "--port", itoa(freePort(t)), "--gpu-memory-utilization", "0.8")
		r := runSim(t, map[string]string{"VLLM_SIM_LEDGER": ledger}, model14B, "--port", itoa(freePort(t)),
			"--gpu-memory-utilization", "0.92", "--max-model-len", "12288")
		return startFailure(t, r)
	},
	"vllm-cuda-oom": func(t *testing.T) string {
		r := runSim(t, nil, model32B, "--port", itoa(freePort(t)), "--gpu-memory-utilization", "0.92", "--max-model-len", "8192")
		return startFailure(t, r)
	},
	"vllm-no-kv-memory": func(t *testing.T) string {
		r := runSim(t, nil, model14B, "--port", itoa(freePort(t)), "--gpu-memory-utilization", "0.6", "--max-model-len", "12288")
		return startFailure(t, r)
	},
	"vllm-context-too-long": func(t *testing.T) string {
		r := runSim(t, nil, model14B, "--port", itoa(freePort(t)), "--gpu-memory-utilization", "0.92")
		return startFailure(t, r)
	},
	"vllm-port-taken": func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		r := runSim(t, nil, model14B, "--port", itoa(ln.Addr().(*net.TCPAddr).Port), "--gpu-memory-utilization", "0.92", "--max-model-len", "12288")
		return startFailure(t, r)
	},
	"vllm-unknown-flag": func(t *testing.T) string {
		r := runSim(t, nil, model14B, "--port", itoa(freePort(t)), "--max-model-len", "12288", "--enable-reasoning")
		return startFailure(t, r)
	},
	"vllm-not-pulled": func(t *testing.T) string {
		env := map[string]string{"HF_HOME": t.TempDir(), "HF_HUB_OFFLINE": "1", "VLLM_SIM_REQUIRE_CACHE": "1"}
		r := runSim(t, env, model14B, "--port", itoa(freePort(t)), "--max-model-len", "12288")
		return startFailure(t, r)
	},
	"gateway-start-failed": func(t *testing.T) string {
		r := runSim(t, nil, model32B, "--port", itoa(freePort(t)), "--gpu-memory-utilization", "0.92", "--max-model-len", "8192")
		cause := rootCause(r.output())
		cfgPath := installConfig(t, "configs", nil, nil)
		cfg := loadConfig(t, cfgPath)
		sw := &fakeSwitcher{cfg: cfg, err: func(agent string) error {
			return &supervisor.StartError{Agent: agent, Reason: "unit is failed (failed), result exit-code", RootCause: cause}
		}}
		v := startVagentd(t, cfg, gateway.Options{Switcher: sw})
		code, _, body := v.post(t, "/v1/chat/completions", "", chat("dev", true))
		return fmt.Sprintf("HTTP %d\n%s", code, body)
	},
	// The supervisor's own refusal before a start.
	"fit-held-by-others": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, nil)
		cfg := loadConfig(t, cfgPath)
		sup := supervisor.New(cfg, supervisor.Options{Systemd: &fakeSystemd{},
			GPU: fakeGPU{total: 16376 << 20, free: 6 << 30}})
		startVagentd(t, cfg, gateway.Options{Switcher: sup})
		_, errOut, code := vagentctl(t, "--config", cfgPath, "switch", "dev")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	// vagentctl plan's verdicts on the same failures.
	"plan-weights-too-big": func(t *testing.T) string {
		return planOf(t, map[string]any{"model": model32B, "max_model_len": 8192})
	},
	"plan-no-kv": func(t *testing.T) string {
		return planOf(t, map[string]any{"gpu_memory_utilization": 0.6})
	},
	"plan-context-too-long": func(t *testing.T) string {
		return planOf(t, map[string]any{"max_model_len": 32768})
	},
	"plan-together": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{
			"po": {"gpu_memory_utilization": 0.3}, "dev": {"gpu_memory_utilization": 0.6, "max_model_len": 32768}})
		out, errOut, code := vagentctl(t, "--config", cfgPath, "plan", "--offline", "--gpu-total-mib", "49140")
		return fmt.Sprintf("%s%sexit status %d\n", out, errOut, code)
	},
	"plan-16gb": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, nil)
		out, errOut, code := vagentctl(t, "--config", cfgPath, "plan", "--offline")
		if code != 0 {
			t.Fatalf("plan: exit %d\n%s%s", code, out, errOut)
		}
		return out
	},
	"plan-switch": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", map[string]any{"supervisor.switch_mode": "sleep"}, nil)
		out, errOut, code := vagentctl(t, "--config", cfgPath, "plan", "--offline", "--host-ram-mib", "49152")
		if code != 0 {
			t.Fatalf("plan: exit %d\n%s%s", code, out, errOut)
		}
		return out
	},
	// The host.
	"doctor-no-driver": func(t *testing.T) string {
		return doctorOf(t, map[string]any{"engine.kind": "vllm", "gpu.backend": "nvml"}, nil)
	},
	"gpu-no-driver": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", map[string]any{"gpu.backend": "nvml"}, nil)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "gpu")
		if code == 0 || !strings.Contains(errOut, "libnvidia-ml.so.1") {
			// This host has the driver (or this build has no cgo, hence no
			// NVML): the message is gpu.Open's error, as vagentctl prints
			// every error.
			return "vagentctl: " + gpu.ErrNoDriver.Error() + "\n"
		}
		return errOut
	},
	"doctor-no-uvm": func(t *testing.T) string {
		return doctorOf(t, map[string]any{"engine.kind": "vllm", "gpu.backend": "nvml"}, nil)
	},
	"doctor-port-taken": func(t *testing.T) string {
		// An engine on a port rather than its unix socket.
		return doctorOfAgents(t, nil, map[string]map[string]any{"dev": {"port": 9001}}, func(e *doctor.Env, cfg *config.Config) {
			busy := fmt.Sprintf("127.0.0.1:%d", cfg.Agent("dev").Port)
			e.Listen = func(network, addr string) (net.Listener, error) {
				if addr == busy {
					return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
				}
				return net.Listen(network, "127.0.0.1:0")
			}
		})
	},
	"doctor-sleep-does-not-fit": func(t *testing.T) string {
		return doctorOf(t, map[string]any{"supervisor.switch_mode": "sleep"}, func(e *doctor.Env, cfg *config.Config) {
			e.Meminfo = func() (plan.Meminfo, error) {
				return plan.Meminfo{TotalBytes: 16 << 30, AvailableBytes: 12 << 30, Source: "/proc/meminfo"}, nil
			}
		})
	},
	"doctor-disk-full": func(t *testing.T) string {
		return doctorOf(t, nil, func(e *doctor.Env, cfg *config.Config) {
			e.FreeBytes = func(string) (uint64, error) { return 1 << 30, nil }
		})
	},
	"doctor-not-pulled": func(t *testing.T) string {
		return doctorOf(t, map[string]any{"engine.kind": "vllm"}, nil)
	},
	"vagentd-port-taken": func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		cfgPath := installConfig(t, "configs", map[string]any{"gateway.listen": ln.Addr().String()}, nil)
		cfg := loadConfig(t, cfgPath)
		err = daemon.Run(t.Context(), cfg, daemon.Options{Systemd: &fakeSystemd{}, Notify: func(string) error { return nil }})
		if err == nil {
			t.Fatal("vagentd started on a port in use")
		}
		// As vagentd.service logs it: to journald, which stamps the time.
		t.Setenv("JOURNAL_STREAM", "8:12345")
		var b strings.Builder
		daemon.NewLogger(&b, 0).Error("vagentd failed", "err", err)
		return b.String()
	},
	"status-start-limit": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, nil)
		cfg := loadConfig(t, cfgPath)
		sw := &fakeSwitcher{cfg: cfg}
		for _, a := range cfg.Agents {
			st := supervisor.AgentStatus{Agent: a.Name, Unit: a.Unit(), LoadState: "loaded", ActiveState: "inactive",
				SubState: "dead", Result: "success", Port: a.Port, GPUs: a.GPUs}
			if a.Name == "dev" {
				// What systemd 252 reports after a crash loop, as
				// e2e's TestE2ECrashLoopIsTheDocumentedSample sees it.
				st.ActiveState, st.SubState, st.Result, st.Restarts = "failed", "failed", "exit-code", 3
			}
			sw.status = append(sw.status, st)
		}
		startVagentd(t, cfg, gateway.Options{Switcher: sw})
		out, errOut, code := vagentctl(t, "--config", cfgPath, "status")
		if code != 0 {
			t.Fatalf("status: exit %d\n%s", code, errOut)
		}
		return out
	},
	"socket-permission-denied": socketPermissionDenied,
	"pull-gated": func(t *testing.T) string {
		repo := hubtest.ModelRepo("meta-llama/Llama-3.1-8B-Instruct", 1<<20)
		repo.Gated = true
		hub := hubtest.New(repo)
		t.Cleanup(hub.Close)
		t.Setenv("HF_ENDPOINT", hub.URL)
		t.Setenv("HF_TOKEN", "")
		t.Setenv("HUGGING_FACE_HUB_TOKEN", "")
		t.Setenv("HF_TOKEN_PATH", filepath.Join(t.TempDir(), "none"))
		cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{
			"llama": {"model": "meta-llama/Llama-3.1-8B-Instruct", "port": 8003, "max_model_len": 8192}})
		_, errOut, code := vagentctl(t, "--config", cfgPath, "pull", "llama")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	"pull-offline": func(t *testing.T) string {
		t.Setenv("HF_HUB_OFFLINE", "1")
		cfgPath := installConfig(t, "configs", nil, nil)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "pull", "po")
		if code == 0 {
			t.Fatal("an offline pull of a model not in the cache succeeded")
		}
		return errOut
	},
	"pull-disk-full": func(t *testing.T) string {
		repo := hubtest.ModelRepo(model7B, 3<<20, 2<<20)
		hub := hubtest.New(repo)
		t.Cleanup(hub.Close)
		p, err := models.New(models.Options{HFHome: t.TempDir(), Endpoint: hub.URL,
			FreeSpace: func(string) (int64, error) { return 1 << 20, nil }})
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Pull(t.Context(), "po", model7B, "main")
		var de *models.DiskFullError
		if !errors.As(err, &de) {
			t.Fatalf("pull on a full disk: %v, want a DiskFullError", err)
		}
		// vagentctl pull prints each agent's error after "agent NAME: ".
		return fmt.Sprintf("vagentctl: agent po: %v\n", err)
	},
	"extra-args-unknown-flag": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{
			"dev": {"extra_args": "PLACEHOLDER"}})
		agent := filepath.Join(filepath.Dir(cfgPath), "agents", "dev.toml")
		data, _ := os.ReadFile(agent)
		os.WriteFile(agent, []byte(strings.Replace(string(data), `extra_args = "PLACEHOLDER"`, `extra_args = ["--enable-reasoning"]`, 1)), 0o644)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "apply")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	"extra-args-negative-number": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{
			"dev": {"extra_args": "PLACEHOLDER"}})
		agent := filepath.Join(filepath.Dir(cfgPath), "agents", "dev.toml")
		data, _ := os.ReadFile(agent)
		os.WriteFile(agent, []byte(strings.Replace(string(data), `extra_args = "PLACEHOLDER"`, `extra_args = ["--seed", "-1e5"]`, 1)), 0o644)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "apply")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	"config-path-not-normalized": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", map[string]any{"paths.state_dir": "/var/lib/vagent/../vagent"}, nil)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "apply")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	"config-unknown-key": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{"po": {"max_model_length": 16384}})
		_, errOut, code := vagentctl(t, "--config", cfgPath, "apply")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	// vagentctl run's checks, before anything is submitted.
	"pipeline-missing-stage": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, nil)
		t.Chdir(t.TempDir())
		pl := "description = \"a pipeline with a typo\"\n\n[[stage]]\nname = \"stories\"\nagent = \"po\"\nprompt = \"{{.Input}}\"\n\n" +
			"[[stage]]\nname = \"design\"\nagent = \"architect\"\nprompt = \"\"\"\nStories:\n{{stage \"storys\"}}\n\"\"\"\n"
		if err := os.WriteFile("mine.toml", []byte(pl), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := vagentctl(t, "--config", cfgPath, "run", "mine.toml", "an idea")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	"inputs-bad-line": func(t *testing.T) string {
		cfgPath := installConfig(t, "configs", nil, nil)
		t.Chdir(t.TempDir())
		if err := os.WriteFile("ideas.txt", []byte("# ideas\na chess clock\na kitchen timer\n\"a bot that answers\\nquestions\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := vagentctl(t, "--config", cfgPath, "run", "idea-to-code", "--inputs", "ideas.txt")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	},
	// What clients of the gateway get.
	"gateway-unknown-model": func(t *testing.T) string {
		cfg := loadConfig(t, installConfig(t, "configs", nil, nil))
		v := startVagentd(t, cfg, gateway.Options{Switcher: &fakeSwitcher{cfg: cfg}})
		code, _, body := v.post(t, "/v1/chat/completions", "", chat("gpt-4o", false))
		return fmt.Sprintf("HTTP %d\n%s", code, body)
	},
	"gateway-queue-full": func(t *testing.T) string {
		cfg := loadConfig(t, installConfig(t, "configs", map[string]any{"gateway.queue_length": 1}, nil))
		sw := &fakeSwitcher{cfg: cfg, block: make(chan struct{})}
		defer close(sw.block)
		v := startVagentd(t, cfg, gateway.Options{Switcher: sw})
		go func() {
			// Waits for dev's start, which never ends: the first request queued.
			if resp, err := http.Post(v.base+"/v1/chat/completions", "application/json", strings.NewReader(chat("dev", false))); err == nil {
				resp.Body.Close()
			}
		}()
		waitQueued(t, v, 1)
		code, retry, body := v.post(t, "/v1/chat/completions", "", chat("po", false))
		return fmt.Sprintf("HTTP %d Retry-After: %s\n%s", code, retry, body)
	},
	"gateway-max-wait": func(t *testing.T) string {
		cfg := loadConfig(t, installConfig(t, "configs", map[string]any{"gateway.max_wait": "1s"}, nil))
		sw := &fakeSwitcher{cfg: cfg, block: make(chan struct{})}
		defer close(sw.block)
		v := startVagentd(t, cfg, gateway.Options{Switcher: sw})
		code, retry, body := v.post(t, "/v1/chat/completions", "", chat("dev", false))
		return fmt.Sprintf("HTTP %d Retry-After: %s\n%s", code, retry, body)
	},
	"gateway-missing-key": func(t *testing.T) string {
		dir := t.TempDir()
		keys := filepath.Join(dir, "keys.toml")
		os.WriteFile(keys, []byte("[[key]]\nname = \"alice\"\nkey = \"sk-alice-0123456789abcdef\"\nagents = [\"dev\"]\n"), 0o600)
		k, err := gateway.LoadKeys(keys)
		if err != nil {
			t.Fatal(err)
		}
		cfg := loadConfig(t, installConfig(t, "configs", nil, nil))
		v := startVagentd(t, cfg, gateway.Options{Switcher: &fakeSwitcher{cfg: cfg}, Keys: k})
		code1, _, body1 := v.post(t, "/v1/chat/completions", "", chat("dev", false))
		code2, _, body2 := v.post(t, "/v1/chat/completions", "sk-alice-0123456789abcdef", chat("po", false))
		return fmt.Sprintf("HTTP %d\n%s\nHTTP %d\n%s", code1, body1, code2, body2)
	},
	"gateway-drain-cut": drainCut,
	"gateway-abort":     engineAbort,
	"gateway-bounds": func(t *testing.T) string {
		cfg := loadConfig(t, installConfig(t, "configs", map[string]any{
			"gateway.max_body_mib": 1, "gateway.body_timeout": "100ms", "gateway.max_requests_per_key": 1}, nil))
		sw := &fakeSwitcher{cfg: cfg, block: make(chan struct{})}
		defer close(sw.block)
		v := startVagentd(t, cfg, gateway.Options{Switcher: sw})
		code1, _, body1 := v.post(t, "/v1/chat/completions", "", strings.Repeat(" ", 1<<20+1))
		code2, body2 := slowBody(t, v)
		go func() {
			// Waits for dev's start, which never ends: it holds the one slot.
			if resp, err := http.Post(v.base+"/v1/chat/completions", "application/json", strings.NewReader(chat("dev", false))); err == nil {
				resp.Body.Close()
			}
		}()
		waitQueued(t, v, 1)
		code3, retry3, body3 := v.post(t, "/v1/chat/completions", "", chat("po", false))
		return fmt.Sprintf("HTTP %d\n%s\nHTTP %d\n%s\nHTTP %d Retry-After: %s\n%s", code1, body1, code2, body2, code3, retry3, body3)
	},
}

// slowBody sends v a request whose body never comes, and returns the
// answer's status and body.
func slowBody(t *testing.T, v *vagentd) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(v.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startFailure is what vagentctl prints when a switch through vagentd
// starts an engine that fails as r did: the supervisor's StartError with
// the root cause lifted from the engine's log, through vagentd's control
// API, as `vagentctl switch dev` prints it.
func startFailure(t *testing.T, r simResult) string {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("the simulator did not fail:\n%s", r.output())
	}
	cause := rootCause(r.output())
	cfgPath := installConfig(t, "configs", nil, nil)
	cfg := loadConfig(t, cfgPath)
	sw := &fakeSwitcher{cfg: cfg, err: func(agent string) error {
		return &supervisor.StartError{Agent: agent, Reason: "unit is failed (failed), result exit-code", RootCause: cause}
	}}
	startVagentd(t, cfg, gateway.Options{Switcher: sw})
	_, errOut, code := vagentctl(t, "--config", cfgPath, "switch", "dev")
	return fmt.Sprintf("%sexit status %d\n", errOut, code)
}

// planOf is `vagentctl plan --offline` of the shipped configuration with
// dev changed by set.
func planOf(t *testing.T, set map[string]any) string {
	t.Helper()
	cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{"dev": set})
	out, errOut, code := vagentctl(t, "--config", cfgPath, "plan", "--offline")
	return fmt.Sprintf("%s%sexit status %d\n", out, errOut, code)
}

// doctorOf is `vagentctl doctor`'s report on a host where nothing is
// installed: the shipped configuration with set, no NVIDIA driver,
// /proc/modules without nvidia_uvm, no model pulled, systemd answering,
// and vagentd running; change adjusts the host further.
func doctorOf(t *testing.T, set map[string]any, change func(*doctor.Env, *config.Config)) string {
	t.Helper()
	return doctorOfAgents(t, set, nil, change)
}

// doctorOfAgents is doctorOf with agent settings.
func doctorOfAgents(t *testing.T, set map[string]any, agents map[string]map[string]any, change func(*doctor.Env, *config.Config)) string {
	t.Helper()
	cfgPath := installConfig(t, "configs", set, agents)
	cfg := loadConfig(t, cfgPath)
	// The simulator doctor checks for, as the package installs it.
	sim := cfg.Engine.SimBinary
	os.MkdirAll(filepath.Dir(sim), 0o755)
	os.WriteFile(sim, []byte("#!/bin/sh\necho 0.18.0\n"), 0o755)
	modules := filepath.Join(t.TempDir(), "modules")
	os.WriteFile(modules, []byte("nvidia_modeset 1568768 0 - Live 0x0000000000000000\nnvidia 56807424 1 nvidia_modeset, Live 0x0000000000000000 (PO)\n"), 0o644)
	env := doctor.HostEnv(cfg)
	env.ProcModules = modules
	env.FreeBytes = func(string) (uint64, error) { return 200 << 30, nil }
	sd := &fakeSystemd{states: map[string]supervisor.UnitState{
		"vagentd.service": {LoadState: "loaded", ActiveState: "active", SubState: "running"}}}
	env.Systemd = func(context.Context) (supervisor.Systemd, error) { return sd, nil }
	env.Listen = func(network, addr string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }
	r := &plan.Resolver{HFHome: cfg.Paths.HFHome, Offline: true}
	env.Facts = r.Facts
	if cfg.GPU.Backend == config.GPUBackendNVML {
		env.OpenGPU = func() (gpu.Backend, error) { return nil, gpu.ErrNoDriver }
	}
	if change != nil {
		change(&env, cfg)
	}
	var b strings.Builder
	rep := doctor.New(cfg, env).Run(t.Context())
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// waitQueued waits until vagentd reports n requests queued.
func waitQueued(t *testing.T, v *vagentd, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(v.base + "/metrics")
		if err == nil {
			sc := bufio.NewScanner(resp.Body)
			total := 0
			for sc.Scan() {
				var agent string
				var q int
				if _, err := fmt.Sscanf(sc.Text(), "vagent_queue_depth{agent=%q} %d", &agent, &q); err == nil {
					total += q
				}
			}
			resp.Body.Close()
			if total >= n {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %d requests queued after 10s", n)
}

// drainCut streams from po through vagentd, then has a switch evict po
// while the stream runs: after gateway.drain_timeout the stream is cut and
// ends with an error event.
func drainCut(t *testing.T) string {
	port := freePort(t)
	cfgPath := installConfig(t, "configs", map[string]any{"gateway.drain_timeout": "1s"},
		map[string]map[string]any{"po": {"port": port}})
	cfg := loadConfig(t, cfgPath)
	// The engine: vllm-sim at 2 tokens a second, so that the stream is
	// still running when the drain bound passes.
	simServe(t, map[string]string{"VLLM_SIM_LEDGER": filepath.Join(t.TempDir(), "ledger.json"),
		"VLLM_SIM_LOAD_SECONDS": "0", "VLLM_SIM_TOKENS_PER_SECOND": "2", "VLLM_SIM_TTFT_MS": "0"},
		model7B, "--port", itoa(port), "--served-model-name", "po", "--max-model-len", "32768")
	v := startVagentd(t, cfg, gateway.Options{Switcher: &fakeSwitcher{cfg: cfg}})
	body := `{"model": "po", "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, v.base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n') // the stream runs
	if err != nil {
		t.Fatal(err)
	}
	evicted := make(chan error, 1)
	go func() { evicted <- v.gw.BeforeEvict(context.Background(), "po") }()
	rest, _ := io.ReadAll(br)
	if err := <-evicted; err != nil {
		t.Fatal(err)
	}
	return first + string(rest)
}

// engineAbort is a stream through vagentd whose vLLM 0.18 engine is put to
// sleep by hand while it runs: 0.18 aborts the request.
func engineAbort(t *testing.T) string {
	port := freePort(t)
	cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{"po": {"port": port}})
	cfg := loadConfig(t, cfgPath)
	simServe(t, map[string]string{"VLLM_SIM_LEDGER": filepath.Join(t.TempDir(), "ledger.json"),
		"VLLM_SIM_LOAD_SECONDS": "0", "VLLM_SIM_TOKENS_PER_SECOND": "2", "VLLM_SIM_TTFT_MS": "0",
		"VLLM_SIM_VERSION": "0.18.0", "VLLM_SERVER_DEV_MODE": "1"},
		model7B, "--port", itoa(port), "--served-model-name", "po", "--max-model-len", "32768", "--enable-sleep-mode")
	v := startVagentd(t, cfg, gateway.Options{Switcher: &fakeSwitcher{cfg: cfg}})
	body := `{"model": "po", "stream": true, "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}`
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, v.base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	first, err := br.ReadString('\n') // the stream runs
	if err != nil {
		t.Fatal(err)
	}
	sl, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/sleep?level=1", port), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	sl.Body.Close()
	rest, _ := io.ReadAll(br)
	return first + string(rest)
}

// socketPermissionDenied runs `vagentctl status` as a user who may not
// open vagentd's control socket. As root (who may open anything) it runs
// this test binary as user nobody, in the helper mode TestMain provides.
func socketPermissionDenied(t *testing.T) string {
	// Everything the other user reads must be readable by it: not under
	// t.TempDir(), which only its owner may enter.
	dir, err := os.MkdirTemp("", "vagent-docs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "run", "vagentd.sock")
	cfgPath := installConfigAt(t, dir, "configs", map[string]any{"gateway.control_socket": sock}, nil)
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if os.Geteuid() != 0 {
		// Its owner may not connect to a socket of mode 0 either.
		os.Chmod(sock, 0)
		_, errOut, code := vagentctl(t, "--config", cfgPath, "status")
		return fmt.Sprintf("%sexit status %d\n", errOut, code)
	}
	// root may open anything: run this test binary as vagentctl, as nobody,
	// against a socket of vagentd's mode (0660, root's group).
	os.Chmod(sock, 0o660)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "vagentctl")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, "--config", cfgPath, "status")
	cmd.Env = append(os.Environ(), helperEnv+"=vagentctl")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run vagentctl as nobody: %v\n%s", err, out)
	}
	return fmt.Sprintf("%sexit status %d\n", out, code)
}

// TestDocumentedMessagesAreWhatTheCodePrints checks every ```text
// vagent-message id=ID block of docs/*.md against what its producer made
// the code print.
func TestDocumentedMessagesAreWhatTheCodePrints(t *testing.T) {
	msgs, err := Messages(".")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for id := range msgs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if _, ok := producers[id]; !ok && checkedElsewhere[id] == "" {
			t.Errorf("%s: no test produces message %q: add a producer to docs/messages_test.go", msgs[id].Where(), id)
		}
	}
	for id := range producers {
		if _, ok := msgs[id]; !ok {
			t.Errorf("message %q has a producer but no ```text vagent-message id=%s block in docs/*.md", id, id)
		}
	}
	for id, where := range checkedElsewhere {
		if _, ok := msgs[id]; !ok {
			t.Errorf("message %q (checked in %s) is in no document", id, where)
		}
	}
	for _, id := range ids {
		produce := producers[id]
		if produce == nil {
			continue
		}
		b := msgs[id]
		t.Run(id, func(t *testing.T) {
			got := produce(t)
			if os.Getenv("VAGENT_DOCS_SHOW") != "" {
				t.Logf("produced:\n%s", got)
			}
			if err := Match(b.Text, got); err != nil {
				t.Errorf("%s: %v\nthe code printed:\n%s", b.Where(), err, got)
			}
		})
	}
}

// helperEnv makes this test binary run as vagentctl (see TestMain).
const helperEnv = "VAGENT_DOCS_HELPER"
