package ledger

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// deadPID is the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	return p.Pid
}

// On a full run directory (no new file can be written) an engine that
// exits still removes its entries: the file is written in place.
func TestFullDiskStillReleases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l := Open(path, 1, 16<<30)
	me := Entry{PID: os.Getpid(), PIDNS: SelfNS(), GPU: 0, Bytes: 4 << 30, Unit: "vagent@po.service", State: StateLoaded}
	other := Entry{PID: 1, PIDNS: "elsewhere", GPU: 0, Bytes: 2 << 30, Unit: "vagent@dev.service", State: StateLoaded}
	if err := l.Update(func(s *State) error { s.Entries = append(s.Entries, me, other); return nil }); err != nil {
		t.Fatal(err)
	}
	full := func(string, string) (*os.File, error) {
		return nil, &os.PathError{Op: "open", Path: path, Err: syscall.ENOSPC}
	}
	createTemp = full
	t.Cleanup(func() { createTemp = os.CreateTemp })

	if err := l.Update(func(s *State) error { s.Remove(os.Getpid()); return nil }); err != nil {
		t.Fatalf("removing an entry on a full disk: %v", err)
	}
	s, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Entries) != 1 || s.Entries[0].Unit != "vagent@dev.service" || s.Used(0) != 2<<30 {
		t.Errorf("after the removal: %+v", s.Entries)
	}
}

// A reader that cannot write prunes dead processes in memory.
func TestPruneDeadInMemory(t *testing.T) {
	s := &State{Entries: []Entry{
		{PID: deadPID(t), PIDNS: SelfNS(), Bytes: 1},
		{PID: os.Getpid(), PIDNS: SelfNS(), Bytes: 2},
		{PID: 12345678, PIDNS: "elsewhere", Bytes: 4},
	}}
	s.PruneDead()
	if s.Used(0) != 6 {
		t.Errorf("after PruneDead: %+v, want the dead engine's entry gone and the others kept", s.Entries)
	}
}
