package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/ledger"
)

// Simulated device facts. 8.9 (Ada) is a capability every vLLM feature
// accepts, so the simulator never trips CheckComputeCapability.
const (
	SimDeviceName   = "vagent simulated GPU"
	simComputeMajor = 8
	simComputeMinor = 9
)

// Sim is the backend that reads the simulator's ledger, the file in which
// every vllm-sim process records the memory it holds. It reports what NVML
// would: devices with totals from the configuration and used memory from the
// ledger, and each engine as a process.
type Sim struct {
	ledger   simLedger
	count    int
	total    uint64
	procRoot string
}

// simLedger is the part of *ledger.Ledger Sim uses; tests replace it to
// refuse writes.
type simLedger interface {
	Update(func(*ledger.State) error) error
	Read() (*ledger.State, error)
	Path() string
}

// NewSim returns the simulator backend for cfg (the [gpu] section).
func NewSim(cfg config.GPU) *Sim {
	total := cfg.SimTotalMiB << 20
	return &Sim{
		ledger:   ledger.Open(cfg.SimLedger, cfg.SimCount, total),
		count:    cfg.SimCount,
		total:    total,
		procRoot: defaultProcRoot,
	}
}

// Info implements Backend.
func (s *Sim) Info(ctx context.Context) (Info, error) {
	st, err := s.state(ctx)
	if err != nil {
		return Info{}, err
	}
	info := Info{Backend: "sim", Driver: "sim", CUDA: "12.8"}
	for i := 0; i < s.count; i++ {
		info.Devices = append(info.Devices, Device{
			Index:        i,
			UUID:         fmt.Sprintf("GPU-sim-%d", i),
			Name:         SimDeviceName,
			TotalBytes:   s.total,
			UsedBytes:    min(st.Used(i), s.total),
			FreeBytes:    st.Free(i),
			ComputeMajor: simComputeMajor,
			ComputeMinor: simComputeMinor,
		})
	}
	return info, nil
}

// Processes implements Backend. An entry's unit is the one the simulator
// recorded; failing that it is read from /proc, but only for entries of this
// PID namespace, where the PID means the same process.
func (s *Sim) Processes(ctx context.Context) ([]Process, error) {
	st, err := s.state(ctx)
	if err != nil {
		return nil, err
	}
	ns := ledger.SelfNS()
	out := make([]Process, 0, len(st.Entries))
	for _, e := range st.Entries {
		p := Process{PID: e.PID, GPU: e.GPU, UsedBytes: e.Bytes, HostBytes: e.HostBytes, Unit: e.Unit}
		if a, ok := agentOfUnit(e.Unit); ok {
			p.Agent = a
		} else {
			p.Unit = ""
			if e.PIDNS == ns {
				p.Unit, p.Agent = unitOfPID(s.procRoot, e.PID)
			}
		}
		out = append(out, p)
	}
	sortProcesses(out)
	return out, nil
}

// Close implements Backend; the ledger holds nothing open between calls.
func (s *Sim) Close() error { return nil }

// state reads the ledger after pruning the entries of dead processes, as the
// driver frees a dead process's memory: a crashed simulator must not keep its
// memory forever. Pruning writes the file; a reader without write access
// (vagentctl as an ordinary user) reads it as it is, under the shared lock if
// it may take it, else straight from the file, which the simulator only ever
// replaces atomically.
func (s *Sim) state(ctx context.Context) (*ledger.State, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var st *ledger.State
	err := s.ledger.Update(func(cur *ledger.State) error {
		cp := *cur
		cp.Entries = append([]ledger.Entry(nil), cur.Entries...)
		st = &cp
		return nil
	})
	if err == nil {
		return st, nil
	}
	if !readOnly(err) {
		return nil, fmt.Errorf("gpu: simulator ledger %s: %w", s.ledger.Path(), err)
	}
	if st, err2 := s.ledger.Read(); err2 == nil {
		st.PruneDead()
		return st, nil
	} else if !readOnly(err2) {
		return nil, fmt.Errorf("gpu: simulator ledger %s: %w", s.ledger.Path(), err2)
	}
	return s.readUnlocked()
}

func (s *Sim) readUnlocked() (*ledger.State, error) {
	st := &ledger.State{GPUs: s.count, TotalBytes: s.total}
	data, err := os.ReadFile(s.ledger.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gpu: simulator ledger: %w", err)
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, st); err != nil {
			return nil, fmt.Errorf("gpu: simulator ledger %s: %w", s.ledger.Path(), err)
		}
	}
	st.GPUs, st.TotalBytes = s.count, s.total
	st.PruneDead()
	return st, nil
}

// readOnly reports whether err is a refusal to write (permissions, a
// read-only or full file system) rather than a broken ledger: the reader
// then reads the ledger as it is, so that status and gpu work on a full
// run directory.
func readOnly(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
