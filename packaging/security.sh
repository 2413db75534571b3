#!/usr/bin/env bash
# Prints `systemd-analyze security` of the units the .deb installs, scored
# offline from the package's own files (no install, no running systemd):
# vagentd.service as packaged, and vagent@dev.service with the drop-in
# `vagentctl apply` renders from the packaged configuration. Fails when an
# exposure is above its bound.
#
#   packaging/security.sh dist/vagent_VERSION_ARCH.deb
set -euo pipefail

deb=${1:?usage: security.sh PACKAGE.deb}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
"$root/usr/bin/vagentctl" --config "$root/etc/vagent/vagent.toml" render -o "$root/etc/systemd/system" >/dev/null

fail=0
check() { # check UNIT BOUND
	local unit=$1 bound=$2 out score
	out=$(SYSTEMD_COLORS=0 systemd-analyze security --offline=true --root="$root" --no-pager "$unit" 2>&1) || true
	score=$(sed -n "s/^→ Overall exposure level for $unit: \([0-9.]*\).*/\1/p" <<<"$out")
	echo "== $unit: what still counts (systemd-analyze security --offline=true)"
	grep -E '^(✗|  NAME)' <<<"$out" || true
	if [ -z "$score" ]; then
		echo "$out"
		echo "security: no exposure level for $unit" >&2
		fail=1
		return
	fi
	if awk -v s="$score" -v b="$bound" 'BEGIN { exit !(s <= b) }'; then
		echo "security: $unit exposure $score <= $bound: ok"
	else
		echo "security: $unit exposure $score > $bound: FAIL" >&2
		fail=1
	fi
	echo
}
check vagent@dev.service 2.5
check vagentd.service 1.7
exit $fail
