#!/usr/bin/env bash
# check-e2e.sh LOG: fail unless the "go test -v ./e2e/..." output in LOG
# shows that the end-to-end suite really ran: at least one TestE2E* passed,
# no test was skipped, none failed. A suite that skips itself where it
# should run is a failure (see DESIGN.md, "Testing without a GPU").
set -euo pipefail
log=${1:?usage: check-e2e.sh LOG}
[ -r "$log" ] || { echo "check-e2e: no log $log" >&2; exit 1; }

fail() {
	echo "check-e2e: $*" >&2
	echo "check-e2e: the e2e suite needs root, systemd, dbus and nsenter; run 'sudo make e2e' (or 'make unit' for unit tests only)" >&2
	exit 1
}

if grep -Eq '^[[:space:]]*--- SKIP' "$log"; then
	grep -E -A1 '^[[:space:]]*--- SKIP' "$log" >&2 || true
	fail "e2e tests were skipped"
fi
if grep -Eq '^[[:space:]]*--- FAIL|^FAIL' "$log"; then
	fail "e2e tests failed"
fi
if grep -Eq '^ok[[:space:]].*/e2e[[:space:]].*\[no tests to run\]|/e2e[[:space:]]+\[no test files\]' "$log"; then
	fail "the e2e package ran no tests"
fi
passed=$(grep -Ec '^--- PASS: TestE2E' "$log" || true)
if [ "$passed" -eq 0 ]; then
	fail "no TestE2E* test passed"
fi
echo "check-e2e: $passed e2e tests passed, none skipped"
