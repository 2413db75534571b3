package venv

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/gpu"

	"github.com/vagent-dev/vagent/engine"
)

// TorchIndexBase is where PyTorch publishes its wheels per CUDA variant
// (TorchIndexBase + "cu128").
const TorchIndexBase = "https://download.pytorch.org/whl/"

// versionRE accepts PEP 440 versions as people write them ("0.18.0",
// "0.18.0rc1", "0.18.0.post1", "0.18.0+cu128"): a version becomes part of a
// directory name and a requirement, so nothing else gets through.
var versionRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*([a-zA-Z0-9.]*)(\+[a-zA-Z0-9.]+)?$`)

// CheckVersion refuses a string that is not a plain vLLM version.
func CheckVersion(v string) error {
	if !versionRE.MatchString(v) {
		return fmt.Errorf("vLLM version %q is not a version such as 0.18.0", v)
	}
	return nil
}

// TorchVariant is the PyTorch CUDA variant pip should install for vLLM
// vllmVersion on a driver that supports CUDA driverCUDA ("12.8"): the newest
// variant the driver runs and vLLM's binaries were built for.
//
//	driver CUDA        vLLM < 0.20   vLLM >= 0.20
//	below 12.0         refused: vLLM needs a CUDA 12 driver
//	12.0 - 12.7        cu126         cu126 (and a note: vLLM's default wheels need CUDA 13)
//	12.8               cu128         cu128 (same note)
//	12.9 and later 12  cu129         cu129 (same note)
//	13.0 and later     cu129         cu130
//
// CUDA drivers run code built for an older CUDA of the same or a lower major
// version, so a newer driver than any variant takes the newest variant vLLM
// was built against: vLLM's binaries are CUDA 12.9 up to 0.19 and CUDA 13
// from 0.20. Drivers older than 12.6 run the cu126 wheels through CUDA's
// minor-version compatibility. The note says what a CUDA 12 driver needs for
// vLLM 0.20 and later.
func TorchVariant(vllmVersion, driverCUDA string) (variant, note string, err error) {
	major, minor, ok := majorMinor(driverCUDA)
	if !ok {
		return "", "", fmt.Errorf("cannot read the driver's CUDA version %q", driverCUDA)
	}
	cuda13 := engine.CUDA13Wheels(vllmVersion)
	switch {
	case major < 12:
		return "", "", fmt.Errorf("the NVIDIA driver supports CUDA %s only; vLLM needs a driver for CUDA 12 or newer: upgrade the driver", driverCUDA)
	case major >= 13 && cuda13:
		return "cu130", "", nil
	case major >= 13:
		return "cu129", "", nil
	}
	switch {
	case minor >= 9:
		variant = "cu129"
	case minor == 8:
		variant = "cu128"
	default:
		variant = "cu126"
	}
	if cuda13 {
		note = fmt.Sprintf("vLLM %s's default wheels are built for CUDA 13 and this driver supports CUDA %s: upgrade the driver, or add vLLM's CUDA 12 wheel index with --extra-index-url", vllmVersion, driverCUDA)
	}
	return variant, note, nil
}

func majorMinor(v string) (int, int, bool) {
	a, b, _ := strings.Cut(strings.TrimSpace(v), ".")
	major, err1 := strconv.Atoi(a)
	minor, err2 := strconv.Atoi(b)
	if b == "" {
		minor, err2 = 0, nil
	}
	return major, minor, err1 == nil && err2 == nil
}

// CheckGPUs refuses devices vLLM cannot run on (compute capability below
// 7.0, or below 7.5 for a device in awq). nil info means no driver: nothing
// to check.
func CheckGPUs(info *gpu.Info, awq map[int]bool) error {
	if info == nil {
		return nil
	}
	var errs []string
	for _, d := range info.Devices {
		if err := gpu.CheckComputeCapability(d, awq[d.Index]); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("refusing to install vLLM: %s", strings.Join(errs, "; "))
	}
	return nil
}

// plan is the commands of one install, decided before anything runs.
type plan struct {
	installer string // "uv" or "pip"
	uv        string // uv's path when installer is uv
	python    string
	dir       string
	version   string
	offline   bool
	backend   string // Result.TorchBackend
	warnings  []string
	notes     []string
	env       []string
}

// newPlan decides how to install o into dir. uvPath is uv's path, "" when
// uv is not installed.
func newPlan(o Options, dir, uvPath string) (*plan, error) {
	p := &plan{dir: dir, version: o.Version, python: o.Python}
	switch o.Installer {
	case "", InstallerAuto:
		p.installer = InstallerPip
		if uvPath != "" {
			p.installer = InstallerUV
		}
	case InstallerUV:
		if uvPath == "" {
			return nil, fmt.Errorf("installer uv asked for, but uv is not in PATH (install uv, or use --installer pip)")
		}
		p.installer = InstallerUV
	case InstallerPip:
		p.installer = InstallerPip
	default:
		return nil, fmt.Errorf("unknown installer %q (want auto, uv or pip)", o.Installer)
	}
	if p.installer == InstallerUV {
		p.uv = uvPath
	}
	if p.python == "" {
		p.python = "python3"
		if p.installer == InstallerUV {
			p.python = "3.12"
		}
	}
	for _, u := range append([]string{o.IndexURL}, o.ExtraIndexURLs...) {
		if strings.HasPrefix(u, "-") {
			return nil, fmt.Errorf("index URL %q must not start with '-'", u)
		}
	}
	for _, f := range o.FindLinks {
		if f == "" || strings.HasPrefix(f, "-") {
			return nil, fmt.Errorf("find-links %q must be a directory or URL", f)
		}
	}
	if strings.HasPrefix(p.python, "-") {
		return nil, fmt.Errorf("python %q must not start with '-'", p.python)
	}
	p.offline = o.IndexURL == "" && len(o.ExtraIndexURLs) == 0 && len(o.FindLinks) > 0

	// The CUDA variant of PyTorch.
	switch {
	case o.GPU == nil:
		why := o.NoGPU
		if why == "" {
			why = "no NVIDIA driver"
		}
		p.warnings = append(p.warnings, "no CUDA variant chosen and no GPU checked: "+why+" (fine for the simulator; a real engine needs the driver)")
	case p.offline:
		p.notes = append(p.notes, fmt.Sprintf("offline install: PyTorch's CUDA variant is whatever the wheel directories hold (the driver supports CUDA %s)", o.GPU.CUDA))
	case o.IndexURL != "":
		p.notes = append(p.notes, fmt.Sprintf("index URL set: no PyTorch CUDA index added (the driver supports CUDA %s); give the mirror of %s with --extra-index-url if torch must come from it", o.GPU.CUDA, torchIndexHint(o)))
	case p.installer == InstallerUV:
		if _, _, err := TorchVariant(o.Version, o.GPU.CUDA); err != nil {
			return nil, err
		}
		p.backend = "auto"
	default:
		variant, note, err := TorchVariant(o.Version, o.GPU.CUDA)
		if err != nil {
			return nil, err
		}
		p.backend = variant
		if note != "" {
			p.notes = append(p.notes, note)
		}
	}

	if o.CacheDir != "" {
		if p.installer == InstallerUV {
			p.env = append(p.env, "UV_CACHE_DIR="+filepath.Join(o.CacheDir, "uv"))
		} else {
			p.env = append(p.env, "PIP_CACHE_DIR="+filepath.Join(o.CacheDir, "pip"))
		}
	}
	if p.installer == InstallerPip {
		p.env = append(p.env, "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1")
	}
	return p, nil
}

// environ is the environment added to the installer's commands.
func (p *plan) environ() []string {
	env := append([]string(nil), p.env...)
	if p.installer == InstallerUV {
		// Interpreters uv downloads live beside the engines, not in root's
		// home, so that an engine user other than root can run them.
		env = append(env, "UV_PYTHON_INSTALL_DIR="+filepath.Join(filepath.Dir(p.dir), "python"))
	}
	return env
}

func torchIndexHint(o Options) string {
	if v, _, err := TorchVariant(o.Version, o.GPU.CUDA); err == nil {
		return TorchIndexBase + v
	}
	return TorchIndexBase + "cu129"
}

// python is the venv's interpreter.
func (p *plan) venvPython() string { return filepath.Join(p.dir, "bin", "python") }

// create is the command that makes the empty venv.
func (p *plan) create() Cmd {
	if p.installer == InstallerUV {
		args := []string{p.uv, "venv", "--python", p.python}
		if !p.offline {
			// --seed puts pip in the venv; uv fetches it from the index,
			// which an offline install does not have.
			args = append(args, "--seed")
		}
		return Cmd{Args: append(args, p.dir), Env: p.environ()}
	}
	return Cmd{Args: []string{p.python, "-m", "venv", p.dir}, Env: p.environ()}
}

// install is the command that installs vllm==version into the venv.
func (p *plan) install(o Options) Cmd {
	var args []string
	if p.installer == InstallerUV {
		args = []string{p.uv, "pip", "install", "--python", p.venvPython(), engine.VLLMRequirement(p.version)}
	} else {
		args = []string{p.venvPython(), "-m", "pip", "install", "--progress-bar", "off", engine.VLLMRequirement(p.version)}
	}
	if p.offline {
		args = append(args, "--no-index")
	}
	if o.IndexURL != "" {
		args = append(args, "--index-url", o.IndexURL)
	}
	for _, u := range o.ExtraIndexURLs {
		args = append(args, "--extra-index-url", u)
	}
	for _, f := range o.FindLinks {
		args = append(args, "--find-links", f)
	}
	switch {
	case p.backend == "":
	case p.installer == InstallerUV:
		args = append(args, "--torch-backend="+p.backend)
	default:
		args = append(args, "--extra-index-url", TorchIndexBase+p.backend)
	}
	return Cmd{Args: args, Env: p.environ()}
}

// verifyCmd prints the vllm version the venv at dir imports.
func verifyCmd(dir string) Cmd {
	return Cmd{Args: []string{filepath.Join(dir, "bin", "python"), "-c", engine.VLLMVersionScript}}
}

// versionMatches reports whether the imported version got is the one asked
// for: equal, or equal up to a local label ("0.18.0+cu128" for "0.18.0").
func versionMatches(got, want string) bool {
	if got == want {
		return true
	}
	base, _, hasLocal := strings.Cut(got, "+")
	return hasLocal && !strings.Contains(want, "+") && base == want
}

// redact hides credentials in URLs (https://user:token@mirror/...) so that
// progress lines and the log can be shown.
func redact(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = redactURL(a)
	}
	return out
}

func redactURL(s string) string {
	if !strings.Contains(s, "://") || !strings.Contains(s, "@") {
		return s
	}
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	u.User = nil
	return strings.Replace(u.String(), "://", "://***@", 1)
}

// quote renders a command line for people: words with spaces or quotes are
// single-quoted.
func quote(args []string) string {
	parts := make([]string, len(args))
	for i, a := range redact(args) {
		if a == "" || strings.ContainsAny(a, " \t'\"\\$;&|<>*?()") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}
