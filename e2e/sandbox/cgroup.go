package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A sandbox's systemd takes the cgroup it starts in as its root and creates
// init.scope, system.slice and the rest below it. Each sandbox therefore gets
// a fresh cgroup of its own in every hierarchy, below the test's: two
// sandboxes started by one test binary would otherwise share (and kill each
// other's) units, and teardown can remove exactly what the sandbox made.

type cgroupMount struct {
	point, root string
	v2          bool
	opts        []string // super options: controllers, name=...
}

func cgroupMounts() ([]cgroupMount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root point opts [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 || (b[0] != "cgroup" && b[0] != "cgroup2") {
			continue
		}
		ms = append(ms, cgroupMount{point: unescapeMount(a[4]), root: unescapeMount(a[3]), v2: b[0] == "cgroup2", opts: strings.Split(b[2], ",")})
	}
	return ms, sc.Err()
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDirs returns, for each hierarchy pid belongs to and that is mounted,
// the directory of pid's cgroup, and whether it is the one systemd tracks
// processes with (name=systemd on v1/hybrid, else the unified hierarchy).
func cgroupDirs(pid int) (dirs []string, essential []bool, err error) {
	ms, err := cgroupMounts()
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, nil, err
	}
	hasNamed := strings.Contains(string(b), ":name=systemd:")
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		var m *cgroupMount
		for i := range ms {
			if parts[0] == "0" && ctrls == "" {
				if ms[i].v2 {
					m = &ms[i]
					break
				}
				continue
			}
			if ms[i].v2 {
				continue
			}
			all := true
			for _, c := range strings.Split(ctrls, ",") {
				if !slices.Contains(ms[i].opts, c) {
					all = false
				}
			}
			if all {
				m = &ms[i]
				break
			}
		}
		if m == nil {
			continue
		}
		rel := path
		if m.root != "/" {
			if rel != m.root && !strings.HasPrefix(rel, m.root+"/") {
				continue
			}
			rel = strings.TrimPrefix(rel, m.root)
		}
		dirs = append(dirs, filepath.Join(m.point, rel))
		essential = append(essential, ctrls == "name=systemd" || (!hasNamed && ctrls == ""))
	}
	return dirs, essential, nil
}

// joinCgroups creates name below pid's cgroup in every hierarchy and moves
// pid there. It returns the cgroups created, also on error, for removal.
func joinCgroups(pid int, name string, logf func(string, ...any)) ([]string, error) {
	dirs, essential, err := cgroupDirs(pid)
	if err != nil {
		return nil, fmt.Errorf("sandbox cgroups: %w", err)
	}
	var made []string
	joinedEssential := false
	for i, parent := range dirs {
		d := filepath.Join(parent, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			if essential[i] {
				return made, fmt.Errorf("sandbox cgroup: %w", err)
			}
			logf("sandbox: no own cgroup in %s: %v", parent, err)
			continue
		}
		made = append(made, d)
		// A fresh v1 cpuset has no CPUs or memory nodes: inherit the parent's.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if cur, err := os.ReadFile(filepath.Join(d, f)); err == nil && strings.TrimSpace(string(cur)) == "" {
					_ = os.WriteFile(filepath.Join(d, f), v, 0o644)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			if essential[i] {
				return made, fmt.Errorf("sandbox cgroup: join %s: %w", d, err)
			}
			logf("sandbox: cannot join %s: %v", d, err)
			continue
		}
		if essential[i] {
			joinedEssential = true
		}
	}
	if !joinedEssential {
		return made, fmt.Errorf("sandbox cgroup: found no systemd or unified cgroup hierarchy for PID %d", pid)
	}
	return made, nil
}

// removeCgroups removes each cgroup and everything below it, deepest first,
// retrying while the kernel still counts exiting processes in them.
func removeCgroups(roots []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var errs []error
	for _, root := range roots {
		if !strings.HasPrefix(filepath.Base(root), "vagent-e2e-") {
			errs = append(errs, fmt.Errorf("refusing to remove cgroup %s: not a sandbox's", root))
			continue
		}
		for {
			err := removeTree(root)
			if err == nil || errors.Is(err, fs.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", root, err))
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

func removeTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(dirs) == 0 {
		return fs.ErrNotExist
	}
	var first error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) && first == nil {
			first = err
		}
	}
	return first
}
