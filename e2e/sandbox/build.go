package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
)

// The build cache holds each main package built once per test binary, so that
// every sandbox of a run gets the same binaries for the price of one build.
var cache struct {
	mu      sync.Mutex
	dir     string
	entries map[string]*buildEntry
}

type buildEntry struct {
	once sync.Once
	path string
	err  error
}

// BuildBinaries builds the given main packages of this module ("./cmd/vagentctl"
// or full import paths) and puts each binary, named after the package's last
// element, into dir. Each package is built once per test binary; later calls
// copy the cached result. The go command is $GO if set, else "go" from PATH
// (go test puts its own first).
func BuildBinaries(ctx context.Context, dir string, pkgs ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("build binaries: %w", err)
	}
	for _, pkg := range pkgs {
		bin, err := buildCached(ctx, pkg)
		if err != nil {
			return err
		}
		if err := copyFile(bin, filepath.Join(dir, path.Base(pkg)), 0o755); err != nil {
			return fmt.Errorf("install %s: %w", path.Base(pkg), err)
		}
	}
	return nil
}

// Build is BuildBinaries into the sandbox's BinDir, which is first in PATH
// for commands run inside.
func (s *Sandbox) Build(ctx context.Context, pkgs ...string) error {
	return BuildBinaries(ctx, s.BinDir(), pkgs...)
}

// CleanBuildCache removes this test binary's build cache. Main calls it.
func CleanBuildCache() {
	cache.mu.Lock()
	defer cache.mu.Unlock()
	if cache.dir != "" {
		os.RemoveAll(cache.dir)
		cache.dir, cache.entries = "", nil
	}
}

func buildCached(ctx context.Context, pkg string) (string, error) {
	cache.mu.Lock()
	if cache.entries == nil {
		cache.entries = map[string]*buildEntry{}
	}
	if cache.dir == "" {
		d, err := newCacheDir()
		if err != nil {
			cache.mu.Unlock()
			return "", err
		}
		cache.dir = d
	}
	e := cache.entries[pkg]
	if e == nil {
		e = &buildEntry{}
		cache.entries[pkg] = e
	}
	dir := cache.dir
	cache.mu.Unlock()

	e.once.Do(func() {
		e.path, e.err = goBuild(ctx, dir, pkg)
	})
	return e.path, e.err
}

// newCacheDir makes the cache beside the sandboxes (so copies may stay on
// one file system), marked with its owner so that sweepStale removes it if
// this process dies without Main.
func newCacheDir() (string, error) {
	base := os.Getenv(EnvBaseDir)
	if base == "" {
		base = DefaultBaseDir
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		// Not root, or no such base: any private directory will do.
		base = ""
	}
	d, err := os.MkdirTemp(base, "build-")
	if err != nil {
		return "", fmt.Errorf("build cache: %w", err)
	}
	if err := writeOwnerFile(filepath.Join(d, "owner"), owner{PID: os.Getpid(), StartTime: procStartTime(os.Getpid())}); err != nil {
		os.RemoveAll(d)
		return "", err
	}
	return d, nil
}

func goBuild(ctx context.Context, cacheDir, pkg string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goCmd := os.Getenv("GO")
	if goCmd == "" {
		goCmd = "go"
	}
	out := filepath.Join(cacheDir, strings.NewReplacer("/", "_", ".", "_").Replace(pkg), path.Base(pkg))
	cmd := exec.CommandContext(ctx, goCmd, "build", "-o", out, pkg)
	cmd.Dir = root
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return out, nil
}

// moduleRoot is the nearest directory at or above the working directory
// that holds go.mod.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		up := filepath.Dir(d)
		if up == d {
			return "", errors.New("build binaries: no go.mod at or above the working directory")
		}
		d = up
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}
