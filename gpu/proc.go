package gpu

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// defaultProcRoot is where the kernel's process table is mounted.
const defaultProcRoot = "/proc"

// UnitOfPID returns the vagent unit (vagent@NAME.service) that process pid
// runs in, and NAME, read from /proc/PID/cgroup; both are "" when the process
// is gone or is not in a vagent unit. The driver knows PIDs, not units: this
// is how a GPU process is tied back to its agent, and why an engine's worker
// processes count for the agent too (they share the unit's cgroup).
func UnitOfPID(pid int) (unit, agent string) {
	return unitOfPID(defaultProcRoot, pid)
}

func unitOfPID(procRoot string, pid int) (unit, agent string) {
	if pid <= 0 {
		return "", ""
	}
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", ""
	}
	return unitFromCgroup(data)
}

// unitFromCgroup finds the vagent unit in the contents of a /proc/PID/cgroup
// file. Each line is "ID:CONTROLLERS:PATH". On cgroup v2 there is one line,
// "0::PATH"; on v1 there is one line per controller hierarchy, and systemd's
// own is "N:name=systemd:PATH" (on a hybrid host beside a "0::PATH" line).
// systemd's lines are trusted first: other v1 controllers may not follow the
// unit tree.
func unitFromCgroup(data []byte) (unit, agent string) {
	var other []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" || parts[1] == "name=systemd" {
			if u, a := unitFromPath(parts[2]); u != "" {
				return u, a
			}
			continue
		}
		other = append(other, parts[2])
	}
	for _, p := range other {
		if u, a := unitFromPath(p); u != "" {
			return u, a
		}
	}
	return "", ""
}

// unitFromPath returns the first vagent@NAME.service component of a cgroup
// path. The first wins: a unit with delegated sub-cgroups has the unit above
// them, and the path may carry a container's prefix before it.
func unitFromPath(path string) (unit, agent string) {
	for _, c := range strings.Split(path, "/") {
		if a, ok := agentOfUnit(c); ok {
			return c, a
		}
	}
	return "", ""
}

// agentOfUnit returns NAME if unit is vagent@NAME.service.
func agentOfUnit(unit string) (string, bool) {
	name, ok := strings.CutPrefix(unit, "vagent@")
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, ".service")
	if !ok || name == "" {
		return "", false
	}
	return name, true
}
