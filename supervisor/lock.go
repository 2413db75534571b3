package supervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/vagent-dev/vagent/internal/filelock"
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
	var held []*filelock.Lock
	release := func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock()
		}
	}
	for _, g := range sorted {
		path := filepath.Join(s.cfg.Paths.RunDir, fmt.Sprintf("gpu%d.lock", g))
		l, err := filelock.Acquire(ctx, path, filelock.Options{Perm: 0o660})
		if err != nil {
			release()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for another transition on this GPU (%s): %w", path, ctx.Err())
			}
			return nil, fmt.Errorf("transition lock: %w", err)
		}
		held = append(held, l)
	}
	return release, nil
}
