package journal

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// The codes systemd records in a service's ExecMainCode (waitid's si_code).
const (
	ExitedCode = 1 // CLD_EXITED: ExecMainStatus is the exit status
	KilledCode = 2 // CLD_KILLED: ExecMainStatus is the signal
	DumpedCode = 3 // CLD_DUMPED: killed by the signal, with a core dump
)

// Exit is how systemd recorded the end of a unit's main process: the
// Service properties ExecMainCode, ExecMainStatus and Result. The zero
// value is "not known" (the process still runs, or nothing was asked).
type Exit struct {
	Code   int
	Status int
	Result string // success, exit-code, signal, core-dump, oom-kill, timeout, ...
}

// signalled reports whether a signal ended the process.
func (e Exit) signalled() bool { return e.Code == KilledCode || e.Code == DumpedCode }

// failed reports whether the process exited with a non-zero status.
func (e Exit) failed() bool { return e.Code == ExitedCode && e.Status != 0 }

// describe says how the engine ended during a start: "the engine was
// killed by SIGKILL during load".
func (e Exit) describe() string {
	switch {
	case e.signalled():
		name := unix.SignalName(syscall.Signal(e.Status))
		if name == "" {
			name = fmt.Sprintf("signal %d", e.Status)
		}
		s := "the engine was killed by " + name + " during load"
		switch {
		case e.Result == "oom-kill":
			s += " (the kernel's out-of-memory killer)"
		case e.Code == DumpedCode:
			s += " (core dumped)"
		}
		return s
	case e.failed():
		return fmt.Sprintf("the engine exited with status %d during load", e.Status)
	}
	return ""
}
