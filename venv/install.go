package venv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/internal/filelock"
	"github.com/vagent-dev/vagent/internal/fsync"
)

// ErrBusy is matched (errors.Is) when another install or rollback holds the
// engines' lock.
var ErrBusy = errors.New("another vagentctl install is running")

// InstallError is a failed install: the phase that failed, the last lines
// of its output and the full log. The engine that was current before is
// still current.
type InstallError struct {
	Version string
	// Phase is "create", "install" or "verify".
	Phase string
	Err   error
	// Tail is the end of the failing command's output.
	Tail []string
	// Log is the install's full log.
	Log string
	// Current is the engine left current, "" when there is none.
	Current string
}

func (e *InstallError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "install vLLM %s: %s: %v", e.Version, e.Phase, e.Err)
	if len(e.Tail) > 0 {
		b.WriteString("\nlast lines of the log:")
		for _, l := range e.Tail {
			b.WriteString("\n  " + l)
		}
	}
	if e.Log != "" {
		fmt.Fprintf(&b, "\nfull log: %s", e.Log)
	}
	if e.Current != "" {
		fmt.Fprintf(&b, "\nthe current engine is unchanged: %s", e.Current)
	} else {
		b.WriteString("\nno engine is installed")
	}
	return b.String()
}

func (e *InstallError) Unwrap() error { return e.Err }

func (m *Manager) osys() OS {
	h := Host()
	o := m.OS
	if o.Run == nil {
		o.Run = h.Run
	}
	if o.LookPath == nil {
		o.LookPath = h.LookPath
	}
	if o.Now == nil {
		o.Now = h.Now
	}
	if o.InUse == nil {
		o.InUse = h.InUse
	}
	return o
}

func (m *Manager) out() io.Writer {
	if m.Out == nil {
		return io.Discard
	}
	return m.Out
}

func (m *Manager) timeouts() Timeouts {
	t := m.Timeouts
	if t.Create <= 0 {
		t.Create = DefaultTimeouts.Create
	}
	if t.Install <= 0 {
		t.Install = DefaultTimeouts.Install
	}
	if t.Verify <= 0 {
		t.Verify = DefaultTimeouts.Verify
	}
	return t
}

// Install builds vLLM o.Version into a new engine (or reuses the engine of
// that version if it exists and verifies), switches current to it, keeps the
// engine it replaces as previous, and prunes engines beyond o.Keep. A failed
// install removes what it built and leaves current alone; its error is an
// *InstallError. The Result is filled as far as the install got, for a
// summary either way.
func (m *Manager) Install(ctx context.Context, o Options) (*Result, error) {
	osys := m.osys()
	p := &progress{out: m.out(), now: osys.Now, start: osys.Now()}
	res := &Result{Action: "install", Version: o.Version, Pruned: []string{}, Notes: []string{}}
	defer func() { res.ElapsedSeconds = roundSeconds(p.elapsed()) }()

	if err := CheckVersion(o.Version); err != nil {
		return res, err
	}
	if err := CheckGPUs(o.GPU, o.AWQ); err != nil {
		return res, err
	}
	if o.GPU != nil {
		res.CUDA = o.GPU.CUDA
	}
	uvPath := ""
	if o.Installer != InstallerPip {
		if path, err := osys.LookPath("uv"); err == nil {
			uvPath = path
		}
	}
	// Decide everything that can be refused before touching the disk.
	pl, err := newPlan(o, "", uvPath)
	if err != nil {
		return res, fmt.Errorf("install vLLM %s: %w", o.Version, err)
	}
	res.Installer, res.Python, res.Offline, res.TorchBackend = pl.installer, pl.python, pl.offline, pl.backend
	for _, w := range pl.warnings {
		res.Notes = append(res.Notes, "warning: "+w)
	}
	res.Notes = append(res.Notes, pl.notes...)

	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		return res, fmt.Errorf("install vLLM %s: %w", o.Version, err)
	}
	unlock, err := m.lock()
	if err != nil {
		return res, err
	}
	defer unlock()

	res.Log = filepath.Join(m.Dir, fmt.Sprintf("install-%s-%s.log", o.Version, p.start.UTC().Format("20060102T150405Z")))
	logf, err := os.OpenFile(res.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return res, fmt.Errorf("install vLLM %s: %w", o.Version, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "vagent install of vLLM %s started %s\n", o.Version, p.start.UTC().Format(time.RFC3339))

	cur, prev := m.links()
	name, reused, err := m.choose(ctx, o.Version, cur, prev, logf, p, res)
	if err != nil {
		return res, fmt.Errorf("install vLLM %s: %w", o.Version, err)
	}
	pl.dir = filepath.Join(m.Dir, name)
	res.Engine = pl.dir

	how := pl.installer
	if pl.offline {
		how += ", offline"
	}
	p.phase("engine", "vLLM %s into %s (%s, python %s); full log: %s", o.Version, pl.dir, how, pl.python, res.Log)
	for _, w := range pl.warnings {
		p.phase("warning", "%s", w)
		fmt.Fprintf(logf, "warning: %s\n", w)
	}
	for _, n := range pl.notes {
		p.phase("note", "%s", n)
		fmt.Fprintf(logf, "note: %s\n", n)
	}
	if res.TorchBackend != "" {
		if pl.installer == InstallerUV {
			p.phase("cuda", "driver supports CUDA %s: uv picks the PyTorch variant (--torch-backend=auto)", res.CUDA)
		} else {
			p.phase("cuda", "driver supports CUDA %s: PyTorch variant %s (%s)", res.CUDA, res.TorchBackend, TorchIndexBase+res.TorchBackend)
		}
	}

	if reused {
		res.Reused = true
		p.phase("reuse", "%s exists and imports vllm %s: not rebuilt", name, o.Version)
	} else if err := m.build(ctx, pl, o, logf, p, osys); err != nil {
		var ie *InstallError
		if errors.As(err, &ie) {
			ie.Log = res.Log
			if cur != "" {
				ie.Current = m.path(cur)
			}
		}
		// Nothing points at the unfinished engine; it goes, with its
		// gigabytes. The log stays.
		if rerr := os.RemoveAll(pl.dir); rerr != nil {
			fmt.Fprintf(logf, "could not remove %s: %v\n", pl.dir, rerr)
		}
		fmt.Fprintf(logf, "install failed: %v\n", err)
		res.Error = err.Error()
		if cur != "" {
			res.Current = m.path(cur)
		}
		if prev != "" {
			res.Previous = m.path(prev)
		}
		return res, err
	}

	newCur, newPrev, err := m.switchTo(name)
	if err != nil {
		fmt.Fprintf(logf, "switch failed: %v\n", err)
		return res, fmt.Errorf("install vLLM %s: switch %s: %w", o.Version, CurrentLink, err)
	}
	res.Current, res.Previous = m.path(newCur), m.path(newPrev)
	switch {
	case cur == name:
		p.phase("switch", "%s was already the current engine", name)
	case newPrev != "":
		p.phase("switch", "%s -> %s (previous: %s)", CurrentLink, name, newPrev)
	default:
		p.phase("switch", "%s -> %s", CurrentLink, name)
	}
	fmt.Fprintf(logf, "current -> %s\n", name)

	if o.Keep >= 0 {
		pruned, notes, err := m.prune(o.Keep, osys)
		res.Pruned = append(res.Pruned, pruned...)
		for _, n := range notes {
			res.Notes = append(res.Notes, n)
			p.phase("prune", "%s", n)
		}
		if err != nil {
			// The new engine is in place; a failed prune only costs space.
			res.Notes = append(res.Notes, "prune: "+err.Error())
			p.phase("prune", "%v", err)
		}
		for _, d := range pruned {
			p.phase("prune", "removed %s", filepath.Base(d))
			fmt.Fprintf(logf, "pruned %s\n", d)
		}
	}
	res.OK = true
	p.phase("done", "vLLM %s is the current engine; running agents keep theirs until restarted (vagentctl restart NAME)", o.Version)
	fmt.Fprintf(logf, "done in %s\n", p.elapsed().Round(time.Millisecond))
	return res, nil
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

// choose picks the engine directory for version: vllm-VERSION when it is
// free or holds a leftover, or reuse it when it verifies. When that name is
// taken by the current or previous engine and it does not verify (damaged
// by hand), the new engine is built beside it (vllm-VERSION-2, ...), so that
// nothing an agent may run is deleted.
func (m *Manager) choose(ctx context.Context, version, cur, prev string, log io.Writer, p *progress, res *Result) (string, bool, error) {
	base := "vllm-" + version
	for i := 1; i <= 100; i++ {
		name := base
		if i > 1 {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		dir := filepath.Join(m.Dir, name)
		fi, err := os.Lstat(dir)
		if errors.Is(err, os.ErrNotExist) {
			return name, false, nil
		}
		if err != nil {
			return "", false, err
		}
		linked := name == cur || name == prev
		if fi.IsDir() {
			if mk, ok := readMarker(dir); ok && versionMatches(mk.Version, version) {
				fmt.Fprintf(log, "\n$ %s\n", quote(verifyCmd(dir).Args))
				got, err := m.verify(ctx, dir, log, log)
				if err == nil && versionMatches(got, version) {
					return name, true, nil
				}
				fmt.Fprintf(log, "existing %s does not verify (imports %q, %v)\n", name, got, err)
			}
		}
		if linked {
			n := fmt.Sprintf("%s is the %s engine but does not import vllm %s: building beside it", name, map[bool]string{true: "current", false: "previous"}[name == cur], version)
			res.Notes = append(res.Notes, n)
			p.phase("note", "%s", n)
			continue
		}
		p.phase("clean", "removing %s, left unfinished by an earlier install", name)
		fmt.Fprintf(log, "removing leftover %s\n", dir)
		if err := os.RemoveAll(dir); err != nil {
			return "", false, err
		}
		return name, false, nil
	}
	return "", false, fmt.Errorf("no free engine directory for %s under %s", base, m.Dir)
}

// build creates the venv, installs vLLM into it, verifies the import and
// writes the marker.
func (m *Manager) build(ctx context.Context, pl *plan, o Options, log io.Writer, p *progress, osys OS) error {
	t := m.timeouts()
	steps := []struct {
		phase   string
		cmd     Cmd
		timeout time.Duration
	}{
		{"create", pl.create(), t.Create},
		{"install", pl.install(o), t.Install},
	}
	for _, st := range steps {
		line := quote(st.cmd.Args)
		p.phase(st.phase, "%s", line)
		fmt.Fprintf(log, "\n$ %s\n", line)
		sum := newSummary(log, p)
		st.cmd.Stdout, st.cmd.Stderr = sum, sum
		err := m.run(ctx, osys, st.cmd, st.timeout)
		sum.flush()
		if err != nil {
			return &InstallError{Version: o.Version, Phase: st.phase, Err: err, Tail: sum.lastLines()}
		}
	}

	vc := verifyCmd(pl.dir)
	p.phase("verify", "%s", quote(vc.Args))
	fmt.Fprintf(log, "\n$ %s\n", quote(vc.Args))
	sum := newSummary(log, p)
	got, err := m.verify(ctx, pl.dir, sum, sum)
	sum.flush()
	if err != nil {
		return &InstallError{Version: o.Version, Phase: "verify", Err: fmt.Errorf("the new venv cannot import vllm: %w", err), Tail: sum.lastLines()}
	}
	if !versionMatches(got, o.Version) {
		return &InstallError{Version: o.Version, Phase: "verify", Err: fmt.Errorf("the new venv imports vllm %q, not %s", got, o.Version), Tail: sum.lastLines()}
	}
	p.detail("imports vllm " + got)
	mk := marker{Version: o.Version, Installer: pl.installer, Python: pl.python, TorchBackend: pl.backend, Installed: osys.Now().UTC()}
	if err := writeMarker(pl.dir, mk); err != nil {
		return &InstallError{Version: o.Version, Phase: "verify", Err: err}
	}
	return nil
}

// run runs c bounded by timeout, naming a timeout or an interruption
// rather than the signal that ended the command.
func (m *Manager) run(ctx context.Context, osys OS, c Cmd, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := osys.Run(cctx, c)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted: %w", ctx.Err())
	case cctx.Err() != nil:
		return fmt.Errorf("%s did not finish within %s", filepath.Base(c.Args[0]), timeout)
	}
	return err
}

// verify runs the import check in the engine at dir and returns the version
// it prints (the last line of its standard output).
func (m *Manager) verify(ctx context.Context, dir string, stdout, stderr io.Writer) (string, error) {
	osys := m.osys()
	var out bytes.Buffer
	c := verifyCmd(dir)
	c.Stdout, c.Stderr = io.MultiWriter(&out, stdout), stderr
	if err := m.run(ctx, osys, c, m.timeouts().Verify); err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

func readMarker(dir string) (marker, bool) {
	var mk marker
	b, err := os.ReadFile(filepath.Join(dir, MarkerFile))
	if err != nil || json.Unmarshal(b, &mk) != nil || mk.Version == "" {
		return marker{}, false
	}
	return mk, true
}

func writeMarker(dir string, mk marker) error {
	b, err := json.MarshalIndent(mk, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, MarkerFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write engine marker: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, MarkerFile)); err != nil {
		return fmt.Errorf("write engine marker: %w", err)
	}
	return fsync.Dir(dir)
}

// lock takes the engines' lock without waiting: two installs at once would
// race on the links.
func (m *Manager) lock() (func(), error) {
	path := filepath.Join(m.Dir, ".lock")
	l, err := filelock.TryLock(path, filelock.Options{Perm: 0o644})
	if errors.Is(err, filelock.ErrHeld) {
		return nil, fmt.Errorf("%w on %s: wait for it to finish", ErrBusy, m.Dir)
	}
	if err != nil {
		return nil, err
	}
	return func() { l.Unlock() }, nil
}

// links returns the targets of current and previous as names under Dir (or
// as written, for a link someone pointed elsewhere); "" for a missing link.
func (m *Manager) links() (cur, prev string) {
	return m.link(CurrentLink), m.link(PreviousLink)
}

func (m *Manager) link(name string) string {
	t, err := os.Readlink(filepath.Join(m.Dir, name))
	if err != nil {
		return ""
	}
	if filepath.IsAbs(t) && filepath.Dir(filepath.Clean(t)) == filepath.Clean(m.Dir) {
		return filepath.Base(t)
	}
	return t
}

// path is the full path of a link target as links returns it.
func (m *Manager) path(name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(m.Dir, name)
}

// setLink points link at target by renaming a new link over it: readers
// see the old target or the new one, never none.
func (m *Manager) setLink(link, target string) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(m.Dir, "."+link+"."+hex.EncodeToString(rnd[:])+".tmp")
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(m.Dir, link)); err != nil {
		os.Remove(tmp)
		if fi, serr := os.Lstat(filepath.Join(m.Dir, link)); serr == nil && fi.IsDir() {
			return fmt.Errorf("%s is a directory, not a link vagent manages: move it away", filepath.Join(m.Dir, link))
		}
		return err
	}
	return fsync.Dir(m.Dir)
}

// switchTo makes name current and what was current previous.
func (m *Manager) switchTo(name string) (cur, prev string, err error) {
	oldCur, oldPrev := m.links()
	if oldCur == name {
		return oldCur, oldPrev, nil
	}
	if err := m.setLink(CurrentLink, name); err != nil {
		return oldCur, oldPrev, err
	}
	if oldCur == "" {
		return name, oldPrev, nil
	}
	if err := m.setLink(PreviousLink, oldCur); err != nil {
		return name, oldPrev, err
	}
	return name, oldCur, nil
}

// Rollback makes the previous engine current again and the current one
// previous (so a second rollback undoes the first), after checking that
// the previous engine still imports vllm. Running agents keep their engine
// until restarted.
func (m *Manager) Rollback(ctx context.Context) (*Result, error) {
	osys := m.osys()
	p := &progress{out: m.out(), now: osys.Now, start: osys.Now()}
	res := &Result{Action: "rollback", Pruned: []string{}, Notes: []string{}}
	defer func() { res.ElapsedSeconds = roundSeconds(p.elapsed()) }()
	if _, err := os.Stat(m.Dir); err != nil {
		return res, fmt.Errorf("rollback: no engines installed (%w)", err)
	}
	unlock, err := m.lock()
	if err != nil {
		return res, err
	}
	defer unlock()
	cur, prev := m.links()
	res.Current, res.Previous = m.path(cur), m.path(prev)
	if prev == "" {
		return res, fmt.Errorf("rollback: there is no previous engine to return to (%s has no %s link)", m.Dir, PreviousLink)
	}
	dir := m.path(prev)
	mk, ok := readMarker(dir)
	if !ok {
		return res, fmt.Errorf("rollback: the previous engine %s is gone or unfinished; the current engine is unchanged", dir)
	}
	res.Version, res.Engine = mk.Version, dir
	vc := verifyCmd(dir)
	p.phase("verify", "%s", quote(vc.Args))
	var out bytes.Buffer
	sum := newSummary(&out, p)
	got, err := m.verify(ctx, dir, sum, sum)
	sum.flush()
	if err == nil && !versionMatches(got, mk.Version) {
		err = fmt.Errorf("it imports vllm %q, not %s", got, mk.Version)
	}
	if err != nil {
		msg := fmt.Sprintf("rollback: the previous engine %s does not verify: %v", dir, err)
		if tail := sum.lastLines(); len(tail) > 0 {
			msg += "\nlast lines of its output:\n  " + strings.Join(tail, "\n  ")
		}
		return res, errors.New(msg + "\nthe current engine is unchanged")
	}
	p.detail("imports vllm " + got)
	newCur, newPrev, err := m.switchTo(prev)
	if err != nil {
		return res, fmt.Errorf("rollback: switch %s: %w", CurrentLink, err)
	}
	res.Current, res.Previous = m.path(newCur), m.path(newPrev)
	p.phase("switch", "%s -> %s (previous: %s)", CurrentLink, newCur, newPrev)
	p.phase("done", "vLLM %s is the current engine again; running agents keep theirs until restarted (vagentctl restart NAME)", mk.Version)
	res.OK = true
	return res, nil
}

// List returns the engines under Dir, newest first, with the interrupted
// builds among them (Complete false).
func (m *Manager) List() ([]Engine, error) {
	ents, err := os.ReadDir(m.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	cur, prev := m.links()
	var out []Engine
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "vllm-") {
			continue
		}
		en := Engine{Name: e.Name(), Path: filepath.Join(m.Dir, e.Name()), Current: e.Name() == cur, Previous: e.Name() == prev}
		if mk, ok := readMarker(en.Path); ok {
			en.Version, en.Installed, en.Complete = mk.Version, mk.Installed, true
		} else if fi, err := e.Info(); err == nil {
			en.Installed = fi.ModTime().UTC()
		}
		out = append(out, en)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Installed.Equal(out[j].Installed) {
			return out[i].Installed.After(out[j].Installed)
		}
		return out[i].Name > out[j].Name
	})
	return out, nil
}

// Current returns the engine current points at; ok is false when there is
// none or it is unfinished.
func (m *Manager) Current() (Engine, bool) {
	cur := m.link(CurrentLink)
	if cur == "" {
		return Engine{}, false
	}
	dir := m.path(cur)
	mk, ok := readMarker(dir)
	if !ok {
		return Engine{Name: filepath.Base(dir), Path: dir, Current: true}, false
	}
	return Engine{Name: filepath.Base(dir), Path: dir, Version: mk.Version, Installed: mk.Installed, Complete: true, Current: true,
		Previous: m.link(PreviousLink) == cur}, true
}

// Prune removes engines beyond keep (see Options.Keep) and interrupted
// builds, never the current or previous engine nor one a process runs
// from. It returns the directories removed.
func (m *Manager) Prune(keep int) ([]string, error) {
	if _, err := os.Stat(m.Dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	pruned, _, err := m.prune(keep, m.osys())
	return pruned, err
}

// keepLogs is how many install logs prune leaves.
const keepLogs = 20

func (m *Manager) prune(keep int, osys OS) (pruned, notes []string, err error) {
	engines, err := m.List()
	if err != nil {
		return nil, nil, err
	}
	cur, prev := m.links()
	kept := map[string]bool{}
	for _, n := range []string{cur, prev} {
		if n != "" {
			kept[n] = true
		}
	}
	count := len(kept)
	var errs []error
	for _, e := range engines {
		if kept[e.Name] {
			continue
		}
		if e.Complete && count < keep {
			kept[e.Name] = true
			count++
			continue
		}
		if pids := osys.InUse(e.Path); len(pids) > 0 {
			notes = append(notes, fmt.Sprintf("kept %s: processes %v run from it (restart them, then install or prune again)", e.Name, pids))
			continue
		}
		if err := os.RemoveAll(e.Path); err != nil {
			errs = append(errs, err)
			continue
		}
		pruned = append(pruned, e.Path)
	}
	m.pruneLogs()
	return pruned, notes, errors.Join(errs...)
}

// pruneLogs keeps the newest keepLogs install logs.
func (m *Manager) pruneLogs() {
	logs, _ := filepath.Glob(filepath.Join(m.Dir, "install-*.log"))
	if len(logs) <= keepLogs {
		return
	}
	type lf struct {
		path string
		t    time.Time
	}
	var all []lf
	for _, l := range logs {
		if fi, err := os.Stat(l); err == nil {
			all = append(all, lf{l, fi.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].t.After(all[j].t) })
	for _, l := range all[min(keepLogs, len(all)):] {
		os.Remove(l.path)
	}
}
