package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// lock takes the transition lock of every GPU in gpus, in index order so
// that two callers never deadlock. The locks are flocks on files in the run
// directory, so they serialise transitions across processes: two vagentctl
// runs, or vagentctl and vagentd, never interleave on one GPU. A dead
// holder's lock is released by the kernel.
func (s *Supervisor) lock(ctx context.Context, gpus []int) (func(), error) {
	sorted := append([]int(nil), gpus...)
	sort.Ints(sorted)
	if err := os.MkdirAll(s.cfg.Paths.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("transition lock: %w", err)
	}
	var held []*os.File
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Close()
		}
	}
	for _, g := range sorted {
		f, err := lockFile(ctx, filepath.Join(s.cfg.Paths.RunDir, fmt.Sprintf("gpu%d.lock", g)))
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, f)
	}
	return release, nil
}

func lockFile(ctx context.Context, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o660)
	if err != nil {
		return nil, fmt.Errorf("transition lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("transition lock %s: %w", path, err)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			f.Close()
			return nil, fmt.Errorf("waiting for another transition on this GPU (%s): %w", path, err)
		}
	}
}
