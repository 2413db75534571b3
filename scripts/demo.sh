#!/usr/bin/env bash
# Boots a throwaway systemd, runs the shipped configs on the vLLM simulator
# through vagentctl (apply, switch, status), and tears it all down.
# Needs root, systemd, dbus and util-linux (nsenter); no GPU.
# Arguments go to the demo, e.g. scripts/demo.sh -keep
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (it boots a private systemd in new namespaces); try: sudo $0 $*" >&2
	exit 1
fi
exec "${GO:-go}" run ./e2e/cmd/demo "$@"
