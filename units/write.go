package units

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vagent-dev/vagent/internal/fsync"
)

// Result says what Write changed, so the caller knows whether systemd needs
// a daemon-reload and which running agents now run with stale settings.
type Result struct {
	// TemplateChanged is true when vagent@.service was created or rewritten.
	TemplateChanged bool
	// SocketChanged is true when vagentd.socket was created, rewritten or
	// removed: a running socket keeps its old addresses until restarted.
	SocketChanged bool
	// Added, Updated and Removed name the agents whose drop-in was created,
	// rewritten or deleted, sorted.
	Added, Updated, Removed []string
}

// Changed reports whether anything on disk changed: only then does systemd
// need a daemon-reload.
func (r Result) Changed() bool {
	return r.TemplateChanged || r.SocketChanged || len(r.Added)+len(r.Updated)+len(r.Removed) > 0
}

// Write brings the unit directory dir in line with files, a complete Render
// output: each file whose content differs is replaced atomically (a temp
// file in the same directory, fsync, rename), files already right are left
// alone (mtime and inode kept), and the drop-ins of agents no longer in files
// are deleted with their directories when nothing else is left in them. Only
// files vagent owns are touched: the template and 50-vagent.conf drop-ins
// that vagent wrote; an admin's own drop-ins beside them stay.
//
// Everything is checked before anything is written, so bad input changes
// nothing on disk. A failure while writing (a full disk) can leave some
// files new and some old; each file on its own is always whole.
func Write(dir string, files Files) (Result, error) {
	return WriteWith(dir, files, WriteOptions{})
}

// VendorTemplate is where the package installs the template. When the
// template there is the one vagent renders, the unit directory must not hold
// a copy: a unit in /etc shadows the vendor one, and a later package's
// template would never take effect.
const VendorTemplate = "/usr/lib/systemd/system/" + TemplateName

// WriteOptions change what Write does.
type WriteOptions struct {
	// TemplateElsewhere leaves the template to the vendor directory: it is
	// not written into dir, and a copy vagent wrote there earlier is
	// removed (reported as TemplateChanged).
	TemplateElsewhere bool
	// SocketElsewhere does the same for vagentd.socket (VendorSocket),
	// reported as SocketChanged.
	SocketElsewhere bool
}

func (o WriteOptions) elsewhere(name string) bool {
	switch name {
	case TemplateName:
		return o.TemplateElsewhere
	case SocketName:
		return o.SocketElsewhere
	}
	return false
}

// vendorFiles are the files the package may install itself, with the
// header that marks a copy vagent wrote.
var vendorFiles = []struct{ name, header string }{
	{TemplateName, templateHeader},
	{SocketName, socketHeader},
}

// WriteWith is Write with options.
func WriteWith(dir string, files Files, o WriteOptions) (Result, error) {
	var res Result
	plan, err := planWrite(dir, files)
	if err != nil {
		return res, err
	}
	changed := func(name string) {
		if name == SocketName {
			res.SocketChanged = true
		} else {
			res.TemplateChanged = true
		}
	}
	for _, v := range vendorFiles {
		if !o.elsewhere(v.name) {
			continue
		}
		kept := plan.writes[:0]
		for _, w := range plan.writes {
			if w.rel != v.name {
				kept = append(kept, w)
			}
		}
		plan.writes = kept
		p := filepath.Join(dir, v.name)
		if st, err := os.Lstat(p); err == nil && st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return res, fmt.Errorf("write units: %w", err)
			}
			if bytes.HasPrefix(data, []byte(v.header)) {
				if err := os.Remove(p); err != nil {
					return res, fmt.Errorf("write units: %w", err)
				}
				changed(v.name)
				if err := fsync.Dir(dir); err != nil {
					return res, fmt.Errorf("write units: %w", err)
				}
			}
		}
	}
	dirty := map[string]bool{}
	for _, w := range plan.writes {
		sub := filepath.Dir(filepath.Join(dir, w.rel))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			return res, fmt.Errorf("write units: %w", err)
		}
		if err := writeAtomic(filepath.Join(dir, w.rel), files[w.rel]); err != nil {
			return res, fmt.Errorf("write units: %w", err)
		}
		dirty[sub] = true
		switch {
		case w.agent == "":
			changed(w.rel)
		case w.existed:
			res.Updated = append(res.Updated, w.agent)
		default:
			res.Added = append(res.Added, w.agent)
		}
		if !w.existed && sub != dir {
			// A new drop-in directory is itself a new entry of dir.
			dirty[dir] = true
		}
	}
	for _, rm := range plan.removals {
		p := filepath.Join(dir, DropInPath(rm))
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("remove unit drop-in: %w", err)
		}
		res.Removed = append(res.Removed, rm)
		sub := filepath.Dir(p)
		// Only an empty directory goes: an admin's override.conf keeps it.
		if err := os.Remove(sub); err == nil {
			dirty[dir] = true
		} else {
			dirty[sub] = true
		}
	}
	var dirs []string
	for d := range dirty {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if err := fsync.Dir(d); err != nil {
			return res, fmt.Errorf("write units: %w", err)
		}
	}
	sort.Strings(res.Added)
	sort.Strings(res.Updated)
	sort.Strings(res.Removed)
	return res, nil
}

type fileWrite struct {
	rel     string
	agent   string // "" for the template
	existed bool
}

type writePlan struct {
	writes   []fileWrite
	removals []string // agent names
}

// planWrite checks files and dir and works out what to write and remove,
// without changing anything.
func planWrite(dir string, files Files) (*writePlan, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("write units: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("write units: %s is not a directory", dir)
	}
	if _, ok := files[TemplateName]; !ok {
		// Files must be a whole Render output: every drop-in missing from
		// it would be deleted.
		return nil, fmt.Errorf("write units: no %s among the files to write", TemplateName)
	}
	plan := &writePlan{}
	agents := map[string]bool{}
	rels := make([]string, 0, len(files))
	for rel := range files {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		data := files[rel]
		agent := ""
		switch rel {
		case TemplateName:
		case SocketName:
			if !bytes.HasPrefix(data, []byte(socketHeader)) {
				return nil, fmt.Errorf("write units: %s does not start with %q: not rendered by vagent", rel, socketHeader)
			}
		default:
			agent = agentOf(rel)
			if agent == "" {
				return nil, fmt.Errorf("write units: %q is not a file vagent writes", rel)
			}
			agents[agent] = true
			if !bytes.HasPrefix(data, []byte(header)) {
				return nil, fmt.Errorf("write units: %s does not start with %q: not rendered by vagent", rel, header)
			}
		}
		if len(data) == 0 || bytes.IndexByte(data, 0) >= 0 {
			return nil, fmt.Errorf("write units: %s is empty or holds a NUL byte", rel)
		}
		if agent != "" {
			sub := filepath.Join(dir, filepath.Dir(rel))
			if st, err := os.Lstat(sub); err == nil && !st.IsDir() {
				return nil, fmt.Errorf("write units: %s exists and is not a directory", sub)
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("write units: %w", err)
			}
		}
		p := filepath.Join(dir, rel)
		st, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			plan.writes = append(plan.writes, fileWrite{rel: rel, agent: agent})
			continue
		case err != nil:
			return nil, fmt.Errorf("write units: %w", err)
		case !st.Mode().IsRegular():
			// A symlink here is an admin's (a mask to /dev/null, a file
			// kept elsewhere): replacing it would silently undo that.
			return nil, fmt.Errorf("write units: %s is not a regular file (%s); remove it to let vagent write it", p, st.Mode().Type())
		}
		old, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("write units: %w", err)
		}
		if !bytes.Equal(old, data) {
			plan.writes = append(plan.writes, fileWrite{rel: rel, agent: agent, existed: true})
		}
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("write units: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".service.d")
		if !ok || !e.IsDir() { // e.IsDir is false for a symlink: never followed
			continue
		}
		agent, ok := strings.CutPrefix(name, "vagent@")
		if !ok || agent == "" || agents[agent] {
			continue
		}
		p := filepath.Join(dir, e.Name(), DropInName)
		st, err := os.Lstat(p)
		if err != nil || !st.Mode().IsRegular() {
			continue
		}
		if owned, err := ownedByVagent(p); err != nil {
			return nil, fmt.Errorf("write units: %w", err)
		} else if owned {
			plan.removals = append(plan.removals, agent)
		}
	}
	return plan, nil
}

// agentOf returns the agent whose drop-in rel is, or "" when rel is not a
// drop-in path vagent writes.
func agentOf(rel string) string {
	d, f, ok := strings.Cut(rel, "/")
	if !ok || f != DropInName {
		return ""
	}
	name, ok := strings.CutSuffix(d, ".service.d")
	if !ok {
		return ""
	}
	agent, ok := strings.CutPrefix(name, "vagent@")
	if !ok || !agentNameRE.MatchString(agent) {
		return ""
	}
	return agent
}

// ownedByVagent reports whether the file at p starts with vagent's header.
func ownedByVagent(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, len(header))
	n, _ := f.Read(buf)
	return string(buf[:n]) == header, nil
}

// writeAtomic replaces p with data so that a reader (systemd at a
// daemon-reload, or after a crash) sees the old file or the new one, never
// a part: temp file in the same directory, fsync, rename.
func writeAtomic(p string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".vagent-tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return err
	}
	// CreateTemp makes 0600: units are world-readable like every unit
	// (secrets live in the EnvironmentFile, not here).
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}
