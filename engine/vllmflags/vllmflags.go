// Package vllmflags knows which flags `vllm serve` accepts in each vLLM
// version. The lists are extracted from vLLM's own argument parser (one flag a
// line, --no- forms and short aliases included), so that units never carry a
// flag the installed vLLM rejects and vllm-sim rejects exactly what vLLM does.
package vllmflags

import (
	"embed"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

//go:embed flags-*.txt
var files embed.FS

// Set is the flags one vLLM version accepts.
type Set struct {
	// Version is the vLLM release the list was extracted from.
	Version string
	flags   map[string]bool
}

// Has reports whether the set accepts flag (given as "--name" or "-x";
// a "--name=value" form is reduced to its name).
func (s *Set) Has(flag string) bool {
	name, _, _ := strings.Cut(flag, "=")
	return s.flags[name]
}

// Flags lists every accepted flag, sorted.
func (s *Set) Flags() []string {
	out := make([]string, 0, len(s.flags))
	for f := range s.flags {
		out = append(out, f)
	}
	sort.Strings(out)
	return out
}

type known struct {
	version [3]int
	set     *Set
}

var sets []known

func init() {
	entries, err := files.ReadDir(".")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		v := strings.TrimSuffix(strings.TrimPrefix(e.Name(), "flags-"), ".txt")
		data, err := files.ReadFile(e.Name())
		if err != nil {
			panic(err)
		}
		s := &Set{Version: v, flags: map[string]bool{}}
		for _, line := range strings.Split(string(data), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			s.flags[line] = true
		}
		pv, err := parse(v)
		if err != nil {
			panic(err)
		}
		sets = append(sets, known{pv, s})
	}
	sort.Slice(sets, func(i, j int) bool { return less(sets[i].version, sets[j].version) })
}

// For returns the flag set of the newest extracted list not newer than
// version: flags are added and removed between releases, and the list of the
// nearest older release is the best knowledge we have of one in between.
// Versions older than every list get the oldest.
func For(version string) (*Set, error) {
	v, err := parse(version)
	if err != nil {
		return nil, err
	}
	best := sets[0].set
	for _, k := range sets {
		if !less(v, k.version) {
			best = k.set
		}
	}
	return best, nil
}

// Known lists the versions whose flag lists are embedded, oldest first.
func Known() []string {
	out := make([]string, len(sets))
	for i, k := range sets {
		out[i] = k.set.Version
	}
	return out
}

func parse(version string) ([3]int, error) {
	var v [3]int
	core := version
	if i := strings.IndexAny(core, "+-abcdefghijklmnopqrstuvwxyz"); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(strings.TrimSuffix(core, "."), ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, fmt.Errorf("vllm version %q: want MAJOR.MINOR[.PATCH]", version)
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return v, fmt.Errorf("vllm version %q: want MAJOR.MINOR[.PATCH]", version)
		}
		v[i] = n
	}
	return v, nil
}

func less(a, b [3]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}
