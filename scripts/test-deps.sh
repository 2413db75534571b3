#!/usr/bin/env bash
# Installs, as root and only where missing, the Debian/Ubuntu packages that
# "make test" needs beyond Go, gcc, git and make; "make test" runs it first
# (and "make demo" with "demo"), so that "sudo make demo" and "sudo make
# test" are all a fresh Debian 12 or Ubuntu 24.04 machine needs. Without root it installs nothing: it lists what is missing and
# fails, or says nothing when all is there.
#
#   systemd, dbus, util-linux, mount   the e2e sandboxes (systemd as PID 1 of
#                                      new namespaces, nsenter, mount)
#   python3, python3-venv              the managed-venv tests
#   curl                               the quick start's requests in the e2e suite
#   mmdebstrap, debian-archive-keyring the package install test's clean Debian
#                                      root (the keyring is missing on Ubuntu)
#   systemd-container                  systemd-nspawn, which boots that root
#   lintian                            Debian's checks on the built .deb
#
# With the argument "demo" it installs only what "make demo" needs: the
# first line above.
#
# Environment: VAGENT_TEST_DEPS_LOG, where apt's output goes
# (default .e2e/test-deps.log).
set -euo pipefail
cd "$(dirname "$0")/.."

want=(systemd dbus util-linux mount)
case "${1:-}" in
"") want+=(python3 python3-venv curl ca-certificates
	mmdebstrap debian-archive-keyring systemd-container lintian) ;;
demo) ;;
*)
	echo "test-deps: unknown argument $1 (none, or demo)" >&2
	exit 2
	;;
esac

if ! command -v dpkg-query >/dev/null; then
	echo "test-deps: no dpkg-query: this script knows Debian and Ubuntu only; install the equivalents of: ${want[*]}" >&2
	exit 1
fi

missing=()
for p in "${want[@]}"; do
	if ! dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii'; then
		missing+=("$p")
	fi
done

if [ "${#missing[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "test-deps: missing packages: ${missing[*]}" >&2
		echo "hint: run it as root (sudo make test and sudo make demo install them), or: sudo apt-get install ${missing[*]}" >&2
		exit 1
	fi
	log=${VAGENT_TEST_DEPS_LOG:-.e2e/test-deps.log}
	mkdir -p "$(dirname "$log")"
	echo "test-deps: installing ${missing[*]} (apt-get's output: $log)"
	export DEBIAN_FRONTEND=noninteractive
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >>"$log" 2>&1; then
		echo "test-deps: apt-get install ${missing[*]} failed:" >&2
		tail -n 50 "$log" >&2
		exit 1
	fi
fi

# systemd refuses to boot a sandbox without a machine id; minimal images
# ship none.
if [ ! -s /etc/machine-id ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "test-deps: /etc/machine-id is empty; hint: sudo systemd-machine-id-setup" >&2
		exit 1
	fi
	systemd-machine-id-setup >/dev/null
fi
