package vllmsim

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
)

// startupError is a Python exception raised in the engine core while it
// starts: where it was raised, and its final line.
type startupError struct {
	file string
	line int
	fn   string
	code string
	exc  string // "ValueError: Free memory on device ..."
}

func (e *startupError) Error() string { return e.exc }

// claimOutcome are failures decided when memory was claimed but shown later,
// when the real engine would hit them.
type claimOutcome struct {
	oom  *startupError // while loading weights (or allocating a fixed KV cache)
	late *startupError // when sizing the KV cache after profiling
}

// freeMemoryError is vLLM's startup check of free memory against
// utilization × total: 0.12 in Worker.init_device, amounts in round(x, 2);
// 0.18 in request_memory (vllm/v1/worker/utils.py), naming the torch
// device ("cuda:0", the index among the visible GPUs).
func freeMemoryError(v18 bool, device int, free, total uint64, util float64, requested uint64) *startupError {
	if v18 {
		return &startupError{
			file: "vllm/v1/worker/utils.py", line: 413, fn: "request_memory", code: "raise ValueError(",
			exc: fmt.Sprintf("ValueError: Free memory on device cuda:%d (%s/%s GiB) on startup is less than desired GPU memory utilization (%s, %s GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
				device, pyRound2(float64(free)/gib), pyRound2(float64(total)/gib), pyFloat(util), pyRound2(float64(requested)/gib)),
		}
	}
	return &startupError{
		file: "vllm/v1/worker/gpu_worker.py", line: 239, fn: "init_device", code: "raise ValueError(",
		exc: fmt.Sprintf("ValueError: Free memory on device (%s/%s GiB) on startup is less than desired GPU memory utilization (%s, %s GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
			pyRound2(float64(free)/gib), pyRound2(float64(total)/gib), pyFloat(util), pyRound2(float64(requested)/gib)),
	}
}

// conservingMemory is the page 0.18's KV-cache errors point to.
const conservingMemory = " See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."

// torchSize formats bytes as torch's OOM message does.
func torchSize(b uint64) string {
	switch {
	case b >= gib:
		return fmt.Sprintf("%.2f GiB", float64(b)/gib)
	case b >= mib:
		return fmt.Sprintf("%.2f MiB", float64(b)/mib)
	case b >= kib:
		return fmt.Sprintf("%.2f KiB", float64(b)/kib)
	}
	return fmt.Sprintf("%d bytes", b)
}

// oomError is torch's CUDA out-of-memory error for an allocation of tried
// bytes on local GPU index when inUse is this process's use and free is what
// is left.
func oomError(index int, total, tried, free, inUse, allocated uint64, file string, line int, fn, code string) *startupError {
	reserved := uint64(2 * mib)
	return &startupError{
		file: file, line: line, fn: fn, code: code,
		exc: fmt.Sprintf("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate %s. GPU %d has a total capacity of %s of which %s is free. Including non-PyTorch memory, this process has %s memory in use. Of the allocated memory %s is allocated by PyTorch, and %s is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
			torchSize(tried), index, torchSize(total), torchSize(free), torchSize(inUse), torchSize(allocated), torchSize(reserved)),
	}
}

// claim checks and claims this engine's memory on every GPU it uses in one
// ledger update, as vLLM's free-memory check and its allocations happen
// against the driver's view: nothing can slip in between.
func (s *sim) claim() (claimOutcome, error) {
	var out claimOutcome
	p := s.plan
	err := s.led.Update(func(st *ledger.State) error {
		out = claimOutcome{}
		for _, g := range s.gpus {
			if g >= st.GPUs {
				return &startupError{file: "vllm/v1/worker/gpu_worker.py", line: 221, fn: "init_device",
					code: "torch.cuda.set_device(self.device)",
					exc:  "RuntimeError: CUDA error: invalid device ordinal\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1"}
			}
		}
		holds := make([]uint64, len(s.gpus))
		for i, g := range s.gpus {
			free := st.Free(g)
			if free < p.requested {
				return freeMemoryError(s.env.v18, i, free, st.TotalBytes, p.utilization, p.requested)
			}
			holds[i] = p.held
			if out.oom != nil {
				continue
			}
			switch {
			case p.weights+p.cudaContext > free:
				chunk := p.weights / uint64(3*max(s.facts.layers, 1))
				chunk = max(chunk/mib*mib, mib)
				room := free - p.cudaContext
				allocated := room / chunk * chunk
				left := free - p.cudaContext - allocated
				out.oom = oomError(i, st.TotalBytes, chunk, left, p.cudaContext+allocated, allocated,
					"vllm/model_executor/model_loader/default_loader.py", 272, "load_weights", "loaded_weights = model.load_weights(")
				holds[i] = free
			case p.held > free:
				used := p.weights + p.activation + p.cudaContext
				left := uint64(0)
				if free > used {
					left = free - used
				}
				out.oom = oomError(i, st.TotalBytes, p.kv, left, used, p.weights+p.activation, "vllm/v1/worker/gpu_model_runner.py", 4380, "_allocate_kv_cache_tensors",
					"tensor = torch.zeros(")
				holds[i] = free
			}
		}
		for i, g := range s.gpus {
			st.Entries = append(st.Entries, ledger.Entry{
				PID: s.ident.holder(g), PIDNS: s.ident.pidns, GPU: g, Bytes: holds[i],
				Unit: unitFromCgroup(), Model: s.opts.model, Port: s.ident.port,
				State: ledger.StateLoading, Since: s.ident.since,
			})
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	if out.oom == nil {
		out.late = s.sizeKV()
	}
	return out, nil
}

// sizeKV settles max_model_len against the KV cache as vLLM's
// check_enough_kv_cache_memory does.
func (s *sim) sizeKV() *startupError {
	p := s.plan
	// 0.12: check_enough_kv_cache_memory, GiB as %.2f; 0.18:
	// _check_enough_kv_cache_memory, GiB as round(x, 2) and a link.
	file, line, fn, code := "vllm/v1/core/kv_cache_utils.py", 686, "check_enough_kv_cache_memory", "raise ValueError("
	link, gibs := "", func(b uint64) string { return fmt.Sprintf("%.2f", float64(b)/gib) }
	if s.env.v18 {
		line, fn = 623, "_check_enough_kv_cache_memory"
		link, gibs = conservingMemory, func(b uint64) string { return pyRound2(float64(b) / gib) }
	}
	if p.kvShort {
		return &startupError{file: file, line: line, fn: fn, code: code,
			exc: "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine." + link}
	}
	if s.opts.maxModelLen == -1 {
		s.maxLen = min(s.facts.derivedLen, p.fitLen())
		s.log.engine("kv_cache_utils.py:702", "Auto-fit max_model_len: reduced from %d to %d to fit in available GPU memory", s.facts.derivedLen, s.maxLen)
		return nil
	}
	s.maxLen = s.configuredLen()
	blocks := (s.maxLen + p.blockSize - 1) / p.blockSize
	need := uint64(blocks*p.blockSize) * p.kvPerToken
	if need > p.kv {
		if s.env.v18 {
			line = 641
		} else {
			line = 708
		}
		return &startupError{file: file, line: line, fn: fn, code: code,
			exc: fmt.Sprintf("ValueError: To serve at least one request with the models's max seq len (%d), (%s GiB KV cache is needed, which is larger than the available KV cache memory (%s GiB). Based on the available memory, the estimated maximum model length is %d. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.%s",
				s.maxLen, gibs(need), gibs(p.kv), p.fitLen(), link)}
	}
	return nil
}

// engineFailure prints an engine core's death as vLLM does (the core's
// logged traceback on stdout, the raw tracebacks on stderr, then the API
// server's RuntimeError) and gives the memory back.
func (s *sim) engineFailure(fe *startupError) {
	lg := s.log
	site := fmt.Sprintf(`  File "/opt/venv/lib/python3.12/site-packages/%s", line %d, in %s`, fe.file, fe.line, fe.fn)
	lines := []string{
		"EngineCore failed to start.",
		"Traceback (most recent call last):",
		`  File "/opt/venv/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 857, in run_engine_core`,
		"    engine_core = EngineCoreProc(*args, **kwargs)",
		site,
		"    " + fe.code,
		fe.exc,
	}
	for _, l := range lines {
		lg.logf(procEngine, "ERROR", "core.py:866", "%s", l)
	}
	lg.raw(s.stderr, procEngine, "Process EngineCore_DP0:", "Traceback (most recent call last):", site, "    "+fe.code, fe.exc)
	s.releaseEntries()
	s.apiFailure()
}

// apiFailure is the API server's own traceback once its engine died.
func (s *sim) apiFailure() {
	s.log.raw(s.stderr, procAPI,
		"Traceback (most recent call last):",
		`  File "/opt/venv/bin/vllm", line 10, in <module>`,
		"    sys.exit(main())",
		`  File "/opt/venv/lib/python3.12/site-packages/vllm/v1/engine/utils.py", line 1209, in wait_for_engine_startup`,
		"    raise RuntimeError(",
		"RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
}

// setEntries sets this engine's hold on each of its GPUs (re-adding entries
// that were lost).
func (s *sim) setEntries(bytes, host uint64, state string) error {
	return s.led.Update(func(st *ledger.State) error {
		found := map[int]bool{}
		for i := range st.Entries {
			e := &st.Entries[i]
			if s.ident.mine(*e) {
				e.Bytes, e.HostBytes, e.State = bytes, host, state
				found[e.GPU] = true
			}
		}
		for _, g := range s.gpus {
			if !found[g] {
				st.Entries = append(st.Entries, ledger.Entry{
					PID: s.ident.holder(g), PIDNS: s.ident.pidns, GPU: g, Bytes: bytes, HostBytes: host,
					Unit: unitFromCgroup(), Model: s.opts.model, Port: s.ident.port, State: state, Since: s.ident.since,
				})
			}
		}
		return nil
	})
}

// errWakeNoRoom carries the free-memory text of a wake-up that does not fit.
type errWakeNoRoom struct{ msg string }

func (e *errWakeNoRoom) Error() string { return e.msg }

// reclaim grows this engine's hold to bytes on each GPU, failing with the
// free-memory text when other engines took the room meanwhile.
func (s *sim) reclaim(bytes, host uint64, state string) error {
	return s.led.Update(func(st *ledger.State) error {
		for _, g := range s.gpus {
			var mine uint64
			for _, e := range st.Entries {
				if s.ident.mine(e) && e.GPU == g {
					mine += e.Bytes
				}
			}
			others := st.Used(g) - mine
			room := uint64(0)
			if st.TotalBytes > others {
				room = st.TotalBytes - others
			}
			if room < bytes {
				fe := freeMemoryError(s.env.v18, 0, room, st.TotalBytes, s.plan.utilization, bytes)
				return &errWakeNoRoom{fe.exc}
			}
		}
		for i := range st.Entries {
			e := &st.Entries[i]
			if s.ident.mine(*e) {
				e.Bytes, e.HostBytes, e.State = bytes, host, state
			}
		}
		return nil
	})
}

// releaseEntries drops this engine's entries: its memory is free again.
func (s *sim) releaseEntries() {
	if s.led == nil {
		return
	}
	for attempt := 0; attempt < 3; attempt++ {
		err := s.led.Update(func(st *ledger.State) error {
			kept := st.Entries[:0]
			for _, e := range st.Entries {
				if !s.ident.mine(e) {
					kept = append(kept, e)
				}
			}
			st.Entries = kept
			return nil
		})
		if err == nil {
			return
		}
		var we *errWakeNoRoom
		if errors.As(err, &we) {
			return
		}
		time.Sleep(time.Duration(math.Pow(2, float64(attempt))) * 10 * time.Millisecond)
	}
}
