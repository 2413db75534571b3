// Package e2e holds vagent's end-to-end tests: each boots a throwaway systemd
// (package e2e/sandbox) and drives the real binaries through it. They need
// root; under CI or as root they fail rather than skip when a sandbox cannot
// boot. Run them with "make e2e" (or "make test", which runs everything).
package e2e
