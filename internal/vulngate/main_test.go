package main

import (
	"strings"
	"testing"
)

// A stream shaped as govulncheck v1.10.0 writes it with -format json.
const stdlibOnly = `{"config":{"protocol_version":"v1.0.0","scanner_name":"govulncheck"}}
{"osv":{"id":"GO-2026-6603"}}
{"finding":{"osv":"GO-2026-6603","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8"}]}}
{"finding":{"osv":"GO-2026-6603","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Get"},{"module":"github.com/vagent-dev/vagent","package":"github.com/vagent-dev/vagent/models","function":"Pull"}]}}
`

const xzRequired = `{"finding":{"osv":"GO-2025-3922","fixed_version":"v0.5.15","trace":[{"module":"github.com/ulikunitz/xz","version":"v0.5.8"}]}}
`

func TestGatePassesStdlibOnlyAndReportsIt(t *testing.T) {
	var out strings.Builder
	bad, err := gate(strings.NewReader(stdlibOnly), &out)
	if err != nil || bad != 0 {
		t.Fatalf("stdlib only: %d, %v", bad, err)
	}
	if !strings.Contains(out.String(), "GO-2026-6603 stdlib@v1.26.8 (called), fixed in v1.26.9") || strings.Count(out.String(), "GO-2026-6603") != 2 {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestGateFailsAModuleFindingAtAnyLevel(t *testing.T) {
	var out strings.Builder
	bad, err := gate(strings.NewReader(stdlibOnly+xzRequired), &out)
	if err != nil || bad != 1 {
		t.Fatalf("xz: %d, %v", bad, err)
	}
	if !strings.Contains(out.String(), "FAIL GO-2025-3922 github.com/ulikunitz/xz@v0.5.8 (required), fixed in v0.5.15") {
		t.Errorf("report:\n%s", out.String())
	}
}

func TestGateRefusesGarbage(t *testing.T) {
	if _, err := gate(strings.NewReader("not json"), &strings.Builder{}); err == nil {
		t.Error("garbage accepted")
	}
}
