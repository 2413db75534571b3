// Package sandbox boots a throwaway systemd for end-to-end tests.
//
// Boot starts a real systemd as PID 1 of a new PID and mount namespace
// (root needed), with a private unit directory, a private /run (and so a
// private system bus and journal), private /tmp, /var/tmp, /var/log and
// /var/lib/systemd, its own machine id, and a pseudo-terminal as its console.
// Units that would touch the host's kernel, devices, clock or disks are
// masked (DefaultMasked). The sandbox sees the rest of the host's file
// system, with /etc and /sys read-only, and shares the host's network: tests
// must pick their own ports (FreePort). Tests drive it over D-Bus
// (BusAddress, DialBus, Systemd) or run commands inside it (Command, Exec,
// Systemctl, Journal); Close kills every process in it and removes its
// directory and cgroups.
//
// Everything a sandbox owns lives under one directory, Dir(), which is
// visible at the same path inside and outside the sandbox:
//
//	units/        bound over /etc/systemd/system (unit files and drop-ins)
//	run/          bound over /run; the bus socket is run/dbus/system_bus_socket
//	bin/          binaries built by Build, first in PATH inside
//	etc/vagent/   configuration installed by InstallConfig
//	var/lib/vagent, var/cache/vagent, run/vagent: vagent's state, cache, runtime
//	console.log   what systemd printed on its console
//
// Because /etc is read-only inside, nothing run in a sandbox can add users
// or write the host's configuration: vagent must be configured (InstallConfig
// does it) to keep its files under Dir().
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultBaseDir is where sandboxes are created when neither Options.BaseDir
// nor $VAGENT_E2E_DIR says otherwise. It must not be under a directory that
// the sandbox replaces (/tmp, /var/tmp, /run, /var/log), because the sandbox
// must see its own files at the same paths as the test.
const DefaultBaseDir = "/var/lib/vagent-e2e"

// EnvBaseDir names the environment variable that overrides DefaultBaseDir.
const EnvBaseDir = "VAGENT_E2E_DIR"

// ErrUnsupported is wrapped by Boot's error when this host cannot run a
// sandbox at all (not root, no systemd, no nsenter), as opposed to a sandbox
// that was tried and failed. New uses it to decide between skip and fail.
var ErrUnsupported = errors.New("sandbox unsupported on this host")

// DefaultMasked lists the units masked in every sandbox: those that would
// touch the host's kernel, clock, devices, consoles or persistent files.
var DefaultMasked = []string{
	"systemd-sysctl.service",
	"systemd-sysusers.service",
	"systemd-modules-load.service",
	"systemd-binfmt.service",
	"proc-sys-fs-binfmt_misc.automount",
	"systemd-remount-fs.service",
	"console-getty.service",
	"container-getty@.service",
	"getty@.service",
	"serial-getty@.service",
	"getty-static.service",
	"systemd-udevd.service",
	"systemd-udev-trigger.service",
	"systemd-udev-settle.service",
	"systemd-udevd-control.socket",
	"systemd-udevd-kernel.socket",
	"systemd-random-seed.service",
	"systemd-update-utmp.service",
	"systemd-update-utmp-runlevel.service",
	"systemd-tmpfiles-clean.timer",
	"systemd-timesyncd.service",
	"systemd-networkd.service",
	"systemd-networkd.socket",
	"systemd-resolved.service",
	"systemd-journald-audit.socket",
	"systemd-ask-password-console.path",
	"systemd-ask-password-wall.path",
	"systemd-firstboot.service",
	"systemd-machine-id-commit.service",
	"systemd-update-done.service",
	"ldconfig.service",
	"modprobe@.service",
	"kmod-static-nodes.service",
	"sys-kernel-config.mount",
	"sys-kernel-debug.mount",
	"sys-kernel-tracing.mount",
	"sys-fs-fuse-connections.mount",
	"systemd-pcrphase.service",
	"systemd-pcrphase-sysinit.service",
	"systemd-pcrphase-initrd.service",
	"systemd-pcrmachine.service",
	"systemd-pcrfs-root.service",
	"systemd-pcrfs@.service",
	"systemd-repart.service",
	"systemd-sysext.service",
	"systemd-boot-update.service",
	"systemd-fsck-root.service",
	"systemd-fsck@.service",
	"systemd-growfs-root.service",
	"systemd-growfs@.service",
	"systemd-hwdb-update.service",
	"systemd-quotacheck.service",
}

// Options tunes Boot. The zero value is ready to use.
type Options struct {
	// BaseDir is the directory under which the sandbox's own directory is
	// created. Empty means $VAGENT_E2E_DIR, else DefaultBaseDir.
	BaseDir string
	// BootTimeout bounds the wait for systemd to reach "running" or
	// "degraded". Zero means 90 seconds.
	BootTimeout time.Duration
	// Mask lists units to mask in addition to DefaultMasked.
	Mask []string
	// Env is added to the environment of every command run inside.
	Env []string
	// Logf receives progress and diagnostics (t.Logf in tests). Nil: silent.
	Logf func(format string, args ...any)
}

// Sandbox is one running systemd in its own namespaces. Its methods are safe
// for concurrent use.
type Sandbox struct {
	dir     string
	nsenter string
	logf    func(string, ...any)

	cmd     *exec.Cmd
	pid     int    // host PID of the sandbox's PID 1
	pidNS   string // readlink of /proc/PID/ns/pid, e.g. "pid:[4026532712]"
	done    chan struct{}
	waitErr error // valid once done is closed
	console *console
	cgroups []string

	mu  sync.Mutex
	env []string

	closeOnce sync.Once
	closeErr  error
}

// owner is written to DIR/owner so that a later run can clean up after a
// test binary that died without calling Close.
type owner struct {
	PID       int      `json:"pid"`
	StartTime string   `json:"start_time"`
	InitPID   int      `json:"init_pid,omitempty"`
	InitNS    string   `json:"init_ns,omitempty"`
	Cgroups   []string `json:"cgroups,omitempty"`
}

// bootScript runs as PID 1 of the new namespaces. It waits on fd 3 until the
// parent has moved it into its own cgroups, makes every mount private, lays
// the sandbox's directories over the host's, and execs systemd.
const bootScript = `set -eu
read -r go <&3 || { echo "sandbox: parent went away before boot" >&2; exit 1; }
exec 3<&-
mount --make-rprivate /
mount -t proc proc /proc
mount --rbind /sys /sys
mount -o remount,bind,ro /sys
mount --bind /etc /etc
mount -o remount,bind,ro /etc
mount --bind "$S/units" /etc/systemd/system
mount --bind "$S/machine-id" /etc/machine-id
mount --bind "$S/run" /run
mount --bind "$SANDBOX_CONSOLE" /dev/console
if [ -e /dev/kmsg ]; then mount --bind /dev/null /dev/kmsg; fi
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=0755 tmpfs /var/log
if [ -d /var/lib/systemd ]; then mount --bind "$S/state/systemd" /var/lib/systemd; fi
exec env -i container=vagent-test TERM=dumb SYSTEMD_COLORS=0 LANG=C.UTF-8 "$SYSTEMD" --unit=multi-user.target
`

// shadowed lists host directories that a sandbox lays its own over. A
// sandbox directory below one of them would be invisible inside.
var shadowed = []string{"/tmp", "/var/tmp", "/var/log", "/run", "/etc", "/proc", "/sys", "/dev", "/var/lib/systemd"}

// Boot creates a sandbox directory, boots systemd in new namespaces and waits
// until it answers over D-Bus as "running" or "degraded". ctx bounds the boot
// only; the sandbox lives until Close (or until this process dies: the
// kernel then kills it). On failure nothing is left behind and the error
// includes the tail of systemd's console and journal. Boot first removes
// what test binaries that died without Close left under the base directory.
func Boot(ctx context.Context, opts Options) (*Sandbox, error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	tools, err := checkHost()
	if err != nil {
		return nil, err
	}
	base := opts.BaseDir
	if base == "" {
		base = os.Getenv(EnvBaseDir)
	}
	if base == "" {
		base = DefaultBaseDir
	}
	if base, err = checkBaseDir(base); err != nil {
		return nil, err
	}
	sweepStale(base, logf)

	dir, err := os.MkdirTemp(base, "sb-")
	if err != nil {
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	s := &Sandbox{
		dir:     dir,
		nsenter: tools.nsenter,
		logf:    logf,
		done:    make(chan struct{}),
		env:     defaultEnv(dir, opts.Env),
	}
	if err := s.writeOwner(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.layout(opts.Mask); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.start(tools.systemd); err != nil {
		s.Close()
		return nil, err
	}
	timeout := opts.BootTimeout
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	state, err := s.waitRunning(ctx, timeout)
	if err != nil {
		err = fmt.Errorf("boot sandbox systemd: %w\n--- console (last lines) ---\n%s%s", err, s.ConsoleTail(60), s.journalTail(60))
		s.Close()
		return nil, err
	}
	if state == "degraded" {
		failed, _ := s.Systemctl(ctx, "list-units", "--failed", "--no-legend", "--plain")
		logf("sandbox %s booted degraded; failed units:\n%s", dir, failed)
	}
	return s, nil
}

type hostTools struct{ nsenter, systemd string }

// checkHost reports, wrapping ErrUnsupported, why this host cannot run a
// sandbox at all.
func checkHost() (hostTools, error) {
	var t hostTools
	if os.Geteuid() != 0 {
		return t, fmt.Errorf("%w: needs root (euid %d)", ErrUnsupported, os.Geteuid())
	}
	var missing []string
	for _, name := range []string{"mount", "env"} {
		if _, err := exec.LookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	p, err := exec.LookPath("nsenter")
	if err != nil {
		missing = append(missing, "nsenter (util-linux)")
	}
	t.nsenter = p
	for _, c := range []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"} {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			t.systemd = c
			break
		}
	}
	if t.systemd == "" {
		missing = append(missing, "/lib/systemd/systemd (systemd)")
	}
	haveBus := false
	for _, c := range []string{"dbus-daemon", "dbus-broker"} {
		if _, err := exec.LookPath(c); err == nil {
			haveBus = true
		}
	}
	if !haveBus {
		missing = append(missing, "dbus-daemon (dbus)")
	}
	if len(missing) > 0 {
		return t, fmt.Errorf("%w: missing %s", ErrUnsupported, strings.Join(missing, ", "))
	}
	if id, err := os.ReadFile("/etc/machine-id"); err != nil || len(strings.TrimSpace(string(id))) != 32 {
		return t, fmt.Errorf("%w: /etc/machine-id is missing or empty (run systemd-machine-id-setup)", ErrUnsupported)
	}
	return t, nil
}

// checkBaseDir refuses a base the sandbox would hide from itself, then
// creates it.
func checkBaseDir(base string) (string, error) {
	abs, err := filepath.Abs(base)
	if err != nil {
		return "", fmt.Errorf("sandbox base dir %s: %w", base, err)
	}
	// Resolve links in the part that exists, so that a link into /tmp is
	// caught before anything is created.
	existing, rest := abs, ""
	for {
		if _, err := os.Lstat(existing); err == nil {
			break
		}
		rest = filepath.Join(filepath.Base(existing), rest)
		existing = filepath.Dir(existing)
	}
	real, err := filepath.EvalSymlinks(existing)
	if err != nil {
		return "", fmt.Errorf("sandbox base dir: %w", err)
	}
	real = filepath.Join(real, rest)
	for _, p := range shadowed {
		if real == p || strings.HasPrefix(real, p+"/") {
			return "", fmt.Errorf("sandbox base dir %s is under %s, which the sandbox replaces; set %s to another directory", real, p, EnvBaseDir)
		}
	}
	if err := os.MkdirAll(real, 0o755); err != nil {
		return "", fmt.Errorf("sandbox base dir: %w", err)
	}
	return real, nil
}

func defaultEnv(dir string, extra []string) []string {
	env := []string{
		"PATH=" + filepath.Join(dir, "bin") + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"LANG=C.UTF-8",
		"TERM=dumb",
		"SYSTEMD_PAGER=",
		"SYSTEMD_COLORS=0",
		"SYSTEMD_LESS=",
	}
	return append(env, extra...)
}

// layout creates the sandbox's directories, its machine id and the masks.
func (s *Sandbox) layout(extraMask []string) error {
	for _, d := range []string{"units", "run", "bin", "state/systemd", "etc/vagent/agents", "var/lib/vagent", "var/cache/vagent", "run/vagent"} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return fmt.Errorf("sandbox layout: %w", err)
		}
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return fmt.Errorf("sandbox machine id: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "machine-id"), []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
		return fmt.Errorf("sandbox machine id: %w", err)
	}
	for _, u := range append(append([]string{}, DefaultMasked...), extraMask...) {
		if err := os.Symlink("/dev/null", filepath.Join(s.dir, "units", u)); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("mask %s: %w", u, err)
		}
	}
	return nil
}

// start launches PID 1 and hands it its cgroups.
func (s *Sandbox) start(systemd string) error {
	con, slave, err := openConsole(filepath.Join(s.dir, "console.log"))
	if err != nil {
		return err
	}
	s.console = con

	gor, gow, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("sandbox pipe: %w", err)
	}
	defer gor.Close()
	defer gow.Close()

	cmd := exec.Command("/bin/sh", "-c", bootScript)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"S=" + s.dir,
		"SYSTEMD=" + systemd,
		"SANDBOX_CONSOLE=" + slave.Name(),
	}
	cmd.Dir = "/"
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.ExtraFiles = []*os.File{gor}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS,
		Setsid:     true,
		// If the test binary dies without Close, the sandbox dies with it.
		Pdeathsig: syscall.SIGKILL,
	}
	// Pdeathsig fires when the starting OS thread exits, not the process:
	// start and wait on one locked thread that lives as long as PID 1.
	started := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start sandbox (clone new pid and mount namespaces): %w", err)
	}
	s.cmd = cmd
	s.pid = cmd.Process.Pid
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", s.pid)); err == nil {
		s.pidNS = ns
	}

	cgs, err := joinCgroups(s.pid, "vagent-e2e-"+filepath.Base(s.dir), s.logf)
	s.cgroups = cgs
	if werr := s.writeOwner(); werr != nil && err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	if _, err := gow.Write([]byte("go\n")); err != nil {
		return fmt.Errorf("release sandbox init: %w", err)
	}
	return nil
}

// waitRunning polls systemd's SystemState over the sandbox's bus.
func (s *Sandbox) waitRunning(ctx context.Context, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sock := filepath.Join(s.dir, "run/dbus/system_bus_socket")
	last := "no bus socket yet"
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.done:
			return "", fmt.Errorf("systemd exited during boot: %v", s.waitErr)
		case <-ctx.Done():
			return "", fmt.Errorf("not running after %s (last: %s): %w", timeout, last, ctx.Err())
		case <-tick.C:
		}
		if _, err := os.Stat(sock); err != nil {
			continue
		}
		state, err := s.systemState(ctx)
		if err != nil {
			last = err.Error()
			continue
		}
		last = "SystemState=" + state
		switch state {
		case "running", "degraded":
			return state, nil
		case "maintenance", "stopping", "offline":
			return "", fmt.Errorf("systemd is %s", state)
		}
	}
}

// journalTail returns the last n lines of the boot's journal, headed, or ""
// if it cannot be read (systemd gone, no journald).
func (s *Sandbox) journalTail(n int) string {
	select {
	case <-s.done:
		return ""
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, _, code, err := s.Exec(ctx, "journalctl", "--no-pager", "-q", "-b", "-n", strconv.Itoa(n))
	if err != nil || code != 0 || strings.TrimSpace(out) == "" {
		return ""
	}
	return "\n--- journal (last lines) ---\n" + out
}

// Dir is the sandbox's directory, the same path inside and outside.
func (s *Sandbox) Dir() string { return s.dir }

// Path joins elem to Dir.
func (s *Sandbox) Path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

// UnitDir is the host path of the sandbox's /etc/systemd/system.
func (s *Sandbox) UnitDir() string { return filepath.Join(s.dir, "units") }

// BinDir is where Build puts binaries; it is first in PATH inside.
func (s *Sandbox) BinDir() string { return filepath.Join(s.dir, "bin") }

// BusAddress is the D-Bus address of the sandbox's system bus, usable from
// outside, e.g. as DBUS_SYSTEM_BUS_ADDRESS.
func (s *Sandbox) BusAddress() string {
	return "unix:path=" + filepath.Join(s.dir, "run/dbus/system_bus_socket")
}

// PID is the host PID of the sandbox's PID 1.
func (s *Sandbox) PID() int { return s.pid }

// PIDNamespace is the sandbox's PID namespace as /proc/PID/ns/pid names it,
// e.g. "pid:[4026532712]". Every process of the sandbox has this link.
func (s *Sandbox) PIDNamespace() string { return s.pidNS }

// SetEnv adds or replaces variables ("KEY=value") in the environment of
// commands run inside from now on.
func (s *Sandbox) SetEnv(kv ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range kv {
		k, _, _ := strings.Cut(e, "=")
		replaced := false
		for i, old := range s.env {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				s.env[i], replaced = e, true
			}
		}
		if !replaced {
			s.env = append(s.env, e)
		}
	}
}

// Env returns a copy of the environment given to commands run inside.
func (s *Sandbox) Env() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.env...)
}

// ConsoleTail returns up to n last lines that systemd printed on its console.
func (s *Sandbox) ConsoleTail(n int) string {
	if s.console == nil {
		return ""
	}
	return s.console.tail(n)
}

// Close kills every process in the sandbox (SIGKILL to its PID 1; SIGTERM
// would make systemd re-execute), waits for them, removes the sandbox's
// cgroups and directory. It tolerates a partial boot and is idempotent.
func (s *Sandbox) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Sandbox) close() error {
	var errs []error
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			errs = append(errs, fmt.Errorf("sandbox PID 1 (%d) did not exit after SIGKILL", s.pid))
		}
		if s.pidNS != "" {
			if left := waitNamespaceEmpty(s.pidNS, 10*time.Second); len(left) > 0 {
				errs = append(errs, fmt.Errorf("processes left in sandbox namespace %s: %v", s.pidNS, left))
			}
		}
	}
	if s.console != nil {
		s.console.close()
	}
	if err := removeCgroups(s.cgroups, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if s.dir != "" {
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox dir: %w", err))
		}
		_ = os.Remove(filepath.Dir(s.dir)) // the base dir, if now empty
	}
	return errors.Join(errs...)
}

// ProcessesIn lists host PIDs whose PID namespace is ns.
func ProcessesIn(ns string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink("/proc/" + e.Name() + "/ns/pid"); err == nil && l == ns {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitNamespaceEmpty(ns string, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		left := ProcessesIn(ns)
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Sandbox) writeOwner() error {
	o := owner{PID: os.Getpid(), StartTime: procStartTime(os.Getpid()), InitPID: s.pid, InitNS: s.pidNS, Cgroups: s.cgroups}
	return writeOwnerFile(filepath.Join(s.dir, "owner"), o)
}

func writeOwnerFile(path string, o owner) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".new", b, 0o644); err != nil {
		return fmt.Errorf("write sandbox owner: %w", err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		return fmt.Errorf("write sandbox owner: %w", err)
	}
	return nil
}

// procStartTime is field 22 of /proc/PID/stat, which with the PID names a
// process uniquely across PID reuse.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func alive(pid int, start string) bool {
	return pid > 0 && start != "" && procStartTime(pid) == start
}

// sweepStale removes what test binaries that died without Close left under
// base: sandboxes (killing their PID 1 if it survived), their cgroups, and
// build caches.
func sweepStale(base string, logf func(string, ...any)) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(base, e.Name())
		var o owner
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err != nil || json.Unmarshal(b, &o) != nil {
			// No owner yet: a sandbox being created right now, or a crash
			// between mkdir and the first write. Only the latter is old.
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		if alive(o.PID, o.StartTime) {
			continue
		}
		logf("sandbox: removing %s, left by process %d that is gone", dir, o.PID)
		if o.InitPID > 0 && o.InitNS != "" {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", o.InitPID)); err == nil && l == o.InitNS {
				_ = syscall.Kill(o.InitPID, syscall.SIGKILL)
				waitNamespaceEmpty(o.InitNS, 10*time.Second)
			}
		}
		_ = removeCgroups(o.Cgroups, 5*time.Second)
		_ = os.RemoveAll(dir)
	}
}
