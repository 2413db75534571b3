package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	// testRef is a test named in the fidelity table: `pkg/dir.TestName`.
	testRef = regexp.MustCompile("`([a-z0-9_/.-]+)\\.(Test[A-Za-z0-9_]+)`")
	// codeRef is a simulator file and the functions named after it:
	// `internal/vllmsim/server.go` `handleSleep`, `executorSleep`.
	codeRef = regexp.MustCompile("`([a-z0-9_/.-]+\\.go)`((?:,? `[A-Za-z0-9_]+`)+)")
	ident   = regexp.MustCompile("`([A-Za-z0-9_]+)`")
)

// processStarters are the helpers with which a test runs the simulator as
// a process of its own.
var processStarters = []string{"execSim(", "runSim(", "simCommand("}

// testSource returns the source of test fn in package dir, "" if none.
func testSource(t *testing.T, dir, fn string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(root, dir, "*_test.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(data)
		i := strings.Index(src, "\nfunc "+fn+"(t *testing.T) {")
		if i < 0 {
			continue
		}
		body := src[i+1:]
		if end := strings.Index(body, "\n}\n"); end >= 0 {
			body = body[:end]
		}
		return body
	}
	return ""
}

// TestFidelityTableNamesRealTests checks every row of engine-fidelity.md:
// its tests exist and run the simulator as a process, and the simulator
// files and functions it names exist.
func TestFidelityTableNamesRealTests(t *testing.T) {
	rows := 0
	for _, line := range strings.Split(read(t, "engine-fidelity.md"), "\n") {
		if !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| behaviour") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), " | ")
		if len(cells) != 4 {
			t.Errorf("row with %d cells, want 4: %s", len(cells), line)
			continue
		}
		rows++
		tests := testRef.FindAllStringSubmatch(cells[3], -1)
		if len(tests) == 0 {
			t.Errorf("row names no test: %s", line)
		}
		for _, m := range tests {
			body := testSource(t, m[1], m[2])
			if body == "" {
				t.Errorf("%s.%s does not exist", m[1], m[2])
				continue
			}
			runs := false
			for _, s := range processStarters {
				runs = runs || strings.Contains(body, s)
			}
			if !runs {
				t.Errorf("%s.%s does not run the simulator as a process", m[1], m[2])
			}
		}
		code := codeRef.FindAllStringSubmatch(cells[2], -1)
		if len(code) == 0 {
			t.Errorf("row names no simulator code: %s", line)
		}
		for _, m := range code {
			data, err := os.ReadFile(filepath.Join(root, m[1]))
			if err != nil {
				t.Errorf("simulator file: %v", err)
				continue
			}
			for _, id := range ident.FindAllStringSubmatch(m[2], -1) {
				if !regexp.MustCompile(`\nfunc (\([^)]*\) )?` + id[1] + `\(`).Match(data) {
					t.Errorf("%s has no function %s", m[1], id[1])
				}
			}
		}
	}
	if rows < 10 {
		t.Errorf("only %d rows in engine-fidelity.md", rows)
	}
}
