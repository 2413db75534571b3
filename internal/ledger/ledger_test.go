package ledger

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func TestUpdateIsAtomicAcrossConcurrentWriters(t *testing.T) {
	l := Open(filepath.Join(t.TempDir(), "ledger.json"), 1, 100)
	var wg sync.WaitGroup
	claimed := 0
	var mu sync.Mutex
	// Twenty claimants of 10 bytes each on a 100-byte GPU: exactly ten fit.
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.Update(func(s *State) error {
				if s.Free(0) < 10 {
					return errors.New("full")
				}
				// The live test process stands in for every claimant.
				s.Entries = append(s.Entries, Entry{PID: i + 1, PIDNS: "elsewhere", GPU: 0, Bytes: 10, State: StateLoaded})
				return nil
			})
			if err == nil {
				mu.Lock()
				claimed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	if claimed != 10 || st.Used(0) != 100 || st.Free(0) != 0 {
		t.Errorf("claimed %d, used %d, free %d; want 10, 100, 0", claimed, st.Used(0), st.Free(0))
	}
}

func TestDeadProcessesInThisNamespaceArePruned(t *testing.T) {
	l := Open(filepath.Join(t.TempDir(), "ledger.json"), 1, 1000)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	err := l.Update(func(s *State) error {
		s.Entries = append(s.Entries,
			Entry{PID: dead, PIDNS: SelfNS(), GPU: 0, Bytes: 100},
			Entry{PID: dead, PIDNS: "pid:[other]", GPU: 0, Bytes: 200},
			Entry{PID: 1, PIDNS: SelfNS(), GPU: 0, Bytes: 300},
		)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Prune(); err != nil {
		t.Fatal(err)
	}
	st, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	// The dead process of this namespace is gone; one of another namespace
	// cannot be judged from here and stays.
	if st.Used(0) != 500 || len(st.Entries) != 2 {
		t.Errorf("after prune: %+v", st.Entries)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	l := Open(filepath.Join(t.TempDir(), "ledger.json"), 1, 1000)
	if err := l.Update(func(s *State) error {
		s.Entries = append(s.Entries, Entry{PID: 1, PIDNS: "x", Bytes: 5})
		return errors.New("refused")
	}); err == nil {
		t.Fatal("error lost")
	}
	st, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Entries) != 0 {
		t.Errorf("a refused update was written: %+v", st.Entries)
	}
}

func TestLockFileIsGroupWritableWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	l := Open(filepath.Join(t.TempDir(), "ledger.json"), 1, 10)
	if err := l.Prune(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(l.Path() + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("lock file mode %v, want 0660", fi.Mode().Perm())
	}
}
