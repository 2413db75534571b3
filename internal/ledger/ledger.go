// Package ledger is the simulated GPU memory shared by every vllm-sim process
// on a host: one JSON file, guarded by an flock, in which each engine records
// the memory it holds. It stands in for the driver's own accounting, so that
// over-commit fails with vLLM's errors and the gpu package's "sim" backend
// can report free memory and per-process use as NVML would.
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vagent-dev/vagent/internal/filelock"
)

// Entry states.
const (
	StateLoading  = "loading"
	StateLoaded   = "loaded"
	StateSleeping = "sleeping"
)

// Entry is one engine's hold on one GPU.
type Entry struct {
	PID int `json:"pid"`
	// PIDNS identifies the PID namespace PID belongs to (the target of
	// /proc/self/ns/pid), so that only a process in the same namespace
	// judges whether PID is still alive.
	PIDNS string `json:"pidns"`
	GPU   int    `json:"gpu"`
	// Bytes is GPU memory held.
	Bytes uint64 `json:"bytes"`
	// HostBytes is host memory held for this engine (weights offloaded by a
	// level-1 sleep).
	HostBytes uint64    `json:"host_bytes,omitempty"`
	Unit      string    `json:"unit,omitempty"`
	Model     string    `json:"model,omitempty"`
	Port      int       `json:"port,omitempty"`
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
}

// State is the whole ledger.
type State struct {
	GPUs int `json:"gpus"`
	// TotalBytes is the memory of each GPU.
	TotalBytes uint64  `json:"total_bytes"`
	Entries    []Entry `json:"entries"`
}

// Used is the memory held on gpu.
func (s *State) Used(gpu int) uint64 {
	var n uint64
	for _, e := range s.Entries {
		if e.GPU == gpu {
			n += e.Bytes
		}
	}
	return n
}

// Free is the memory not held on gpu.
func (s *State) Free(gpu int) uint64 {
	used := s.Used(gpu)
	if used >= s.TotalBytes {
		return 0
	}
	return s.TotalBytes - used
}

// Remove drops every entry of pid in this process's namespace.
func (s *State) Remove(pid int) {
	ns := selfNS()
	kept := s.Entries[:0]
	for _, e := range s.Entries {
		if !(e.PID == pid && e.PIDNS == ns) {
			kept = append(kept, e)
		}
	}
	s.Entries = kept
}

// Ledger is a handle on the ledger file.
type Ledger struct {
	path       string
	gpus       int
	totalBytes uint64
}

// Open returns a handle on the ledger at path describing gpus GPUs of
// totalBytes each. Nothing is read or created until first use.
func Open(path string, gpus int, totalBytes uint64) *Ledger {
	return &Ledger{path: path, gpus: gpus, totalBytes: totalBytes}
}

// Path is the ledger file.
func (l *Ledger) Path() string { return l.path }

// Read returns the ledger as it is, without pruning dead processes (a reader
// in another PID namespace could not tell which are dead).
func (l *Ledger) Read() (*State, error) {
	unlock, err := l.lock(true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return l.load()
}

// Update runs fn on the ledger under an exclusive lock, after pruning entries
// of dead processes in this PID namespace, and writes the result back
// atomically if fn succeeds.
func (l *Ledger) Update(fn func(*State) error) error {
	unlock, err := l.lock(false)
	if err != nil {
		return err
	}
	defer unlock()
	s, err := l.load()
	if err != nil {
		return err
	}
	pruneDead(s)
	if err := fn(s); err != nil {
		return err
	}
	return l.store(s)
}

// PruneDead drops, in memory, the entries of dead processes in this PID
// namespace: what a reader that cannot write the ledger (a full or
// read-only run directory) should count, as the driver frees a dead
// process's memory.
func (s *State) PruneDead() { pruneDead(s) }

// Prune removes entries of dead processes in this PID namespace, as the
// driver frees a dead process's memory.
func (l *Ledger) Prune() error { return l.Update(func(*State) error { return nil }) }

// lock takes the ledger's lock, shared or exclusive. It waits as long as a
// holder keeps it: holders keep it for one read-modify-write of a small
// file, and the ledger's callers (engines, the simulator) have no context
// to bound the wait with.
func (l *Ledger) lock(shared bool) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return nil, fmt.Errorf("ledger dir: %w", err)
	}
	path := l.path + ".lock"
	if err := makeLockFile(path); err != nil {
		return nil, fmt.Errorf("ledger lock: %w", err)
	}
	lk, err := filelock.Acquire(context.Background(), path, filelock.Options{Shared: shared, NoCreate: true})
	if err != nil {
		return nil, fmt.Errorf("ledger lock: %w", err)
	}
	return func() { lk.Unlock() }, nil
}

// makeLockFile creates the lock file when it is missing, so that every
// user who may write the ledger's directory may lock it too: root's
// vagentctl may create it first, and engines running as another user must
// still open it. The creator's umask would otherwise decide.
func makeLockFile(path string) error {
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o660)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(0o660); err != nil {
		return err
	}
	if st, err := os.Stat(filepath.Dir(path)); err == nil {
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && os.Geteuid() == 0 {
			// Best effort: only root may give a file away.
			_ = f.Chown(int(sys.Uid), int(sys.Gid))
		}
	}
	return nil
}

func (l *Ledger) load() (*State, error) {
	s := &State{GPUs: l.gpus, TotalBytes: l.totalBytes}
	data, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, s); err != nil {
			return nil, fmt.Errorf("parse ledger %s: %w", l.path, err)
		}
	}
	// The caller's view of the hardware wins: it comes from the current
	// configuration, the file may predate it.
	if l.gpus > 0 {
		s.GPUs = l.gpus
	}
	if l.totalBytes > 0 {
		s.TotalBytes = l.totalBytes
	}
	return s, nil
}

// createTemp is os.CreateTemp; tests replace it to fill the disk.
var createTemp = os.CreateTemp

// store writes s atomically: a new file renamed over the old one. When the
// file system is full (ENOSPC, EDQUOT), s is written over the file in place
// instead: an engine that exits removes its entries in space the file
// already holds, and one that grows the file within the blocks it holds
// (tmpfs pages) still fits, so a full run directory neither keeps a dead
// engine's memory held nor, where it can be helped, refuses a start. The
// exclusive lock keeps locked readers from seeing it half-written.
func (l *Ledger) store(s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	err = l.storeAtomic(data)
	if err == nil || !(errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)) {
		return err
	}
	if err2 := l.storeInPlace(data); err2 != nil {
		return err
	}
	return nil
}

// storeInPlace overwrites the ledger file with data. A write that fails
// part-way (the file grew past the space left) puts the old content back,
// which fits where it was.
func (l *Ledger) storeInPlace(data []byte) error {
	old, err := os.ReadFile(l.path)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		if _, err2 := f.WriteAt(old, 0); err2 == nil {
			f.Truncate(int64(len(old)))
		}
		return err
	}
	return f.Truncate(int64(len(data)))
}

func (l *Ledger) storeAtomic(data []byte) error {
	tmp, err := createTemp(filepath.Dir(l.path), ".ledger-*")
	if err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	return nil
}

func selfNS() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// SelfNS is the PID namespace of this process, for new entries.
func SelfNS() string { return selfNS() }

func pruneDead(s *State) {
	ns := selfNS()
	kept := s.Entries[:0]
	for _, e := range s.Entries {
		if e.PIDNS == ns && !alive(e.PID) {
			continue
		}
		kept = append(kept, e)
	}
	s.Entries = kept
}

// alive reports whether pid runs and is not a zombie: a zombie has freed its
// memory already, as the driver frees a dead process's allocations.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// itself contain spaces or parentheses.
	for i := len(data) - 1; i >= 0; i-- {
		if data[i] == ')' {
			if i+2 < len(data) {
				return data[i+2] != 'Z' && data[i+2] != 'X'
			}
			break
		}
	}
	return true
}
