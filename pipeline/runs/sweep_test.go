package runs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// TestSweepDirs: a run directory goes once its run is gone from the store
// and it is older than the retention; a run the store still has keeps its
// directory, a young one stays, and an old leftover of a cut write goes.
func TestSweepDirs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	kept := e.job(t, []string{"an idea"}, [][]work.ItemState{{work.Done, work.Done, work.Done}})
	if err := e.runs.Finished(ctx, e.store, kept); err != nil {
		t.Fatal(err)
	}
	parent := e.cfg.RunsDir()
	old := time.Now().Add(-48 * time.Hour)
	mk := func(name string, mtime time.Time) string {
		p := filepath.Join(parent, name)
		if err := os.MkdirAll(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "run.jsonl"), []byte("{}\n"), 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keptDir := filepath.Join(parent, kept.ID)
	if err := os.Chtimes(keptDir, old, old); err != nil {
		t.Fatal(err)
	}
	gone := mk("run_deletedlongago", old)
	young := mk("run_deletedjustnow", time.Now())
	leftover := mk(".run_x.tmp123", old)
	n, err := e.runs.SweepDirs(ctx, 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("removed %d directories, want 2", n)
	}
	for p, want := range map[string]bool{keptDir: true, gone: false, young: true, leftover: false} {
		_, err := os.Stat(p)
		if exists := err == nil; exists != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(p), exists, want)
		}
	}
	if n, err := e.runs.SweepDirs(ctx, 0, time.Now().Add(1000*time.Hour)); err != nil || n != 0 {
		t.Errorf("retention 0 removed %d (%v), want nothing", n, err)
	}
}
