package venv

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runHost runs c on this host in its own process group, so that a
// cancelled install kills pip and everything pip started.
func runHost(ctx context.Context, c Cmd) error {
	cmd := exec.CommandContext(ctx, c.Args[0], c.Args[1:]...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = c.Stdout, c.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	return cmd.Run()
}

func lookPath(name string) (string, error) { return exec.LookPath(name) }

// inUse lists the processes whose executable or command line lies under
// dir. An engine's interpreter is started as DIR/bin/python (the console
// script's first line names it), so this finds vLLM and its workers. A
// process that exec'd something outside dir is not seen.
func inUse(dir string) []int {
	dir = filepath.Clean(dir) + "/"
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if exe, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && strings.HasPrefix(exe, dir) {
			pids = append(pids, pid)
			continue
		}
		cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range bytes.Split(cl, []byte{0}) {
			if strings.HasPrefix(string(arg), dir) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}
