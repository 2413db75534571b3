// Command vulngate reads govulncheck's JSON stream (-format json) on stdin,
// prints each vulnerability once with where it is and what fixes it, and
// exits 1 when any module other than the standard library has one, at any
// level (called, imported or only required): a vulnerable module is fixed
// by a go.mod bump. Findings in the standard library are printed but pass,
// since only a newer Go toolchain fixes them.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
)

// finding is the part of govulncheck's "finding" message vulngate reads
// (golang.org/x/vuln/internal/govulncheck, protocol v1.0.0).
type finding struct {
	OSV          string `json:"osv"`
	FixedVersion string `json:"fixed_version"`
	Trace        []struct {
		Module   string `json:"module"`
		Version  string `json:"version"`
		Package  string `json:"package"`
		Function string `json:"function"`
	} `json:"trace"`
}

// vuln is one OSV entry against one module, at the most precise level
// any finding reached.
type vuln struct {
	osv, module, version, fixed string
	level                       string // "called", "imported" or "required"
}

var levels = map[string]int{"required": 0, "imported": 1, "called": 2}

// gate reads the stream from r, reports to w, and returns how many
// vulnerabilities are in modules other than the standard library.
func gate(r io.Reader, w io.Writer) (int, error) {
	dec := json.NewDecoder(r)
	found := map[string]*vuln{}
	for {
		var msg struct {
			Finding *finding `json:"finding"`
		}
		if err := dec.Decode(&msg); err == io.EOF {
			break
		} else if err != nil {
			return 0, fmt.Errorf("read govulncheck output: %w", err)
		}
		f := msg.Finding
		if f == nil || len(f.Trace) == 0 {
			continue
		}
		t := f.Trace[0]
		level := "required"
		switch {
		case t.Function != "":
			level = "called"
		case t.Package != "":
			level = "imported"
		}
		key := f.OSV + " " + t.Module
		v, ok := found[key]
		if !ok {
			v = &vuln{osv: f.OSV, module: t.Module, version: t.Version, fixed: f.FixedVersion, level: level}
			found[key] = v
		}
		if levels[level] > levels[v.level] {
			v.level = level
		}
	}
	keys := make([]string, 0, len(found))
	for k := range found {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	bad := 0
	for _, k := range keys {
		v := found[k]
		fixed := v.fixed
		if fixed == "" {
			fixed = "no fix yet"
		}
		verdict := "FAIL"
		if v.module == "stdlib" {
			verdict = "note (fixed by a newer Go toolchain)"
		} else {
			bad++
		}
		fmt.Fprintf(w, "%s %s %s@%s (%s), fixed in %s: %s\n", verdict, v.osv, v.module, v.version, v.level, fixed, "https://pkg.go.dev/vuln/"+v.osv)
	}
	fmt.Fprintf(w, "vulngate: %d vulnerabilities, %d in modules other than the standard library\n", len(found), bad)
	return bad, nil
}

func main() {
	bad, err := gate(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulngate:", err)
		os.Exit(2)
	}
	if bad > 0 {
		os.Exit(1)
	}
}
