package venv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/gpu"
)

// fakeHost pretends to be python, pip and uv: it records every command,
// creates the venv directory, "installs" a version by remembering it, and
// answers the import check with that version.
type fakeHost struct {
	mu       sync.Mutex
	cmds     [][]string
	envs     [][]string
	uv       bool
	now      time.Time
	versions map[string]string // venv dir -> installed vllm version
	// broken versions install fine but fail to import; failing versions
	// fail in pip.
	broken  map[string]bool
	failing map[string]bool
	inUse   map[string][]int
}

func newFake() *fakeHost {
	return &fakeHost{
		now:      time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC),
		versions: map[string]string{},
		broken:   map[string]bool{},
		failing:  map[string]bool{},
		inUse:    map[string][]int{},
	}
}

func (f *fakeHost) os() OS {
	return OS{
		Run: f.run,
		LookPath: func(name string) (string, error) {
			if name == "uv" && f.uv {
				return "/usr/bin/uv", nil
			}
			return "", errors.New("not found")
		},
		Now: func() time.Time {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.now = f.now.Add(100 * time.Millisecond)
			return f.now
		},
		InUse: func(dir string) []int { return f.inUse[filepath.Base(dir)] },
	}
}

func (f *fakeHost) run(ctx context.Context, c Cmd) error {
	f.mu.Lock()
	f.cmds = append(f.cmds, c.Args)
	f.envs = append(f.envs, c.Env)
	f.mu.Unlock()
	a := c.Args
	switch {
	case len(a) == 4 && a[1] == "-m" && a[2] == "venv":
		return mkVenv(a[3])
	case filepath.Base(a[0]) == "uv" && a[1] == "venv":
		return mkVenv(a[len(a)-1])
	case len(a) == 3 && a[1] == "-c":
		dir := filepath.Dir(filepath.Dir(a[0]))
		f.mu.Lock()
		v, ok := f.versions[dir]
		broken := f.broken[v]
		f.mu.Unlock()
		if !ok || broken {
			fmt.Fprintf(c.Stderr, "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n")
			if broken {
				fmt.Fprintf(c.Stderr, "RuntimeError: vllm %s is broken\n", v)
			} else {
				fmt.Fprintf(c.Stderr, "ModuleNotFoundError: No module named 'vllm'\n")
			}
			return errors.New("exit status 1")
		}
		fmt.Fprintf(c.Stderr, "INFO some log line on stderr\n")
		fmt.Fprintln(c.Stdout, v)
		return nil
	}
	// pip or uv pip install.
	var dir, version string
	for i, w := range a {
		if strings.HasPrefix(w, "vllm==") {
			version = strings.TrimPrefix(w, "vllm==")
		}
		if w == "--python" && a[1] == "pip" {
			dir = filepath.Dir(filepath.Dir(a[i+1]))
		}
	}
	if a[1] == "-m" && a[2] == "pip" {
		dir = filepath.Dir(filepath.Dir(a[0]))
	}
	if dir == "" || version == "" {
		return fmt.Errorf("fake: unexpected command %q", a)
	}
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("fake: install into a missing venv: %w", err)
	}
	fmt.Fprintf(c.Stdout, "Collecting vllm==%s\n  Downloading vllm-%s.whl (400 MB)\n", version, version)
	if f.failing[version] {
		fmt.Fprintf(c.Stderr, "ERROR: Could not find a version that satisfies the requirement vllm==%s\nERROR: No matching distribution found for vllm==%s\n", version, version)
		return errors.New("exit status 1")
	}
	fmt.Fprintf(c.Stdout, "Installing collected packages: vllm\nSuccessfully installed vllm-%s\n[notice] A new release of pip is available\n", version)
	f.mu.Lock()
	f.versions[dir] = version
	f.mu.Unlock()
	return nil
}

func mkVenv(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "bin", "python"), []byte("#!fake\n"), 0o755)
}

func (f *fakeHost) commands() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.cmds...)
}

func (f *fakeHost) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds, f.envs = nil, nil
}

func newManager(t *testing.T, f *fakeHost) (*Manager, *bytes.Buffer) {
	t.Helper()
	var out bytes.Buffer
	return &Manager{Dir: filepath.Join(t.TempDir(), "engines"), OS: f.os(), Out: &out}, &out
}

func gpuInfo(cuda string, major, minor int) *gpu.Info {
	return &gpu.Info{Backend: "nvml", Driver: "570.86", CUDA: cuda, Devices: []gpu.Device{
		{Index: 0, Name: "NVIDIA Test", ComputeMajor: major, ComputeMinor: minor},
	}}
}

// TestInstallCommands asserts the exact commands of an install for each
// installer and index setup: this is what runs on a real host.
func TestInstallCommands(t *testing.T) {
	const D = "@D" // the engine directory, filled in per test
	tests := []struct {
		name     string
		uv       bool
		opts     Options
		create   []string
		install  []string
		env      []string
		backend  string
		offline  bool
		noteLike string
	}{
		{
			name:     "pip, PyPI, no driver",
			opts:     Options{Version: "0.18.0", NoGPU: "libnvidia-ml.so.1 not found"},
			create:   []string{"python3", "-m", "venv", D},
			install:  []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.0"},
			env:      []string{"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
			noteLike: "warning: no CUDA variant chosen and no GPU checked: libnvidia-ml.so.1 not found",
		},
		{
			name:    "pip, PyPI, CUDA 12.8 driver",
			opts:    Options{Version: "0.18.0", GPU: gpuInfo("12.8", 8, 9)},
			create:  []string{"python3", "-m", "venv", D},
			install: []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.0", "--extra-index-url", "https://download.pytorch.org/whl/cu128"},
			env:     []string{"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
			backend: "cu128",
		},
		{
			name:    "pip, CUDA 13 driver, vLLM before 0.20 takes cu129",
			opts:    Options{Version: "0.18.1", GPU: gpuInfo("13.0", 9, 0), Python: "/usr/bin/python3.12", CacheDir: "/var/cache/vagent"},
			create:  []string{"/usr/bin/python3.12", "-m", "venv", D},
			install: []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.1", "--extra-index-url", "https://download.pytorch.org/whl/cu129"},
			env:     []string{"PIP_CACHE_DIR=/var/cache/vagent/pip", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
			backend: "cu129",
		},
		{
			name:     "pip, offline wheelhouse: --no-index, no CUDA index",
			opts:     Options{Version: "0.18.0", GPU: gpuInfo("12.4", 7, 5), FindLinks: []string{"/srv/wheels", "/srv/more"}},
			create:   []string{"python3", "-m", "venv", D},
			install:  []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.0", "--no-index", "--find-links", "/srv/wheels", "--find-links", "/srv/more"},
			env:      []string{"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
			offline:  true,
			noteLike: "offline install",
		},
		{
			name: "pip, mirror: index, extra index and find-links, no CUDA index added",
			opts: Options{Version: "0.18.0", GPU: gpuInfo("12.6", 8, 0), IndexURL: "https://mirror/simple",
				ExtraIndexURLs: []string{"https://mirror/torch/cu126"}, FindLinks: []string{"/srv/wheels"}},
			create: []string{"python3", "-m", "venv", D},
			install: []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.0",
				"--index-url", "https://mirror/simple", "--extra-index-url", "https://mirror/torch/cu126", "--find-links", "/srv/wheels"},
			env:      []string{"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
			noteLike: "index URL set: no PyTorch CUDA index added",
		},
		{
			name:    "uv when present, with a driver: --torch-backend=auto",
			uv:      true,
			opts:    Options{Version: "0.18.0", GPU: gpuInfo("12.4", 8, 6), CacheDir: "/c"},
			create:  []string{"/usr/bin/uv", "venv", "--python", "3.12", "--seed", D},
			install: []string{"/usr/bin/uv", "pip", "install", "--python", D + "/bin/python", "vllm==0.18.0", "--torch-backend=auto"},
			env:     []string{"UV_CACHE_DIR=/c/uv", "UV_PYTHON_INSTALL_DIR=@E/python"},
			backend: "auto",
		},
		{
			name:     "uv without a driver: no torch backend",
			uv:       true,
			opts:     Options{Version: "0.18.0"},
			create:   []string{"/usr/bin/uv", "venv", "--python", "3.12", "--seed", D},
			install:  []string{"/usr/bin/uv", "pip", "install", "--python", D + "/bin/python", "vllm==0.18.0"},
			env:      []string{"UV_PYTHON_INSTALL_DIR=@E/python"},
			noteLike: "warning: no CUDA variant chosen and no GPU checked: no NVIDIA driver",
		},
		{
			name:    "uv offline: no --seed, --no-index",
			uv:      true,
			opts:    Options{Version: "0.18.0", GPU: gpuInfo("12.8", 8, 9), FindLinks: []string{"/w"}, Python: "python3"},
			create:  []string{"/usr/bin/uv", "venv", "--python", "python3", D},
			install: []string{"/usr/bin/uv", "pip", "install", "--python", D + "/bin/python", "vllm==0.18.0", "--no-index", "--find-links", "/w"},
			env:     []string{"UV_PYTHON_INSTALL_DIR=@E/python"},
			offline: true,
		},
		{
			name:    "pip forced although uv is present",
			uv:      true,
			opts:    Options{Version: "0.18.0", Installer: InstallerPip, IndexURL: "https://mirror/simple"},
			create:  []string{"python3", "-m", "venv", D},
			install: []string{D + "/bin/python", "-m", "pip", "install", "--progress-bar", "off", "vllm==0.18.0", "--index-url", "https://mirror/simple"},
			env:     []string{"PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			f.uv = tt.uv
			m, _ := newManager(t, f)
			res, err := m.Install(t.Context(), tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(m.Dir, "vllm-"+tt.opts.Version)
			fill := func(ws []string) []string {
				out := make([]string, len(ws))
				for i, w := range ws {
					out[i] = strings.ReplaceAll(strings.ReplaceAll(w, D, dir), "@E", m.Dir)
				}
				return out
			}
			cmds := f.commands()
			if len(cmds) != 3 {
				t.Fatalf("ran %d commands, want create, install, verify: %q", len(cmds), cmds)
			}
			if want := fill(tt.create); !reflect.DeepEqual(cmds[0], want) {
				t.Errorf("create:\n got %q\nwant %q", cmds[0], want)
			}
			if want := fill(tt.install); !reflect.DeepEqual(cmds[1], want) {
				t.Errorf("install:\n got %q\nwant %q", cmds[1], want)
			}
			if want := []string{dir + "/bin/python", "-c", "import vllm; print(vllm.__version__)"}; !reflect.DeepEqual(cmds[2], want) {
				t.Errorf("verify:\n got %q\nwant %q", cmds[2], want)
			}
			if want := fill(tt.env); !reflect.DeepEqual(f.envs[1], want) {
				t.Errorf("install env:\n got %q\nwant %q", f.envs[1], want)
			}
			if res.TorchBackend != tt.backend || res.Offline != tt.offline {
				t.Errorf("torch backend %q offline %v, want %q %v", res.TorchBackend, res.Offline, tt.backend, tt.offline)
			}
			if tt.noteLike != "" && !strings.Contains(strings.Join(res.Notes, "\n"), tt.noteLike) {
				t.Errorf("notes %q lack %q", res.Notes, tt.noteLike)
			}
			if !res.OK || res.Current != dir || res.Engine != dir {
				t.Errorf("result %+v", res)
			}
		})
	}
}

func TestTorchVariant(t *testing.T) {
	tests := []struct {
		vllm, cuda, want string
		note, err        bool
	}{
		{"0.18.0", "11.8", "", false, true},
		{"0.18.0", "12.0", "cu126", false, false},
		{"0.18.0", "12.4", "cu126", false, false},
		{"0.18.0", "12.6", "cu126", false, false},
		{"0.18.0", "12.7", "cu126", false, false},
		{"0.18.0", "12.8", "cu128", false, false},
		{"0.18.0", "12.9", "cu129", false, false},
		{"0.18.0", "12.10", "cu129", false, false},
		{"0.18.0", "13.0", "cu129", false, false},
		{"0.19.1", "13.1", "cu129", false, false},
		{"0.20.0", "13.0", "cu130", false, false},
		{"0.20rc1", "13.2", "cu130", false, false},
		{"1.0.0", "14.0", "cu130", false, false},
		{"0.20.0", "12.8", "cu128", true, false},
		{"0.18.0", "garbage", "", false, true},
	}
	for _, tt := range tests {
		got, note, err := TorchVariant(tt.vllm, tt.cuda)
		if (err != nil) != tt.err || got != tt.want || (note != "") != tt.note {
			t.Errorf("TorchVariant(%s, %s) = %q, note %q, err %v; want %q note %v err %v", tt.vllm, tt.cuda, got, note, err, tt.want, tt.note, tt.err)
		}
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name string
		uv   bool
		opts Options
		want string
	}{
		{"bad version", false, Options{Version: "0.18.0; rm -rf /"}, "not a version"},
		{"path in version", false, Options{Version: "../x"}, "not a version"},
		{"pascal GPU", false, Options{Version: "0.18.0", GPU: gpuInfo("12.8", 6, 1)}, "compute capability 6.1: vLLM needs 7.0 or newer"},
		{"volta with AWQ", false, Options{Version: "0.18.0", GPU: gpuInfo("12.8", 7, 0), AWQ: map[int]bool{0: true}}, "AWQ kernels need 7.5"},
		{"CUDA 11 driver", false, Options{Version: "0.18.0", GPU: gpuInfo("11.8", 8, 0)}, "needs a driver for CUDA 12"},
		{"CUDA 11 driver with uv", true, Options{Version: "0.18.0", GPU: gpuInfo("11.8", 8, 0)}, "needs a driver for CUDA 12"},
		{"uv asked, none", false, Options{Version: "0.18.0", Installer: InstallerUV}, "uv is not in PATH"},
		{"unknown installer", false, Options{Version: "0.18.0", Installer: "conda"}, "unknown installer"},
		{"flag as find-links", false, Options{Version: "0.18.0", FindLinks: []string{"--pre"}}, "must be a directory or URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			f.uv = tt.uv
			m, _ := newManager(t, f)
			_, err := m.Install(t.Context(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to say %q", err, tt.want)
			}
			if n := len(f.commands()); n != 0 {
				t.Errorf("ran %d commands before refusing", n)
			}
			if _, err := os.Stat(m.Dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused install created %s", m.Dir)
			}
		})
	}
}

func link(t *testing.T, m *Manager, name string) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(m.Dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return target
}

func TestLifecycle(t *testing.T) {
	f := newFake()
	f.broken["0.18.2"] = true
	f.failing["0.99.0"] = true
	m, out := newManager(t, f)
	ctx := t.Context()
	install := func(v string, keep int) (*Result, error) {
		f.reset()
		return m.Install(ctx, Options{Version: v, FindLinks: []string{"/w"}, Keep: keep})
	}
	must := func(v string) *Result {
		t.Helper()
		res, err := install(v, DefaultKeep)
		if err != nil {
			t.Fatalf("install %s: %v\n%s", v, err, out)
		}
		return res
	}
	links := func() string { return link(t, m, CurrentLink) + " " + link(t, m, PreviousLink) }

	must("0.18.0")
	if got := links(); got != "vllm-0.18.0 " {
		t.Fatalf("after the first install: links %q", got)
	}
	if mk, ok := readMarker(filepath.Join(m.Dir, "vllm-0.18.0")); !ok || mk.Version != "0.18.0" || mk.Installer != "pip" {
		t.Errorf("marker %+v %v", mk, ok)
	}
	res := must("0.18.1")
	if got := links(); got != "vllm-0.18.1 vllm-0.18.0" {
		t.Fatalf("after the upgrade: links %q", got)
	}
	if res.Previous != filepath.Join(m.Dir, "vllm-0.18.0") {
		t.Errorf("result previous %q", res.Previous)
	}

	// The same version again: verified and reused, nothing installed.
	res = must("0.18.1")
	if !res.Reused || len(f.commands()) != 1 || links() != "vllm-0.18.1 vllm-0.18.0" {
		t.Errorf("reinstall: reused %v, commands %q, links %q", res.Reused, f.commands(), links())
	}

	// Rollback, and rollback again undoes it.
	f.reset()
	rb, err := m.Rollback(ctx)
	if err != nil || links() != "vllm-0.18.0 vllm-0.18.1" || rb.Version != "0.18.0" {
		t.Fatalf("rollback: %v, links %q, %+v", err, links(), rb)
	}
	if _, err := m.Rollback(ctx); err != nil || links() != "vllm-0.18.1 vllm-0.18.0" {
		t.Fatalf("second rollback: %v, links %q", err, links())
	}
	if _, err := m.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// A wheel that fails to import: the install fails in verify, says why,
	// removes what it built, and current stays.
	res, err = install("0.18.2", DefaultKeep)
	var ie *InstallError
	if !errors.As(err, &ie) || ie.Phase != "verify" {
		t.Fatalf("broken wheel: %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"RuntimeError: vllm 0.18.2 is broken", "full log: " + res.Log, "current engine is unchanged: " + filepath.Join(m.Dir, "vllm-0.18.0")} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if links() != "vllm-0.18.0 vllm-0.18.1" {
		t.Errorf("a failed install moved the links: %q", links())
	}
	if _, err := os.Stat(filepath.Join(m.Dir, "vllm-0.18.2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed engine was left behind: %v", err)
	}
	logData, _ := os.ReadFile(res.Log)
	if !strings.Contains(string(logData), "RuntimeError: vllm 0.18.2 is broken") || !strings.Contains(string(logData), "Successfully installed vllm-0.18.2") {
		t.Errorf("log %s lacks the installer output:\n%s", res.Log, logData)
	}
	if res.OK || res.Current != filepath.Join(m.Dir, "vllm-0.18.0") {
		t.Errorf("failed result %+v", res)
	}

	// A version pip cannot find: fails in install with pip's error.
	_, err = install("0.99.0", DefaultKeep)
	if !errors.As(err, &ie) || ie.Phase != "install" || !strings.Contains(err.Error(), "No matching distribution found for vllm==0.99.0") {
		t.Fatalf("missing version: %v", err)
	}

	// Prune: with keep 3, one engine besides current and previous stays.
	must("0.18.3") // current 0.18.3, previous 0.18.0: 0.18.1 goes (keep 2)
	if got := names(t, m); got != "vllm-0.18.0 vllm-0.18.3" {
		t.Errorf("after install with keep 2: engines %q", got)
	}
	if _, err := install("0.18.4", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := install("0.18.5", 3); err != nil {
		t.Fatal(err)
	}
	// current 0.18.5, previous 0.18.4, newest other 0.18.3; 0.18.0 goes.
	if got := names(t, m); got != "vllm-0.18.3 vllm-0.18.4 vllm-0.18.5" {
		t.Errorf("after installs with keep 3: engines %q", got)
	}
	// An engine a process runs from is never pruned.
	f.inUse["vllm-0.18.3"] = []int{4242}
	res, err = install("0.18.6", 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(t, m); got != "vllm-0.18.3 vllm-0.18.5 vllm-0.18.6" {
		t.Errorf("pruned an engine in use: %q", got)
	}
	if !strings.Contains(strings.Join(res.Notes, "\n"), "kept vllm-0.18.3: processes [4242]") {
		t.Errorf("notes %q", res.Notes)
	}
	// No pruning with a negative keep.
	delete(f.inUse, "vllm-0.18.3")
	if _, err := install("0.18.7", -1); err != nil {
		t.Fatal(err)
	}
	if got := names(t, m); got != "vllm-0.18.3 vllm-0.18.5 vllm-0.18.6 vllm-0.18.7" {
		t.Errorf("keep -1 pruned: %q", got)
	}
	pruned, err := m.Prune(2)
	if err != nil || len(pruned) != 2 || names(t, m) != "vllm-0.18.6 vllm-0.18.7" {
		t.Errorf("Prune(2) = %q, %v; engines %q", pruned, err, names(t, m))
	}
}

func names(t *testing.T, m *Manager) string {
	t.Helper()
	es, err := m.List()
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range es {
		ns = append(ns, e.Name)
	}
	// List is newest first; sort by name for stable comparisons.
	for i := range ns {
		for j := i + 1; j < len(ns); j++ {
			if ns[j] < ns[i] {
				ns[i], ns[j] = ns[j], ns[i]
			}
		}
	}
	return strings.Join(ns, " ")
}

// An interrupted build (no marker) is never reused: it is removed and built
// again.
func TestLeftoverIsRebuilt(t *testing.T) {
	f := newFake()
	m, out := newManager(t, f)
	left := filepath.Join(m.Dir, "vllm-0.18.0")
	if err := os.MkdirAll(filepath.Join(left, "lib", "junk"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.versions[left] = "0.18.0" // it would even import: no marker is what counts
	res, err := m.Install(t.Context(), Options{Version: "0.18.0"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reused || len(f.commands()) != 3 {
		t.Errorf("a leftover was reused: %+v %q", res, f.commands())
	}
	if _, err := os.Stat(filepath.Join(left, "lib", "junk")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover's files survived")
	}
	if !strings.Contains(out.String(), "removing vllm-0.18.0, left unfinished by an earlier install") {
		t.Errorf("progress does not say so:\n%s", out)
	}
}

// A current engine that no longer verifies is not deleted under running
// agents: the reinstall goes beside it.
func TestDamagedCurrentIsRebuiltBeside(t *testing.T) {
	f := newFake()
	m, _ := newManager(t, f)
	if _, err := m.Install(t.Context(), Options{Version: "0.18.0"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(m.Dir, "vllm-0.18.0")
	delete(f.versions, dir) // someone broke it
	f.reset()
	res, err := m.Install(t.Context(), Options{Version: "0.18.0"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Engine != dir+"-2" || link(t, m, CurrentLink) != "vllm-0.18.0-2" || link(t, m, PreviousLink) != "vllm-0.18.0" {
		t.Errorf("engine %s, links %s %s", res.Engine, link(t, m, CurrentLink), link(t, m, PreviousLink))
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("the damaged current engine was removed: %v", err)
	}
}

func TestRollbackRefusals(t *testing.T) {
	f := newFake()
	m, _ := newManager(t, f)
	if _, err := m.Rollback(t.Context()); err == nil || !strings.Contains(err.Error(), "no engines installed") {
		t.Errorf("rollback with nothing: %v", err)
	}
	if _, err := m.Install(t.Context(), Options{Version: "0.18.0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Rollback(t.Context()); err == nil || !strings.Contains(err.Error(), "no previous engine") {
		t.Errorf("rollback without previous: %v", err)
	}
	if _, err := m.Install(t.Context(), Options{Version: "0.18.1"}); err != nil {
		t.Fatal(err)
	}
	delete(f.versions, filepath.Join(m.Dir, "vllm-0.18.0"))
	_, err := m.Rollback(t.Context())
	if err == nil || !strings.Contains(err.Error(), "does not verify") || !strings.Contains(err.Error(), "No module named 'vllm'") {
		t.Errorf("rollback to a broken engine: %v", err)
	}
	if link(t, m, CurrentLink) != "vllm-0.18.1" {
		t.Errorf("a refused rollback moved current")
	}
}

func TestConcurrentInstallIsRefused(t *testing.T) {
	f := newFake()
	m, _ := newManager(t, f)
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(filepath.Join(m.Dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	_, err = m.Install(t.Context(), Options{Version: "0.18.0"})
	if !errors.Is(err, ErrBusy) {
		t.Errorf("install under a held lock: %v", err)
	}
}

// TestProgress pins the progress output of an install: a line per phase
// with the elapsed time, and the installer's output summarised.
func TestProgress(t *testing.T) {
	f := newFake()
	m, out := newManager(t, f)
	res, err := m.Install(t.Context(), Options{Version: "0.18.0", GPU: gpuInfo("12.8", 8, 9), IndexURL: "https://user:secret@mirror/simple"})
	if err != nil {
		t.Fatal(err)
	}
	want := `[   0.1s] engine: vLLM 0.18.0 into @D@ (pip, python python3); full log: @LOG@
[   0.2s] note: index URL set: no PyTorch CUDA index added (the driver supports CUDA 12.8); give the mirror of https://download.pytorch.org/whl/cu128 with --extra-index-url if torch must come from it
[   0.3s] create: python3 -m venv @D@
[   0.4s] install: @D@/bin/python -m pip install --progress-bar off vllm==0.18.0 --index-url 'https://***@mirror/simple'
           Collecting vllm==0.18.0
           Downloading vllm-0.18.0.whl (400 MB)
           Installing collected packages: vllm
           Successfully installed vllm-0.18.0
[   0.7s] verify: @D@/bin/python -c 'import vllm; print(vllm.__version__)'
           imports vllm 0.18.0
[   0.9s] switch: current -> vllm-0.18.0
[   1.0s] done: vLLM 0.18.0 is the current engine; running agents keep theirs until restarted (vagentctl restart NAME)
`
	want = strings.NewReplacer("@LOG@", res.Log, "@D@", filepath.Join(m.Dir, "vllm-0.18.0")).Replace(want)
	if out.String() != want {
		t.Errorf("progress:\n%s\nwant:\n%s", out, want)
	}
	if strings.Contains(readFile(t, res.Log), "secret") {
		t.Errorf("the log shows the index password")
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSummaryCountsAndThrottles(t *testing.T) {
	now := time.Unix(0, 0)
	var out bytes.Buffer
	p := &progress{out: &out, now: func() time.Time { return now }, start: now}
	var log bytes.Buffer
	s := newSummary(&log, p)
	write := func(s2 string) { _, _ = io.WriteString(s, s2) }
	write("Looking in links: /w\nCollecting vllm==0.18.0\n")
	for i := 0; i < 50; i++ {
		now = now.Add(100 * time.Millisecond)
		write(fmt.Sprintf("Collecting dep%d\n  Downloading dep%d.whl (1 MB)\n", i, i))
	}
	write("Installing collected packages: " + strings.Repeat("pkg, ", 60) + "vllm\n")
	write("[notice] A new release of pip is available\nprogress 10%\rprogress 100%\rSuccessfully installed vllm-0.18.0")
	s.flush()
	got := out.String()
	lines := strings.Split(strings.TrimSpace(got), "\n")
	// 5 seconds of Collecting lines shown every 3 s: the first, one at
	// 3 s, and none at the end because the last counted one came before
	// "Installing".
	if n := strings.Count(got, "Collecting"); n < 2 || n > 4 {
		t.Errorf("%d Collecting lines shown:\n%s", n, got)
	}
	if !strings.Contains(got, "packages so far)") {
		t.Errorf("no running count:\n%s", got)
	}
	if !strings.HasSuffix(lines[len(lines)-1], "Successfully installed vllm-0.18.0") {
		t.Errorf("last line %q", lines[len(lines)-1])
	}
	for _, l := range lines {
		if len(strings.TrimSpace(l)) > shownWidth {
			t.Errorf("line longer than %d: %q", shownWidth, l)
		}
	}
	if strings.Contains(got, "[notice]") || strings.Contains(got, "progress") {
		t.Errorf("noise shown:\n%s", got)
	}
	if !strings.Contains(log.String(), "dep49.whl") || !strings.Contains(log.String(), "[notice]") {
		t.Errorf("the log is not complete")
	}
	tail := s.lastLines()
	if len(tail) != tailLines || tail[len(tail)-1] != "Successfully installed vllm-0.18.0" {
		t.Errorf("tail %q", tail)
	}
}

func TestVersionHelpers(t *testing.T) {
	for _, v := range []string{"0.18.0", "0.18.0rc1", "0.18.0.post1", "0.18.0+cu128", "1", "0.20.0.dev3"} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%q): %v", v, err)
		}
	}
	for _, v := range []string{"", "latest", "0.18.0/..", "-1", "0.18 .0", "0.18.0;x", "0.18.0+"} {
		if CheckVersion(v) == nil {
			t.Errorf("CheckVersion(%q) passed", v)
		}
	}
	for _, c := range []struct {
		got, want string
		ok        bool
	}{
		{"0.18.0", "0.18.0", true}, {"0.18.0+cu128", "0.18.0", true}, {"0.18.1", "0.18.0", false},
		{"0.18.0+cu128", "0.18.0+cu126", false}, {"", "0.18.0", false},
	} {
		if versionMatches(c.got, c.want) != c.ok {
			t.Errorf("versionMatches(%q, %q) != %v", c.got, c.want, c.ok)
		}
	}
}
