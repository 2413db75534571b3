// Package filelock is vagent's one way to take an flock(2) on a file:
// gofrs/flock underneath, waits bounded by a context and polled at one
// interval, so that every lock (GPU transitions, blob downloads shared with
// huggingface_hub, the venv, the simulator's ledger) behaves alike. A
// holder that dies releases its locks with its file descriptors.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/gofrs/flock"
)

// PollInterval is how often a waiting caller retries. Each poll is one
// non-blocking flock(2), so a short interval costs little, and whatever a
// lock serialises (a GPU switch) is delayed by at most this after release.
const PollInterval = 10 * time.Millisecond

// ErrHeld is returned by TryLock when another holder has the lock.
var ErrHeld = errors.New("lock held by another process")

// Options say how a lock file is opened and locked.
type Options struct {
	// Shared takes a read (LOCK_SH) lock instead of an exclusive one.
	Shared bool
	// Perm is the mode a missing lock file is created with (before the
	// umask); 0o600 when 0.
	Perm fs.FileMode
	// NoCreate opens only a lock file that exists: the caller made it (as
	// through an os.Root) and no path may be created here.
	NoCreate bool
}

// Lock is a held lock.
type Lock struct{ f *flock.Flock }

func newFlock(path string, o Options) *flock.Flock {
	flag := os.O_RDWR | os.O_CREATE
	if o.NoCreate {
		flag = os.O_RDWR
	}
	perm := o.Perm
	if perm == 0 {
		perm = 0o600
	}
	return flock.New(path, flock.SetFlag(flag), flock.SetPermissions(perm))
}

// Acquire takes the lock on path, waiting while ctx allows; the error
// wraps ctx's when it ended first. A free lock is taken even when ctx has
// ended: only waiting is bounded by it.
func Acquire(ctx context.Context, path string, o Options) (*Lock, error) {
	f := newFlock(path, o)
	try, wait := f.TryLock, f.TryLockContext
	if o.Shared {
		try, wait = f.TryRLock, f.TryRLockContext
	}
	ok, err := try()
	if err == nil && !ok {
		ok, err = wait(ctx, PollInterval)
	}
	if err == nil && !ok {
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// TryLock takes the lock on path without waiting: ErrHeld when another
// holder has it.
func TryLock(path string, o Options) (*Lock, error) {
	f := newFlock(path, o)
	try := f.TryLock
	if o.Shared {
		try = f.TryRLock
	}
	ok, err := try()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok {
		return nil, fmt.Errorf("lock %s: %w", path, ErrHeld)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock and closes its file. Unlocking twice is a no-op.
func (l *Lock) Unlock() error { return l.f.Unlock() }
