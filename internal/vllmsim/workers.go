package vllmsim

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// WorkerEnv, set to a rank, makes the simulator's binary one tensor-parallel
// worker of the engine that started it.
//
// With a world size above 1 vLLM picks the "mp" executor backend
// (config/parallel.py, ParallelConfig.__post_init__: backend = "mp"), and
// MultiprocExecutor starts one process per rank, VllmWorker-{rank}
// (v1/executor/multiproc_executor.py, WorkerProc.make_worker_process, in
// 0.12 and 0.18), each of which sets its own device (local_rank) and holds
// that GPU's share. The driver, and so NVML, lists each GPU's memory under
// the worker that holds it, not under the API server. The simulator does
// the same: one idle process per rank, whose PID its ledger entries carry.
const WorkerEnv = "VLLM_SIM_WORKER_RANK"

// worker is the process of one rank: it holds nothing itself (the ledger
// names it) and lives until its engine goes. Its stdin is a pipe from the
// engine: EOF means the engine has gone, however it ended, as vLLM's
// workers watch their death pipe.
func worker(ctx context.Context, stdin io.Reader) int {
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, stdin)
		close(done)
	}()
	select {
	case <-ctx.Done():
	case <-done:
	}
	return 0
}

// workerCommand is the program a rank's process runs; tests that run the
// simulator inside the test binary point it at a binary that serves as one.
var workerCommand = os.Executable

// ranks are the worker processes of a multi-GPU engine.
type ranks struct {
	procs []*exec.Cmd
	pipe  *os.File // the engine's end of the workers' stdin
}

// startRanks starts one worker process per GPU of gpus, in rank order.
func startRanks(gpus []int) (*ranks, error) {
	exe, err := workerCommand()
	if err != nil {
		return nil, fmt.Errorf("start tensor-parallel workers: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start tensor-parallel workers: %w", err)
	}
	defer r.Close()
	rs := &ranks{pipe: w}
	for rank := range gpus {
		cmd := exec.Command(exe)
		cmd.Args[0] = fmt.Sprintf("VllmWorker-%d", rank)
		cmd.Env = append(os.Environ(), WorkerEnv+"="+strconv.Itoa(rank))
		cmd.Stdin = r
		// The pipe ends a worker whose engine died; SIGKILL on the
		// parent's death is the kernel's backstop for the same.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			rs.stop()
			return nil, fmt.Errorf("start tensor-parallel worker %d: %w", rank, err)
		}
		rs.procs = append(rs.procs, cmd)
	}
	return rs, nil
}

// pids are the workers' PIDs by rank.
func (rs *ranks) pids() []int {
	out := make([]int, len(rs.procs))
	for i, c := range rs.procs {
		out[i] = c.Process.Pid
	}
	return out
}

// stop ends the workers: the closed pipe tells them, and a worker still
// there after a second is killed.
func (rs *ranks) stop() {
	if rs == nil {
		return
	}
	rs.pipe.Close()
	for _, c := range rs.procs {
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Second):
			c.Process.Kill()
			<-done
		}
	}
}
