package filelock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestExclusiveExcludesAndContextEndsTheWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	l, err := Acquire(context.Background(), path, Options{Perm: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := TryLock(path, Options{}); !errors.Is(err, ErrHeld) {
		t.Errorf("second exclusive: %v, want ErrHeld", err)
	}
	if _, err := TryLock(path, Options{Shared: true}); !errors.Is(err, ErrHeld) {
		t.Errorf("shared beside exclusive: %v, want ErrHeld", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Acquire(ctx, path, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with a cancelled context: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		l2, err := Acquire(context.Background(), path, Options{})
		if err == nil {
			l2.Unlock()
		}
		got <- err
	}()
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Errorf("waiter after release: %v", err)
	}
}

func TestSharedLocksShareAndModeIsKept(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "s.lock")
	a, err := Acquire(context.Background(), path, Options{Shared: true, Perm: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	b, err := TryLock(path, Options{Shared: true})
	if err != nil {
		t.Errorf("second shared: %v", err)
	} else {
		b.Unlock()
	}
	if _, err := TryLock(path, Options{}); !errors.Is(err, ErrHeld) {
		t.Errorf("exclusive beside shared: %v", err)
	}
	a.Unlock()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("lock file mode %v (%v), want 0660", st.Mode(), err)
	}
}

func TestNoCreateCreatesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.lock")
	if _, err := Acquire(context.Background(), path, Options{NoCreate: true}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NoCreate on a missing file: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("NoCreate created %s", path)
	}
}

// TestFreeLockTakenWithEndedContext: only the wait is bounded by the
// context, as the supervisor's transition lock always behaved.
func TestFreeLockTakenWithEndedContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l, err := Acquire(ctx, filepath.Join(t.TempDir(), "f.lock"), Options{})
	if err != nil {
		t.Fatalf("free lock with an ended context: %v", err)
	}
	l.Unlock()
}

// TestOnlyThisPackageTakesFlocks: every lock of the project goes through
// here, so that none polls at its own interval or ignores its context.
func TestOnlyThisPackageTakesFlocks(t *testing.T) {
	root := filepath.Join("..", "..")
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".e2e" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || filepath.Dir(path) == "." {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, call := range []string{"syscall.Flock(", "unix.Flock(", "syscall.FcntlFlock(", "unix.FcntlFlock("} {
			if strings.Contains(string(data), call) {
				t.Errorf("%s calls %s: take the lock with filelock instead", path, call)
			}
		}
		return nil
	})
}
