package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ExitError is returned by Systemctl (and wraps nothing) when the command ran
// and exited non-zero.
type ExitError struct {
	Args   []string
	Code   int
	Stderr string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: exit status %d: %s", strings.Join(e.Args, " "), e.Code, strings.TrimSpace(e.Stderr))
}

// Command returns a command that runs name inside the sandbox's mount and
// PID namespaces (nsenter -t PID -m -p), with the sandbox's environment
// (see Env, SetEnv): PATH starts with BinDir. The caller may change Env,
// Stdin, Stdout and Stderr before starting it; its working directory inside
// is "/". Cancelling ctx kills the whole process group.
func (s *Sandbox) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"-t", strconv.Itoa(s.pid), "-m", "-p", "--", name}, args...)
	cmd := exec.CommandContext(ctx, s.nsenter, argv...)
	cmd.Env = s.Env()
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Exec runs name inside the sandbox and returns its output and exit code.
// err is non-nil only when the command could not run to an exit status:
// nsenter missing, the sandbox gone, ctx done, or death by a signal. A
// non-zero exit is reported in exitCode, not in err.
func (s *Sandbox) Exec(ctx context.Context, name string, args ...string) (stdout, stderr string, exitCode int, err error) {
	return s.ExecEnv(ctx, nil, name, args...)
}

// ExecEnv is Exec with extra environment variables ("KEY=value") that
// override the sandbox's.
func (s *Sandbox) ExecEnv(ctx context.Context, env []string, name string, args ...string) (stdout, stderr string, exitCode int, err error) {
	cmd := s.Command(ctx, name, args...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	stdout, stderr = out.String(), errb.String()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout, stderr, 0, nil
	case ctx.Err() != nil:
		return stdout, stderr, -1, fmt.Errorf("run %s in sandbox: %w", name, ctx.Err())
	case errors.As(err, &ee) && ee.Exited():
		return stdout, stderr, ee.ExitCode(), nil
	default:
		return stdout, stderr, -1, fmt.Errorf("run %s in sandbox: %w (stderr: %s)", name, err, strings.TrimSpace(stderr))
	}
}

// Systemctl runs systemctl inside the sandbox and returns its stdout. A
// non-zero exit is an *ExitError carrying the code and stderr (is-active
// and friends report through the code).
func (s *Sandbox) Systemctl(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"--no-pager"}, args...)
	out, errOut, code, err := s.Exec(ctx, "systemctl", args...)
	if err != nil {
		return out, err
	}
	if code != 0 {
		return out, &ExitError{Args: append([]string{"systemctl"}, args...), Code: code, Stderr: errOut}
	}
	return out, nil
}

// Journal returns unit's journal as its bare messages (journalctl -u UNIT
// -o cat), followed by extra arguments for journalctl (e.g. "-n", "20", or
// "-o", "json", which replaces -o cat). Failures are returned as text, so
// that a test can print the result whatever happened.
func (s *Sandbox) Journal(ctx context.Context, unit string, extra ...string) string {
	args := append([]string{"--no-pager", "-q", "-o", "cat", "-u", unit}, extra...)
	out, errOut, code, err := s.Exec(ctx, "journalctl", args...)
	if err != nil {
		return out + fmt.Sprintf("\n[journalctl: %v]", err)
	}
	if code != 0 {
		return out + fmt.Sprintf("\n[journalctl: exit %d: %s]", code, strings.TrimSpace(errOut))
	}
	return out
}
