#!/usr/bin/env bash
# vulncheck: govulncheck against a vulnerability database built locally
# from the golang.org/x/vulndb module (served by the Go module proxy like
# any module), so that the check needs no access to vuln.go.dev. Fails when
# any module other than the standard library has a known vulnerability;
# standard-library findings are printed (a newer Go toolchain fixes them).
#
# Bump VULNDB_VERSION to check against newer reports:
#   go list -m -versions golang.org/x/vulndb   (pseudo-versions: go list -m golang.org/x/vulndb@master)
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK=${GOVULNCHECK:-golang.org/x/vuln/cmd/govulncheck@v1.10.0}
# The database depends only on VULNDB_VERSION, so it is cached per user,
# outside the work tree: a fresh clone (CI's) reuses it.
cache=${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/vagent
db=${VULNDB_DIR:-$cache/vulndb-$VULNDB_VERSION}

if [ ! -s "$db/index/db.json" ]; then
	echo "vulncheck: building the vulnerability database from golang.org/x/vulndb@$VULNDB_VERSION (once; minutes)"
	src=$($GO mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
	if [ -z "$src" ] || [ ! -d "$src/data/osv" ]; then
		echo "vulncheck: golang.org/x/vulndb@$VULNDB_VERSION has no data/osv" >&2
		exit 2
	fi
	tmp="$db.tmp"
	rm -rf "$tmp"
	mkdir -p "$tmp"
	tmp=$(cd "$tmp" && pwd)
	(cd "$src" && GOFLAGS=-mod=mod $GO run ./cmd/indexdb -vulns data/osv -out "$tmp")
	rm -rf "$db"
	mv "$tmp" "$db"
fi
db=$(cd "$db" && pwd)

out=$(mktemp)
trap 'rm -f "$out"' EXIT
$GO run "$GOVULNCHECK" -db "file://$db" -format json ./... >"$out"
$GO run ./internal/vulngate <"$out"
