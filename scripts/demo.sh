#!/usr/bin/env bash
# Boots a throwaway systemd, starts vagentd and the shipped agents on the
# vLLM simulator, streams one answer from each agent through vagentd's
# OpenAI endpoint, shows the switches (vagentctl status, the journal), and
# tears it all down. Needs root, systemd, dbus and util-linux (nsenter); no
# GPU. Arguments go to the demo (e2e/cmd/demo), e.g. scripts/demo.sh -keep
# to stay up on 127.0.0.1:8080 until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (it boots a private systemd in new namespaces); try: sudo $0 $*" >&2
	exit 1
fi
exec "${GO:-go}" run ./e2e/cmd/demo "$@"
