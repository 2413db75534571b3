package journal

import (
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/engine"
)

// vllmLog is the format every transcript here is written in.
var vllmLog = engine.VLLM{}.Log()

// transcript turns a log as journalctl -u shows it into entries. A line
// "[systemd] text" is systemd's own record about the unit (PID 1, notice),
// "[systemd-err] text" the same at priority err; other lines are the
// engine's stderr (priority info, whatever vLLM's level).
func transcript(s string) []Entry {
	var out []Entry
	for _, l := range strings.Split(strings.Trim(s, "\n"), "\n") {
		switch {
		case strings.HasPrefix(l, "[systemd] "):
			out = append(out, Entry{Message: strings.TrimPrefix(l, "[systemd] "), PID: 1, Priority: 5, Identifier: "systemd"})
		case strings.HasPrefix(l, "[systemd-err] "):
			out = append(out, Entry{Message: strings.TrimPrefix(l, "[systemd-err] "), PID: 1, Priority: 3, Identifier: "systemd"})
		default:
			out = append(out, Entry{Message: l, PID: 1200, Priority: 6, Identifier: "vllm"})
		}
	}
	return out
}

const venv = "/var/lib/vagent/engines/vllm-0.11.0/lib/python3.12/site-packages"

// engineStart is how every V1 start begins.
const engineStart = `(APIServer pid=1200) INFO 11-29 15:51:10 [api_server.py:1839] vLLM API server version 0.11.0
(APIServer pid=1200) INFO 11-29 15:51:10 [utils.py:233] non-default args: {'model_tag': 'Qwen/Qwen2.5-7B-Instruct-AWQ', 'host': '127.0.0.1', 'port': 8001, 'model': 'Qwen/Qwen2.5-7B-Instruct-AWQ', 'max_model_len': 32768, 'served_model_name': ['dev']}
(APIServer pid=1200) INFO 11-29 15:51:18 [model.py:547] Resolved architecture: Qwen2ForCausalLM
(APIServer pid=1200) INFO 11-29 15:51:18 [model.py:1510] Using max model len 32768
(APIServer pid=1200) INFO 11-29 15:51:18 [scheduler.py:205] Chunked prefill is enabled with max_num_batched_tokens=2048.
(EngineCore_DP0 pid=1290) INFO 11-29 15:51:27 [core.py:644] Waiting for init message from front-end.
(EngineCore_DP0 pid=1290) INFO 11-29 15:51:27 [core.py:77] Initializing a V1 LLM engine (v0.11.0) with config: model='Qwen/Qwen2.5-7B-Instruct-AWQ', speculative_config=None, tokenizer='Qwen/Qwen2.5-7B-Instruct-AWQ', skip_tokenizer_init=False
(EngineCore_DP0 pid=1290) INFO 11-29 15:51:29 [parallel_state.py:1208] rank 0 in world size 1 is assigned as DP rank 0, PP rank 0, TP rank 0, EP rank 0
`

// engineFailure is what follows the engine core's exception: the traceback
// again from multiprocessing, the API server's own, its generic summary, and
// systemd's report.
func engineFailure(cause string) string {
	return `(EngineCore_DP0 pid=1290) Process EngineCore_DP0:
(EngineCore_DP0 pid=1290) Traceback (most recent call last):
(EngineCore_DP0 pid=1290)   File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap
(EngineCore_DP0 pid=1290)     self.run()
(EngineCore_DP0 pid=1290)   File "/usr/lib/python3.12/multiprocessing/process.py", line 108, in run
(EngineCore_DP0 pid=1290)     self._target(*self._args, **self._kwargs)
(EngineCore_DP0 pid=1290)   File "` + venv + `/vllm/v1/engine/core.py", line 712, in run_engine_core
(EngineCore_DP0 pid=1290)     raise e
(EngineCore_DP0 pid=1290) ` + cause + `
(APIServer pid=1200) Traceback (most recent call last):
(APIServer pid=1200)   File "/var/lib/vagent/engines/vllm-0.11.0/bin/vllm", line 10, in <module>
(APIServer pid=1200)     sys.exit(main())
(APIServer pid=1200)              ^^^^^^
(APIServer pid=1200)   File "` + venv + `/vllm/entrypoints/cli/main.py", line 54, in main
(APIServer pid=1200)     args.dispatch_function(args)
(APIServer pid=1200)   File "` + venv + `/vllm/v1/engine/utils.py", line 880, in wait_for_engine_startup
(APIServer pid=1200)     raise RuntimeError(
(APIServer pid=1200) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
/usr/lib/python3.12/multiprocessing/resource_tracker.py:279: UserWarning: resource_tracker: There appear to be 1 leaked shared_memory objects to clean up at shutdown
  warnings.warn('resource_tracker: There appear to be %d '
[systemd] vagent@dev.service: Main process exited, code=exited, status=1/FAILURE
[systemd] vagent@dev.service: Failed with result 'exit-code'.
[systemd] vagent@dev.service: Consumed 21.433s CPU time.
`
}

// loggedTraceback is the engine core's logger.exception output: every line
// carries vLLM's ERROR prefix.
func loggedTraceback(frames []string, cause string) string {
	p := "(EngineCore_DP0 pid=1290) ERROR 11-29 15:51:30 [core.py:708] "
	var b strings.Builder
	b.WriteString(p + "EngineCore failed to start.\n")
	b.WriteString(p + "Traceback (most recent call last):\n")
	b.WriteString(p + `  File "` + venv + `/vllm/v1/engine/core.py", line 699, in run_engine_core` + "\n")
	b.WriteString(p + "    engine_core = EngineCoreProc(*args, **kwargs)\n")
	b.WriteString(p + "                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n")
	for _, f := range frames {
		b.WriteString(p + f + "\n")
	}
	b.WriteString(p + cause + "\n")
	return b.String()
}

func TestRootCauseVLLMStartFailures(t *testing.T) {
	cases := []struct {
		name, log, want string
	}{
		{
			name: "not enough free VRAM",
			want: "ValueError: Free memory on device (3.22/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.38 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
		},
		{
			name: "weights do not fit",
			want: "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total capacity of 15.98 GiB of which 739.81 MiB is free. Including non-PyTorch memory, this process has 15.24 GiB memory in use. Of the allocated memory 14.61 GiB is allocated by PyTorch, and 248.37 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
		},
		{
			name: "no room for the KV cache",
			want: "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.",
		},
		{
			name: "context too long for the KV cache",
			want: "ValueError: To serve at least one request with the models's max seq len (32768), (6.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.20 GiB). Based on the available memory, the estimated maximum model length is 17472. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.",
		},
		{
			name: "two engines profiling one GPU at once",
			want: "AssertionError: Error in memory profiling. Initial free memory 14.2 GiB, current free memory 15.1 GiB. This happens when other processes sharing the same container release GPU memory while vLLM is profiling during initialization. To fix this, ensure consistent GPU memory allocation or isolate vLLM in its own container.",
		},
		{
			name: "no kernel image for this GPU",
			want: "torch.AcceleratorError: CUDA error: no kernel image is available for execution on the device",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			frames := []string{
				`  File "` + venv + `/vllm/v1/worker/gpu_worker.py", line 239, in determine_available_memory`,
				`    raise ` + strings.SplitN(c.want, ":", 2)[0] + `(`,
			}
			log := engineStart + loggedTraceback(frames, c.want) + engineFailure(c.want)
			if got := RootCause(transcript(log), vllmLog, Exit{}); got != c.want {
				t.Errorf("RootCause =\n%q\nwant\n%q", got, c.want)
			}
		})
	}
}

func TestRootCausePortTaken(t *testing.T) {
	// The API server binds its port before the engine starts: there is no
	// generic summary, and the traceback is the API server's.
	log := `(APIServer pid=1200) INFO 11-29 16:02:11 [api_server.py:1839] vLLM API server version 0.11.0
(APIServer pid=1200) INFO 11-29 16:02:11 [utils.py:233] non-default args: {'model_tag': 'Qwen/Qwen2.5-7B-Instruct-AWQ', 'host': '127.0.0.1', 'port': 8001}
(APIServer pid=1200) Traceback (most recent call last):
(APIServer pid=1200)   File "/var/lib/vagent/engines/vllm-0.11.0/bin/vllm", line 10, in <module>
(APIServer pid=1200)     sys.exit(main())
(APIServer pid=1200)   File "` + venv + `/vllm/entrypoints/openai/api_server.py", line 1878, in create_server_socket
(APIServer pid=1200)     sock.bind(addr)
(APIServer pid=1200) OSError: [Errno 98] Address already in use
[systemd] vagent@dev.service: Main process exited, code=exited, status=1/FAILURE
[systemd] vagent@dev.service: Failed with result 'exit-code'.
`
	if got, want := RootCause(transcript(log), vllmLog, Exit{}), "OSError: [Errno 98] Address already in use"; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseUnknownFlag(t *testing.T) {
	log := `usage: vllm serve [model_tag] [options]
vllm: error: unrecognized arguments: --disable-log-requests
[systemd] vagent@dev.service: Main process exited, code=exited, status=2/INVALIDARGUMENT
[systemd] vagent@dev.service: Failed with result 'exit-code'.
`
	if got, want := RootCause(transcript(log), vllmLog, Exit{}), "vllm: error: unrecognized arguments: --disable-log-requests"; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseBrokenVenv(t *testing.T) {
	log := `Traceback (most recent call last):
  File "/var/lib/vagent/engines/vllm-0.11.0/bin/vllm", line 5, in <module>
    from vllm.entrypoints.cli.main import main
  File "` + venv + `/vllm/__init__.py", line 14, in <module>
    import vllm.env_override  # noqa: F401
ModuleNotFoundError: No module named 'torch'
[systemd] vagent@dev.service: Main process exited, code=exited, status=1/FAILURE
`
	if got, want := RootCause(transcript(log), vllmLog, Exit{}), "ModuleNotFoundError: No module named 'torch'"; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
	log = strings.Replace(log, "ModuleNotFoundError: No module named 'torch'", "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory", 1)
	if got, want := RootCause(transcript(log), vllmLog, Exit{}), "ImportError: libcudart.so.12: cannot open shared object file: No such file or directory"; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseOlderPrefixForm(t *testing.T) {
	// vLLM before the per-process tags: only the logging prefix.
	log := `INFO 03-12 10:00:01 [api_server.py:912] vLLM API server version 0.8.5
INFO 03-12 10:00:09 [core.py:58] Initializing a V1 LLM engine (v0.8.5) with config: model='Qwen/Qwen2.5-14B-Instruct-AWQ'
ERROR 03-12 10:00:30 [core.py:396] EngineCore failed to start.
ERROR 03-12 10:00:30 [core.py:396] Traceback (most recent call last):
ERROR 03-12 10:00:30 [core.py:396]   File "` + venv + `/vllm/v1/engine/core.py", line 387, in run_engine_core
ERROR 03-12 10:00:30 [core.py:396]     engine_core = EngineCoreProc(*args, **kwargs)
ERROR 03-12 10:00:30 [core.py:396] ValueError: No available memory for the cache blocks. Try increasing ` + "`gpu_memory_utilization`" + ` when initializing the engine.
Process EngineCore_0:
Traceback (most recent call last):
  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap
    self.run()
ValueError: No available memory for the cache blocks. Try increasing ` + "`gpu_memory_utilization`" + ` when initializing the engine.
Traceback (most recent call last):
  File "` + venv + `/vllm/v1/engine/core_client.py", line 312, in __init__
    raise RuntimeError("Engine core initialization failed. "
RuntimeError: Engine core initialization failed. See root cause above.
`
	want := "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine."
	if got := RootCause(transcript(log), vllmLog, Exit{}); got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseSkipsShutdownNoise(t *testing.T) {
	// A destructor failing during the shutdown after the real failure, and
	// chained wrappers, must not hide the cause.
	log := engineStart + loggedTraceback(nil, "ValueError: Free memory on device (1.02/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.38 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.") +
		`(APIServer pid=1200) Exception ignored in: <function ZmqSocket.__del__ at 0x7f0e1c2b8ae0>
(APIServer pid=1200) Traceback (most recent call last):
(APIServer pid=1200)   File "` + venv + `/zmq/sugar/socket.py", line 185, in __del__
(APIServer pid=1200) AttributeError: 'NoneType' object has no attribute 'close'
(APIServer pid=1200) Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace for root cause.
(APIServer pid=1200) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
`
	want := "ValueError: Free memory on device (1.02/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.38 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
	if got := RootCause(transcript(log), vllmLog, Exit{}); got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseFallbacks(t *testing.T) {
	cases := []struct {
		name, log, want string
	}{
		{
			name: "last ERROR line when no exception",
			log: `(APIServer pid=1200) INFO 11-29 15:51:10 [api_server.py:1839] vLLM API server version 0.11.0
(APIServer pid=1200) ERROR 11-29 15:51:12 [registry.py:400] Error in inspecting model architecture 'Qwen3NextForCausalLM'
(APIServer pid=1200) WARNING 11-29 15:51:12 [registry.py:401] Falling back to the default implementation
(APIServer pid=1200) INFO 11-29 15:51:12 [launcher.py:99] Shutting down FastAPI HTTP server.
[systemd] vagent@dev.service: Main process exited, code=exited, status=1/FAILURE
[systemd] vagent@dev.service: Failed with result 'exit-code'.
`,
			want: "Error in inspecting model architecture 'Qwen3NextForCausalLM'",
		},
		{
			name: "systemd's error when the engine never ran",
			log: `[systemd-err] vagent@dev.service: Failed to locate executable /var/lib/vagent/engines/current/bin/vllm: No such file or directory
[systemd-err] vagent@dev.service: Failed at step EXEC spawning /var/lib/vagent/engines/current/bin/vllm: No such file or directory
[systemd] vagent@dev.service: Main process exited, code=exited, status=203/EXEC
[systemd] vagent@dev.service: Failed with result 'exit-code'.
[systemd-err] Failed to start vagent@dev.service - vagent agent dev.
`,
			want: "vagent@dev.service: Failed at step EXEC spawning /var/lib/vagent/engines/current/bin/vllm: No such file or directory",
		},
		{
			name: "last engine line rather than systemd's report",
			log: `(APIServer pid=1200) INFO 11-29 15:51:10 [api_server.py:1839] vLLM API server version 0.11.0
Killed
[systemd] vagent@dev.service: Main process exited, code=killed, status=9/KILL
[systemd] vagent@dev.service: Failed with result 'signal'.
`,
			want: "Killed",
		},
		{
			name: "only systemd's report",
			log: `[systemd] vagent@dev.service: Main process exited, code=killed, status=9/KILL
[systemd] vagent@dev.service: Failed with result 'signal'.
`,
			want: "vagent@dev.service: Failed with result 'signal'.",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RootCause(transcript(c.log), vllmLog, Exit{}); got != c.want {
				t.Errorf("RootCause = %q, want %q", got, c.want)
			}
		})
	}
	if got := RootCause(nil, vllmLog, Exit{}); got != "" {
		t.Errorf("RootCause(nil, vllmLog, Exit{}) = %q", got)
	}
}

func TestRootCauseColoursAndProgressBars(t *testing.T) {
	entries := []Entry{
		{Message: "Loading safetensors checkpoint shards:   0% Completed | 0/2 [00:00<?, ?it/s]\rLoading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.10s/it]\r"},
		{Message: "(EngineCore_DP0 pid=1290) \x1b[1;31mERROR\x1b[0m 11-29 15:51:30 [core.py:708] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB."},
		{Message: "(APIServer pid=1200) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"},
	}
	if got, want := RootCause(entries, vllmLog, Exit{}), "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB."; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
	// Without the exception, a progress bar is no cause, however last.
	if got := RootCause(entries[:1], vllmLog, Exit{}); got != "" {
		t.Errorf("RootCause = %q, want none", got)
	}
}

// An engine killed while it loads leaves a log of progress: the cause is
// the signal systemd recorded, never the bar's last frame.
func TestRootCauseKilledDuringLoad(t *testing.T) {
	log := engineStart + `(EngineCore_DP0 pid=1290) INFO 11-29 15:51:30 [gpu_model_runner.py:2602] Starting to load model Qwen/Qwen2.5-7B-Instruct-AWQ...
(EngineCore_DP0 pid=1290) Loading safetensors checkpoint shards:   0% Completed | 0/2 [00:00<?, ?it/s]
(EngineCore_DP0 pid=1290) Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.10s/it]
[systemd] vagent@po.service: Main process exited, code=killed, status=9/KILL
[systemd] vagent@po.service: Failed with result 'signal'.
`
	cases := []struct {
		name string
		exit Exit
		want string
	}{
		{"SIGKILL", Exit{Code: KilledCode, Status: 9, Result: "signal"}, "the engine was killed by SIGKILL during load"},
		{"OOM killer", Exit{Code: KilledCode, Status: 9, Result: "oom-kill"}, "the engine was killed by SIGKILL during load (the kernel's out-of-memory killer)"},
		{"core dump", Exit{Code: DumpedCode, Status: 11, Result: "core-dump"}, "the engine was killed by SIGSEGV during load (core dumped)"},
		{"exit status", Exit{Code: ExitedCode, Status: 3, Result: "exit-code"}, "the engine exited with status 3 during load"},
		// Unknown: systemd's report, still not the bar.
		{"no exit known", Exit{}, "vagent@po.service: Failed with result 'signal'."},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := RootCause(transcript(log), vllmLog, c.exit); got != c.want {
				t.Errorf("RootCause = %q, want %q", got, c.want)
			}
		})
	}
}

// The engine's own error outranks how it ended: a traceback that ends in
// exit status 1, or an ERROR line before an abort, says why.
func TestRootCauseEngineErrorBeforeExit(t *testing.T) {
	log := engineStart + `(EngineCore_DP0 pid=1290) ERROR 11-29 15:51:30 [core.py:708] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB.
(EngineCore_DP0 pid=1290) Loading safetensors checkpoint shards:  50% Completed | 1/2 [00:01<00:01,  1.10s/it]
`
	for _, exit := range []Exit{{Code: DumpedCode, Status: 6, Result: "core-dump"}, {Code: ExitedCode, Status: 1, Result: "exit-code"}} {
		if got, want := RootCause(transcript(log), vllmLog, exit), "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB."; got != want {
			t.Errorf("RootCause(%+v) = %q, want %q", exit, got, want)
		}
	}
	// A bare line the engine printed says more than a status.
	bare := engineStart + "No CUDA GPUs are available\n"
	if got, want := RootCause(transcript(bare), vllmLog, Exit{Code: ExitedCode, Status: 1, Result: "exit-code"}), "No CUDA GPUs are available"; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestRootCauseIgnoresEarlierRuns(t *testing.T) {
	// Two failed runs in one log: the cause of the last one wins.
	first := engineStart + loggedTraceback(nil, "OSError: [Errno 98] Address already in use") + engineFailure("OSError: [Errno 98] Address already in use")
	second := engineStart + loggedTraceback(nil, "ValueError: No available memory for the cache blocks.") + engineFailure("ValueError: No available memory for the cache blocks.")
	if got, want := RootCause(transcript(first+second), vllmLog, Exit{}), "ValueError: No available memory for the cache blocks."; got != want {
		t.Errorf("RootCause = %q, want %q", got, want)
	}
}

func TestIsException(t *testing.T) {
	for line, want := range map[string]bool{
		"ValueError: x": true,
		"torch.OutOfMemoryError: CUDA out of memory":               true,
		"huggingface_hub.errors.GatedRepoError: 401 Client Error.": true,
		"AssertionError":                       true,
		"KeyboardInterrupt":                    true,
		"Exception: boom":                      true,
		"    raise ValueError(":                false,
		"  File \"x.py\", line 1, in <module>": false,
		"Note: something":                      false,
		"INFO: Started server process [1]":     false,
		"UserWarning: careful":                 false,
	} {
		if got := isException(line); got != want {
			t.Errorf("isException(%q) = %v, want %v", line, got, want)
		}
	}
}
