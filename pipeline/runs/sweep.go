package runs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// SweepDirs removes run directories the store no longer knows and that are
// older than retention (work.retention deletes the runs themselves, see
// work.Store.Sweep; their directories live outside the store), and the
// leftovers of writes a crash cut, once they are that old too. A retention
// of zero keeps everything. It returns how many it removed.
func (r *Runs) SweepDirs(ctx context.Context, retention time.Duration, now time.Time) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	parent := r.cfg.RunsDir()
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < retention {
			continue
		}
		name := e.Name()
		if !strings.HasPrefix(name, ".") {
			// A run the store still has keeps its directory, however old.
			if _, err := r.store.Job(ctx, name); !errors.Is(err, work.ErrNotFound) {
				continue
			}
		}
		if err := os.RemoveAll(filepath.Join(parent, name)); err != nil {
			return removed, err
		}
		removed++
	}
	return removed, nil
}

// KeepSwept runs SweepDirs every interval until ctx ends, logging what it
// removed and what failed.
func (r *Runs) KeepSwept(ctx context.Context, retention, interval time.Duration) {
	if retention <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := r.SweepDirs(ctx, retention, time.Now()); err != nil {
			r.log.Warn("pipeline runs: removing old run directories failed", "dir", r.cfg.RunsDir(), "err", err)
		} else if n > 0 {
			r.log.Info("pipeline runs: removed old run directories", "count", n, "retention", retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
