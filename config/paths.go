package config

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Linux's limits on names. systemd ignores a path directive whose value
// breaks them (or is not normalized) with only a warning: for
// EnvironmentFile= that means an engine started without its API key, so
// every configured path is checked against them at load.
const (
	// PathMax is PATH_MAX: a path and its terminating NUL.
	PathMax = 4096
	// NameMax is NAME_MAX: the longest component of a path.
	NameMax = 255
	// DirMax is the longest directory vagent accepts: any file name
	// (NameMax bytes) below it still makes a path under PathMax.
	DirMax = PathMax - 1 - (1 + NameMax)
	// SocketPathMax is the longest path of a unix socket: sun_path holds
	// 108 bytes with the NUL.
	SocketPathMax = 107
	// UserNameMax is the longest user or group name systemd accepts under
	// its strict rules: it must fit utmp's 32-byte field with its NUL.
	UserNameMax = 31
)

// userNameRE is systemd's strict rule for user and group names (lowercase
// only, as useradd wants by default). A name outside it is accepted by
// systemd's relaxed mode with a notice, or refused, and the unit then fails
// to load.
var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]*$`)

// CheckPath reports why p cannot stand for itself as an absolute path in a
// unit file, to systemd and to the kernel: it must be absolute, normalized
// (no ".", ".." or empty components, no trailing slash), without control
// characters, valid UTF-8, with components of at most NameMax bytes and at
// most PathMax-1 bytes in all.
func CheckPath(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case !utf8.ValidString(p):
		return errors.New("must be valid UTF-8")
	case strings.ContainsFunc(p, isControl):
		return errors.New("must not contain control characters (tab, newline, escape...)")
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("must be an absolute path, not %q", p)
	}
	if err := checkComponents(p); err != nil {
		return err
	}
	if c := path.Clean(p); c != p {
		return fmt.Errorf("%q is not normalized (systemd would ignore it): write %q", p, c)
	}
	if len(p) >= PathMax {
		return fmt.Errorf("is %d bytes, longer than PATH_MAX allows (%d)", len(p), PathMax-1)
	}
	return nil
}

// checkDir is CheckPath for a directory, which must also leave room for the
// files vagent puts in it.
func checkDir(p string) error {
	if err := CheckPath(p); err != nil {
		return err
	}
	if len(p) > DirMax {
		return fmt.Errorf("is %d bytes; a directory may have at most %d, so that every file in it stays under PATH_MAX (%d)", len(p), DirMax, PathMax)
	}
	return nil
}

// checkComponents refuses "." and ".." components, which systemd reads as
// not normalized (and ignores the directive), and components longer than
// NAME_MAX, which no file system can hold.
func checkComponents(p string) error {
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "." || c == "..":
			return fmt.Errorf("%q has a %q component: systemd ignores paths that are not normalized; write the path without it", p, c)
		case len(c) > NameMax:
			return fmt.Errorf("has a component of %d bytes, longer than NAME_MAX allows (%d)", len(c), NameMax)
		}
	}
	return nil
}

// checkRelative refuses in a relative path what CheckPath refuses in an
// absolute one, except "." components ("./models/x" is how a relative model
// is written).
func checkRelative(p string) error {
	switch {
	case !utf8.ValidString(p):
		return errors.New("must be valid UTF-8")
	case strings.ContainsFunc(p, isControl):
		return errors.New("must not contain control characters (tab, newline, escape...)")
	}
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "..":
			return fmt.Errorf("%q has a \"..\" component: write an absolute path instead", p)
		case len(c) > NameMax:
			return fmt.Errorf("has a component of %d bytes, longer than NAME_MAX allows (%d)", len(c), NameMax)
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// IsLocalModel reports whether an agent's model names a directory on this
// host (an absolute path, or one relative to the agent file starting with
// ".") rather than a Hugging Face repository.
func IsLocalModel(model string) bool {
	return strings.HasPrefix(model, "/") || strings.HasPrefix(model, ".")
}

// checkPaths checks every path of the main file; a path that must be set
// only in some setups (the venv with the vllm engine) is checked whenever it
// is set.
func (c *Config) checkPaths(f *fieldChecker) {
	need := func(field, p string, required bool, check func(string) error) {
		if p == "" && !required {
			return
		}
		if err := check(p); err != nil {
			f.fail(field, "%v", err)
		}
	}
	need("engine.venv", c.Engine.Venv, c.Engine.Kind == EngineVLLM, checkDir)
	need("engine.sim_binary", c.Engine.SimBinary, c.Engine.Kind == EngineSim, CheckPath)
	need("paths.unit_dir", c.Paths.UnitDir, true, checkDir)
	need("paths.state_dir", c.Paths.StateDir, true, checkDir)
	need("paths.run_dir", c.Paths.RunDir, true, checkDir)
	need("paths.hf_home", c.Paths.HFHome, true, checkDir)
	need("paths.cache_dir", c.Paths.CacheDir, true, checkDir)
	need("gpu.sim_ledger", c.GPU.SimLedger, c.GPU.Backend != GPUBackendNVML || c.Engine.Kind == EngineSim, CheckPath)
	need("gateway.keys_file", c.Gateway.KeysFile, false, CheckPath)
	need("gateway.control_socket", c.Gateway.ControlSocket, true, func(p string) error {
		if err := CheckPath(p); err != nil {
			return err
		}
		if len(p) > SocketPathMax {
			return fmt.Errorf("is %d bytes; a unix socket's path may have at most %d", len(p), SocketPathMax)
		}
		return nil
	})
	// Relative to the main file, so it may be relative itself; ".." is
	// refused like everywhere else: an absolute path says the same plainly.
	need("paths.agents_dir", c.Paths.AgentsDir, true, func(p string) error {
		if filepath.IsAbs(p) {
			return checkDir(p)
		}
		return checkRelative(p)
	})
	checkUserName(f, "units.user", "user", c.Units.User)
	checkUserName(f, "units.group", "group", c.Units.Group)
	checkUserName(f, "gateway.control_group", "group", c.Gateway.ControlGroup)
}

// checkUserName refuses a user or group name outside systemd's strict rule,
// which is also what useradd accepts by default.
func checkUserName(f *fieldChecker, field, what, name string) {
	switch {
	case name == "":
	case len(name) > UserNameMax:
		f.fail(field, "a %s name is at most %d characters (systemd's limit), not %d", what, UserNameMax, len(name))
	case !userNameRE.MatchString(name):
		f.fail(field, "%q is not a valid %s name: a lowercase letter or '_', then lowercase letters, digits, '_' or '-'", name, what)
	}
}

// resolveModel makes a local model directory absolute: a relative one is
// taken relative to the agent file's directory (engines run from "/", and
// vagentctl from anywhere), so that validation, plan and the rendered
// command line all see the same directory. It reports false, after
// recording why, when the path cannot be used.
func (a *Agent) resolveModel(f *fieldChecker) bool {
	m, ok := a.resolveLocal(f, "model", a.Model, true)
	if ok {
		a.Model = m
	}
	return ok
}

// IsChatTemplateFile reports whether chat_template names a file on this
// host rather than holding the template itself (or naming one of vLLM's
// built-in templates): it starts like a path and has no Jinja braces.
func IsChatTemplateFile(t string) bool {
	return (strings.HasPrefix(t, "/") || strings.HasPrefix(t, ".")) && !strings.ContainsAny(t, "{}")
}

// resolveChatTemplate makes a chat template file absolute as resolveModel
// does a model: vLLM opens it from the engine's working directory, "/".
func (a *Agent) resolveChatTemplate(f *fieldChecker) {
	if !IsChatTemplateFile(a.ChatTemplate) {
		return
	}
	if p, ok := a.resolveLocal(f, "chat_template", a.ChatTemplate, false); ok {
		a.ChatTemplate = p
	}
}

// resolveLocal checks the path p of field, made absolute against the agent
// file's directory when relative, and that it is an existing directory
// (dir) or file.
func (a *Agent) resolveLocal(f *fieldChecker, field, p string, dir bool) (string, bool) {
	abs := p
	if !filepath.IsAbs(abs) {
		if err := checkRelative(p); err != nil {
			f.fail(field, "%v", err)
			return "", false
		}
		base, err := filepath.Abs(filepath.Dir(a.File))
		if err != nil {
			f.fail(field, "resolve %q against the agent file's directory: %v", p, err)
			return "", false
		}
		abs = filepath.Join(base, p)
	}
	check, what := CheckPath, "file"
	if dir {
		check, what = checkDir, "directory"
	}
	if err := check(abs); err != nil {
		f.fail(field, "%v", err)
		return "", false
	}
	if st, err := os.Stat(abs); err != nil || st.IsDir() != dir {
		if abs != p {
			f.fail(field, "%q (%s, relative to the agent file) is a path but not an existing %s", p, abs, what)
		} else {
			f.fail(field, "%q is a path but not an existing %s", p, what)
		}
		return "", false
	}
	return abs, true
}
