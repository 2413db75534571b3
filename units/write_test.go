package units

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// fileState is what must not change for a file Write leaves alone.
type fileState struct {
	ino   uint64
	mtime time.Time
	data  string
	dir   bool
}

// snapshot records every entry under dir.
func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		st := fileState{ino: info.Sys().(*syscall.Stat_t).Ino, mtime: info.ModTime(), dir: d.IsDir()}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			st.data = string(b)
		}
		if rel != "." {
			out[rel] = st
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mustWrite(t *testing.T, dir string, files Files) Result {
	t.Helper()
	res, err := Write(dir, files)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	return res
}

func render(t *testing.T, cfg *config.Config) Files {
	t.Helper()
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	// An admin's files: another unit, an override beside a drop-in, and
	// a drop-in of an agent vagent never had.
	foreign := map[string]string{
		"other.service":                        "[Service]\nExecStart=/bin/true\n",
		"vagent@dev.service.d/override.conf":   "[Service]\nNice=5\n",
		"vagent@old.service.d/override.conf":   "[Service]\nNice=5\n",
		"vagent@hand.service.d/50-vagent.conf": "# an admin's own file\n[Service]\nNice=1\n",
		"vagent@.service.d/50-vagent.conf":     "# Written by vagent? no: a template drop-in\n",
	}
	for rel, data := range foreign {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	a, b, c := testAgent("dev", 0.4), testAgent("po", 0.4), testAgent("old", 0.4)
	cfg := testConfig(a, b, c)
	res := mustWrite(t, dir, render(t, cfg))
	want := Result{TemplateChanged: true, SocketChanged: true, Added: []string{"dev", "old", "po"}}
	if !reflect.DeepEqual(res, want) || !res.Changed() {
		t.Errorf("first write: %+v, want %+v", res, want)
	}
	for rel, data := range render(t, cfg) {
		got, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil || string(got) != string(data) {
			t.Errorf("%s: %v\n%s", rel, err, got)
		}
		if st, _ := os.Stat(filepath.Join(dir, rel)); st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", rel, st.Mode())
		}
	}

	// The same files again: nothing touched, not even rewritten in place.
	before := snapshot(t, dir)
	time.Sleep(10 * time.Millisecond) // so that a rewrite would show in mtime
	res = mustWrite(t, dir, render(t, cfg))
	if res.Changed() || !reflect.DeepEqual(res, Result{}) {
		t.Errorf("unchanged write reported %+v", res)
	}
	if after := snapshot(t, dir); !reflect.DeepEqual(before, after) {
		t.Errorf("unchanged write touched files:\nbefore %v\nafter  %v", before, after)
	}

	// po changes, old goes: only po's drop-in is rewritten, old's is
	// deleted, and old's directory stays for the admin's override.conf.
	b.Port = 9100
	cfg = testConfig(a, b)
	res = mustWrite(t, dir, render(t, cfg))
	want = Result{Updated: []string{"po"}, Removed: []string{"old"}}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("second write: %+v, want %+v", res, want)
	}
	after := snapshot(t, dir)
	for rel, st := range before {
		switch rel {
		case DropInPath("po"):
			if st.ino == after[rel].ino || !strings.Contains(after[rel].data, "--port 9100") {
				t.Errorf("po's drop-in not replaced by a new file: %+v", after[rel])
			}
		case DropInPath("old"):
			if _, ok := after[rel]; ok {
				t.Error("old's drop-in not removed")
			}
		default:
			if st.dir {
				// A rename or removal inside a directory changes its mtime.
				st.mtime = after[rel].mtime
			}
			if !reflect.DeepEqual(st, after[rel]) {
				t.Errorf("%s changed: %+v -> %+v", rel, st, after[rel])
			}
		}
	}
	for rel, data := range foreign {
		if got, err := os.ReadFile(filepath.Join(dir, rel)); err != nil || string(got) != data {
			t.Errorf("foreign %s: %v %q", rel, err, got)
		}
	}
	// No temp file left behind.
	for rel := range after {
		if strings.Contains(rel, "vagent-tmp") {
			t.Errorf("temp file left: %s", rel)
		}
	}

	// dev goes too: with nothing but its drop-in left its directory goes.
	os.Remove(filepath.Join(dir, "vagent@dev.service.d/override.conf"))
	res = mustWrite(t, dir, render(t, testConfig(b)))
	if !reflect.DeepEqual(res, Result{Removed: []string{"dev"}}) {
		t.Errorf("third write: %+v", res)
	}
	if _, err := os.Lstat(filepath.Join(dir, "vagent@dev.service.d")); !os.IsNotExist(err) {
		t.Errorf("empty drop-in directory kept: %v", err)
	}

	// A template change is reported as such.
	cfg = testConfig(b)
	cfg.Units.RestartSec.Duration = 7 * time.Second
	if res := mustWrite(t, dir, render(t, cfg)); !reflect.DeepEqual(res, Result{TemplateChanged: true}) {
		t.Errorf("template change: %+v", res)
	}
}

func TestWriteBadInputChangesNothing(t *testing.T) {
	dir := t.TempDir()
	good := render(t, testConfig(testAgent("dev", 0.4), testAgent("po", 0.4)))
	mustWrite(t, dir, good)
	before := snapshot(t, dir)

	// A render error gives no files to write at all.
	bad := testAgent("po", 0.4)
	bad.ExtraArgs = []string{"--no-such-flag"}
	if files, err := Render(testConfig(testAgent("dev", 0.5), bad), nil); err == nil || files != nil {
		t.Fatalf("render of a bad agent: %v, %v", files, err)
	}

	changed := Files{}
	for k, v := range good {
		changed[k] = append([]byte(nil), v...)
	}
	changed[TemplateName] = append(changed[TemplateName], "# changed\n"...)
	delete(changed, DropInPath("po")) // would remove po
	for name, files := range map[string]Files{
		"path outside the directory": withFile(changed, "../evil.service", good[TemplateName]),
		"a foreign file name":        withFile(changed, "vagent@dev.service.d/override.conf", good[DropInPath("dev")]),
		"an invalid agent name":      withFile(changed, "vagent@Bad Name.service.d/50-vagent.conf", good[DropInPath("dev")]),
		"no template":                withoutFile(changed, TemplateName),
		"not rendered by vagent":     withFile(changed, DropInPath("x"), []byte("[Service]\n")),
		"empty file":                 withFile(changed, DropInPath("x"), []byte{}),
	} {
		if _, err := Write(dir, files); err == nil {
			t.Errorf("%s: written", name)
		}
		if after := snapshot(t, dir); !reflect.DeepEqual(before, after) {
			t.Errorf("%s: files changed:\nbefore %v\nafter  %v", name, before, after)
		}
	}

	// A symlink where a unit goes is an admin's (a mask): refused, untouched.
	if err := os.Remove(filepath.Join(dir, TemplateName)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", filepath.Join(dir, TemplateName)); err != nil {
		t.Fatal(err)
	}
	before = snapshot(t, dir)
	if _, err := Write(dir, changed); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("write over a symlink: %v", err)
	}
	if after := snapshot(t, dir); !reflect.DeepEqual(before, after) {
		t.Errorf("write over a symlink changed files")
	}

	if _, err := Write(filepath.Join(dir, "missing"), good); err == nil {
		t.Error("write into a missing directory")
	}
}

func withFile(f Files, rel string, data []byte) Files {
	out := Files{}
	for k, v := range f {
		out[k] = v
	}
	out[rel] = data
	return out
}

func withoutFile(f Files, rel string) Files {
	out := withFile(f, rel, nil)
	delete(out, rel)
	return out
}

func TestWriteWithTemplateElsewhereLeavesTheVendorTemplateAlone(t *testing.T) {
	cfg := testConfig(testAgent("dev", 0.5), testAgent("po", 0.4))
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// An earlier apply, before the package, wrote the template here.
	if _, err := Write(dir, files); err != nil {
		t.Fatal(err)
	}
	res, err := WriteWith(dir, files, WriteOptions{TemplateElsewhere: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.TemplateChanged {
		t.Error("removing vagent's old copy of the template was not reported")
	}
	if _, err := os.Stat(filepath.Join(dir, TemplateName)); !os.IsNotExist(err) {
		t.Errorf("the unit directory still shadows the vendor template: %v", err)
	}
	for _, a := range []string{"dev", "po"} {
		if _, err := os.Stat(filepath.Join(dir, DropInPath(a))); err != nil {
			t.Errorf("drop-in of %s: %v", a, err)
		}
	}
	// An admin's own template is theirs: never removed.
	own := []byte("[Service]\nExecStart=/bin/true\n")
	if err := os.WriteFile(filepath.Join(dir, TemplateName), own, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err = WriteWith(dir, files, WriteOptions{TemplateElsewhere: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed() {
		t.Errorf("nothing should change: %+v", res)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, TemplateName)); string(got) != string(own) {
		t.Error("an admin's template was touched")
	}
}
