package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/ledger"
)

func simConfig(t *testing.T) config.GPU {
	return config.GPU{
		Backend:     config.GPUBackendSim,
		SimLedger:   filepath.Join(t.TempDir(), "run", "sim-ledger.json"),
		SimCount:    2,
		SimTotalMiB: 16376,
	}
}

// deadPID returns the PID of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run true: %v", err)
	}
	return cmd.Process.Pid
}

func TestSimInfoAndProcesses(t *testing.T) {
	cfg := simConfig(t)
	ns := ledger.SelfNS()
	self, parent, dead := os.Getpid(), os.Getppid(), deadPID(t)
	l := ledger.Open(cfg.SimLedger, cfg.SimCount, cfg.SimTotalMiB<<20)
	err := l.Update(func(s *ledger.State) error {
		s.Entries = append(s.Entries,
			ledger.Entry{PID: self, PIDNS: ns, GPU: 0, Bytes: 10 * gib, Unit: "vagent@dev.service", State: ledger.StateLoaded, Since: time.Now()},
			// No unit recorded: found through /proc.
			ledger.Entry{PID: parent, PIDNS: ns, GPU: 0, Bytes: 2 * gib, State: ledger.StateLoading, Since: time.Now()},
			// A simulator in another PID namespace: its PID means nothing here.
			ledger.Entry{PID: 1, PIDNS: "pid:[4026599999]", GPU: 1, Bytes: 3 * gib, State: ledger.StateLoaded, Since: time.Now()},
		)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A crashed simulator: written after the update above so that the
	// ledger's own pruning has not dropped it yet.
	raw, err := os.ReadFile(cfg.SimLedger)
	if err != nil {
		t.Fatal(err)
	}
	var st ledger.State
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	st.Entries = append(st.Entries, ledger.Entry{PID: dead, PIDNS: ns, GPU: 1, Bytes: 5 * gib, Unit: "vagent@po.service", State: ledger.StateLoaded})
	withDead, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.SimLedger, withDead, 0o644); err != nil {
		t.Fatal(err)
	}

	b, err := Open(&config.Config{GPU: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sim := b.(*Sim)
	sim.procRoot = fakeProcRoot(t, map[int]string{
		parent: "0::/system.slice/system-vagent.slice/vagent@architect.service\n",
		1:      "0::/system.slice/system-vagent.slice/vagent@wrong.service\n",
	})

	info, err := b.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(16376) * mib
	want := []Device{
		{Index: 0, UUID: "GPU-sim-0", Name: "vagent simulated GPU", TotalBytes: total, UsedBytes: 12 * gib, FreeBytes: total - 12*gib, ComputeMajor: 8, ComputeMinor: 9},
		{Index: 1, UUID: "GPU-sim-1", Name: "vagent simulated GPU", TotalBytes: total, UsedBytes: 3 * gib, FreeBytes: total - 3*gib, ComputeMajor: 8, ComputeMinor: 9},
	}
	if info.Backend != "sim" || len(info.Devices) != 2 {
		t.Fatalf("info = %+v", info)
	}
	for i := range want {
		if info.Devices[i] != want[i] {
			t.Errorf("device %d =\n%+v\nwant\n%+v", i, info.Devices[i], want[i])
		}
	}
	if err := CheckComputeCapability(info.Devices[0], true); err != nil {
		t.Errorf("simulated GPU refused for AWQ: %v", err)
	}

	ps, err := b.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantPS := []Process{
		{PID: parent, GPU: 0, UsedBytes: 2 * gib, Unit: "vagent@architect.service", Agent: "architect"},
		{PID: self, GPU: 0, UsedBytes: 10 * gib, Unit: "vagent@dev.service", Agent: "dev"},
		{PID: 1, GPU: 1, UsedBytes: 3 * gib},
	}
	if parent > self {
		wantPS[0], wantPS[1] = wantPS[1], wantPS[0]
	}
	if len(ps) != len(wantPS) {
		t.Fatalf("processes = %+v, want %+v", ps, wantPS)
	}
	for i := range wantPS {
		if ps[i] != wantPS[i] {
			t.Errorf("process %d = %+v, want %+v", i, ps[i], wantPS[i])
		}
	}

	// The dead simulator's memory is released in the file too, as the
	// driver frees a dead process's memory.
	after, err := l.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range after.Entries {
		if e.PID == dead {
			t.Errorf("dead PID %d still in the ledger", dead)
		}
	}
}

func TestSimOvercommittedLedger(t *testing.T) {
	cfg := simConfig(t)
	cfg.SimCount = 1
	l := ledger.Open(cfg.SimLedger, 1, cfg.SimTotalMiB<<20)
	l.Update(func(s *ledger.State) error {
		s.Entries = append(s.Entries, ledger.Entry{PID: os.Getpid(), PIDNS: ledger.SelfNS(), GPU: 0, Bytes: 20 * gib, State: ledger.StateLoaded})
		return nil
	})
	info, err := NewSim(cfg).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d := info.Devices[0]
	if d.FreeBytes != 0 || d.UsedBytes != d.TotalBytes {
		t.Errorf("over-committed: used %d free %d total %d", d.UsedBytes, d.FreeBytes, d.TotalBytes)
	}
}

func TestSimEmptyLedger(t *testing.T) {
	cfg := simConfig(t)
	info, err := NewSim(cfg).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Devices) != 2 || info.Devices[1].FreeBytes != 16376*mib || info.Devices[1].UsedBytes != 0 {
		t.Errorf("empty ledger: %+v", info.Devices)
	}
}

func TestSimBrokenLedger(t *testing.T) {
	cfg := simConfig(t)
	os.MkdirAll(filepath.Dir(cfg.SimLedger), 0o755)
	os.WriteFile(cfg.SimLedger, []byte("{not json"), 0o644)
	_, err := NewSim(cfg).Info(context.Background())
	if err == nil || !strings.Contains(err.Error(), "gpu: simulator ledger "+cfg.SimLedger) {
		t.Errorf("err = %v", err)
	}
}

// refusingLedger is a ledger this process may not write, nor lock.
type refusingLedger struct {
	path           string
	readErr        error
	readState      *ledger.State
	updates, reads int
}

func (r *refusingLedger) Update(func(*ledger.State) error) error {
	r.updates++
	return fmt.Errorf("ledger lock: %w", &fs.PathError{Op: "open", Path: r.path + ".lock", Err: syscall.EACCES})
}
func (r *refusingLedger) Read() (*ledger.State, error) { r.reads++; return r.readState, r.readErr }
func (r *refusingLedger) Path() string                 { return r.path }

func TestSimReadOnlyFallbacks(t *testing.T) {
	cfg := simConfig(t)
	cfg.SimCount = 1
	os.MkdirAll(filepath.Dir(cfg.SimLedger), 0o755)
	content := fmt.Sprintf(`{"gpus":1,"total_bytes":1,"entries":[{"pid":99,"pidns":"x","gpu":0,"bytes":%d,"unit":"vagent@dev.service","state":"loaded"}]}`, uint64(6*gib))
	os.WriteFile(cfg.SimLedger, []byte(content), 0o644)

	// Not writable but lockable: the shared-lock read.
	s := NewSim(cfg)
	rl := &refusingLedger{path: cfg.SimLedger, readState: &ledger.State{Entries: []ledger.Entry{{PID: 7, GPU: 0, Bytes: gib}}}}
	s.ledger = rl
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rl.updates != 1 || rl.reads != 1 || info.Devices[0].UsedBytes != gib {
		t.Errorf("updates %d reads %d used %d", rl.updates, rl.reads, info.Devices[0].UsedBytes)
	}

	// Not even lockable (an ordinary user, lock file owned by root): the
	// file as it is, with the configured totals.
	rl = &refusingLedger{path: cfg.SimLedger, readErr: fmt.Errorf("ledger lock: %w", syscall.EACCES)}
	s.ledger = rl
	info, err = s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d := info.Devices[0]
	if d.UsedBytes != 6*gib || d.TotalBytes != 16376*mib || d.FreeBytes != 16376*mib-6*gib {
		t.Errorf("unlocked read: %+v", d)
	}
	ps, err := s.Processes(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Agent != "dev" || ps[0].PID != 99 {
		t.Errorf("unlocked processes: %+v, %v", ps, err)
	}

	// A read error that is not a refusal is reported, not papered over.
	rl = &refusingLedger{path: cfg.SimLedger, readErr: errors.New("parse ledger: boom")}
	s.ledger = rl
	if _, err := s.Info(context.Background()); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("broken read: %v", err)
	}
}

func TestReadOnly(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("ledger dir: %w", &fs.PathError{Op: "mkdir", Path: "/run/vagent", Err: syscall.EACCES}), true},
		{fmt.Errorf("write ledger: %w", &fs.PathError{Op: "open", Path: "/run/x", Err: syscall.EROFS}), true},
		{fmt.Errorf("ledger lock: %w", syscall.EPERM), true},
		{errors.New("parse ledger: unexpected end"), false},
		{fmt.Errorf("read ledger: %w", syscall.EIO), false},
	} {
		if got := readOnly(c.err); got != c.want {
			t.Errorf("readOnly(%v) = %v", c.err, got)
		}
	}
}

// fullLedger is a ledger on a full file system: writes fail with ENOSPC,
// reads work.
type fullLedger struct {
	path  string
	state *ledger.State
}

func (f *fullLedger) Update(func(*ledger.State) error) error {
	return fmt.Errorf("write ledger: %w", &fs.PathError{Op: "open", Path: f.path, Err: syscall.ENOSPC})
}
func (f *fullLedger) Read() (*ledger.State, error) {
	cp := *f.state
	cp.Entries = append([]ledger.Entry(nil), f.state.Entries...)
	return &cp, nil
}
func (f *fullLedger) Path() string { return f.path }

// gpu and status keep working on a full run directory, and a dead engine's
// entry, which nobody can prune from the file, does not count.
func TestSimReadsFullLedger(t *testing.T) {
	cfg := simConfig(t)
	cfg.SimCount = 1
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	p.Wait()
	s := NewSim(cfg)
	s.ledger = &fullLedger{path: cfg.SimLedger, state: &ledger.State{Entries: []ledger.Entry{
		{PID: p.Pid, PIDNS: ledger.SelfNS(), GPU: 0, Bytes: 6 * gib, Unit: "vagent@dev.service"},
		{PID: os.Getpid(), PIDNS: ledger.SelfNS(), GPU: 0, Bytes: gib, Unit: "vagent@po.service"},
	}}}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatalf("Info on a full run directory: %v", err)
	}
	if info.Devices[0].UsedBytes != gib {
		t.Errorf("used %d, want only the live engine's %d", info.Devices[0].UsedBytes, gib)
	}
	ps, err := s.Processes(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Agent != "po" {
		t.Errorf("processes on a full run directory: %+v, %v", ps, err)
	}
}
