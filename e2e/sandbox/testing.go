package sandbox

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// Required reports whether a test that cannot boot a sandbox must fail
// rather than skip: under CI ($CI set) and as root the e2e suite has to run;
// only a developer without root may skip it.
func Required() bool {
	return os.Getenv("CI") != "" || os.Geteuid() == 0
}

// New boots a sandbox for t and closes it when t ends. It fails t if the
// sandbox cannot boot, and skips t only where the host cannot run one and
// Required is false. If t failed, the cleanup logs systemd's console and the
// tail of the sandbox's journal first. opts.Logf defaults to t.Logf.
func New(t testing.TB, opts Options) *Sandbox {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	s, err := Boot(t.Context(), opts)
	if err != nil {
		if errors.Is(err, ErrUnsupported) && !Required() {
			t.Skipf("e2e sandbox: %v (run as root to test against a real systemd)", err)
		}
		t.Fatalf("e2e sandbox: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			out, _, _, _ := s.Exec(ctx, "journalctl", "--no-pager", "-q", "-b", "-n", "150")
			cancel()
			t.Logf("sandbox %s console (last lines):\n%s\n--- journal (last lines) ---\n%s", s.Dir(), s.ConsoleTail(40), out)
		}
		if err := s.Close(); err != nil {
			t.Errorf("close sandbox: %v", err)
		}
	})
	return s
}

// Main runs the tests of an e2e package and then removes the binaries that
// BuildBinaries cached for this test binary. Use it from TestMain:
//
//	func TestMain(m *testing.M) { sandbox.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	CleanBuildCache()
	os.Exit(code)
}
