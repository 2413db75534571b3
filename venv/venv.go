// Package venv manages the Python virtual environments ("engines") that hold
// vLLM: it builds a pinned vLLM version into a new venv under
// <state_dir>/engines, verifies it by importing vllm, and switches the link
// engines/current to it atomically, so that running agents keep the engine
// they started with until they are restarted while new starts get the new
// one. The link engines/previous remembers the engine before, for Rollback;
// Prune removes engines beyond a count, never the current or previous one.
//
// Layout of Manager.Dir (<state_dir>/engines):
//
//	vllm-0.18.0/                 one engine: a venv with vllm==0.18.0
//	vllm-0.18.0/.vagent-engine.json  written last, once the engine verified
//	current -> vllm-0.18.0       what engine.venv names; units run current/bin/vllm
//	previous -> vllm-0.17.1      what Rollback returns to
//	install-0.18.0-20260102T150405Z.log  each install's full log
//	.lock                        held while an install or rollback runs
//
// A venv is built at the path it will be used from, because a venv is not
// relocatable: its console scripts (bin/vllm, which units exec) start with
// the absolute path of its interpreter. An engine counts as installed only
// once its marker file exists, and the marker is written after the import
// check passed, so an interrupted build is never switched to: the next
// install removes it and builds again.
//
// All process execution goes through OS, so that tests can assert the exact
// commands (uv or pip, index options, offline mode, the CUDA variant)
// without running them.
package venv

import (
	"context"
	"io"
	"time"

	"github.com/vagent-dev/vagent/gpu"
)

// Installer names.
const (
	InstallerAuto = "auto"
	InstallerUV   = "uv"
	InstallerPip  = "pip"
)

// Names of the links in Manager.Dir.
const (
	CurrentLink  = "current"
	PreviousLink = "previous"
)

// MarkerFile is written inside an engine once it has verified; an engine
// directory without it is an interrupted build.
const MarkerFile = ".vagent-engine.json"

// DefaultKeep is how many engines Prune keeps by default: the current and
// the previous one.
const DefaultKeep = 2

// Cmd is one command the manager runs.
type Cmd struct {
	// Args is the program and its arguments; Args[0] is looked up in PATH
	// when it has no slash.
	Args []string
	// Env is added to the manager's own environment ("KEY=value").
	Env []string
	// Stdout and Stderr receive the command's output.
	Stdout, Stderr io.Writer
}

// OS is the manager's access to the host's processes, injected so that
// tests can fake it. Files are always real (tests use a temporary Dir).
type OS struct {
	// Run runs c to completion; a non-zero exit is an error. Cancelling ctx
	// kills the command and everything it started.
	Run func(ctx context.Context, c Cmd) error
	// LookPath finds an executable in PATH (exec.LookPath).
	LookPath func(name string) (string, error)
	// Now is the clock, for elapsed times and log names.
	Now func() time.Time
	// InUse lists the PIDs of processes running from the engine directory
	// dir, so that Prune does not delete an engine an agent still runs.
	InUse func(dir string) []int
}

// Host is OS backed by the real host.
func Host() OS {
	return OS{Run: runHost, LookPath: lookPath, Now: time.Now, InUse: inUse}
}

// Manager builds, switches and prunes the engines under Dir.
type Manager struct {
	// Dir is <state_dir>/engines.
	Dir string
	// OS runs the installers; the zero value means Host().
	OS OS
	// Out receives progress lines (nil: discarded).
	Out io.Writer
	// Timeouts bound the phases; zero fields take DefaultTimeouts.
	Timeouts Timeouts
}

// Timeouts bound each phase of an install. An install downloads gigabytes
// (torch, CUDA libraries), hence its long bound; cancelling the context
// stops any phase at once.
type Timeouts struct {
	Create  time.Duration
	Install time.Duration
	Verify  time.Duration
}

// DefaultTimeouts are used for zero fields of Manager.Timeouts.
var DefaultTimeouts = Timeouts{Create: 10 * time.Minute, Install: 2 * time.Hour, Verify: 10 * time.Minute}

// Options say what to install and how.
type Options struct {
	// Version is the vLLM version to pin (vllm==Version).
	Version string
	// Installer is "auto" (uv when in PATH, else pip), "uv" or "pip"; empty
	// means "auto".
	Installer string
	// Python is the interpreter to build the venv with; empty means
	// "python3" for pip and "3.12" for uv.
	Python string
	// IndexURL replaces PyPI; ExtraIndexURLs are searched besides it;
	// FindLinks are wheel directories or pages. FindLinks without any index
	// makes the install offline (--no-index).
	IndexURL       string
	ExtraIndexURLs []string
	FindLinks      []string
	// GPU is what the NVIDIA driver reports, restricted to the devices the
	// engines will use; nil when there is no driver, and then NoGPU says
	// why. It picks the CUDA variant of the PyTorch wheels and refuses GPUs
	// vLLM cannot run on.
	GPU   *gpu.Info
	NoGPU string
	// AWQ marks the GPU indexes that will run AWQ-quantized models, whose
	// kernels need compute capability 7.5.
	AWQ map[int]bool
	// CacheDir, when set, holds the installers' download caches
	// (CacheDir/pip, CacheDir/uv), so that they stay out of root's home and
	// a rebuild does not download again.
	CacheDir string
	// Keep is how many engines Prune keeps after the install, the current
	// and previous ones included; below 2 still keeps those two. Negative
	// means no pruning.
	Keep int
}

// Result describes what an install or rollback did; it is also the JSON
// summary of `vagentctl install --json`.
type Result struct {
	// Action is "install" or "rollback".
	Action string `json:"action"`
	OK     bool   `json:"ok"`
	// Error is set in the summary of a failed run.
	Error string `json:"error,omitempty"`
	// Version is the vLLM version of Engine.
	Version string `json:"version"`
	// Engine is the engine directory installed, reused or rolled back to.
	Engine string `json:"engine"`
	// Reused is true when Engine existed already and verified.
	Reused bool `json:"reused"`
	// Current and Previous are where the links point afterwards.
	Current  string `json:"current"`
	Previous string `json:"previous,omitempty"`
	// Installer is "uv" or "pip", with the interpreter it was given.
	Installer string `json:"installer,omitempty"`
	Python    string `json:"python,omitempty"`
	// Offline is true when only find-links were used (--no-index).
	Offline bool `json:"offline,omitempty"`
	// CUDA is the driver's CUDA version, "" without a driver.
	CUDA string `json:"cuda,omitempty"`
	// TorchBackend is the PyTorch variant asked for: "cu128" (pip's extra
	// index), "auto" (uv's --torch-backend), or "" (none chosen).
	TorchBackend string `json:"torch_backend,omitempty"`
	// Log is the install's full log.
	Log string `json:"log,omitempty"`
	// Pruned lists the engine directories removed.
	Pruned []string `json:"pruned"`
	// Notes are warnings and decisions worth knowing (no driver, the CUDA
	// choice skipped, config to update).
	Notes          []string `json:"notes"`
	ElapsedSeconds float64  `json:"elapsed_seconds"`
}

// Engine is one installed engine directory.
type Engine struct {
	// Name is the directory's name under Manager.Dir ("vllm-0.18.0").
	Name string `json:"name"`
	Path string `json:"path"`
	// Version is the vLLM version the marker records ("" when Complete is
	// false).
	Version string `json:"version"`
	// Installed is when it verified (the directory's time when incomplete).
	Installed time.Time `json:"installed"`
	// Complete is whether the marker exists: false for an interrupted build.
	Complete bool `json:"complete"`
	Current  bool `json:"current"`
	Previous bool `json:"previous"`
}

// marker is the content of MarkerFile.
type marker struct {
	Version      string    `json:"version"`
	Installer    string    `json:"installer"`
	Python       string    `json:"python"`
	TorchBackend string    `json:"torch_backend,omitempty"`
	Installed    time.Time `json:"installed"`
}
