#!/usr/bin/env bash
# Builds everything the .deb and .rpm carry into one staging directory, which
# nfpm.yaml packs: make deb rpm runs it. Nothing here depends on the host
# beyond Go, gcc (cgo: NVML) and gzip.
#
#   packaging/stage.sh STAGE VERSION RELEASE
#
# STAGE/bin/           vagentd, vagentctl, vllm-sim (PIE, stripped, version stamped)
# STAGE/etc/           the shipped configuration as packaged (see below), with
#                      the shipped pipelines in STAGE/etc/pipelines/
# STAGE/units/         vagent@.service and vagentd.socket rendered from it by the
#                      vagentctl just built
# STAGE/man/*.gz       manual pages, STAGE/completion/ shell completions,
#                      both generated from the CLI (cmd/mandoc-gen)
# STAGE/changelog.yml  nfpm's changelog for this version
set -euo pipefail
cd "$(dirname "$0")/.."

stage=${1:?usage: stage.sh STAGE VERSION RELEASE}
version=${2:?version}
release=${3:?release}
go=${GO:-go}

# Reproducible: file dates and the pages' footer come from the last commit
# (or SOURCE_DATE_EPOCH when the caller sets it).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/etc/agents" "$stage/etc/pipelines" "$stage/units" "$stage/man"

mod=github.com/vagent-dev/vagent
ldflags="-s -w -X $mod/ctl.Version=$version -X $mod/daemon.Version=$version"
# PIE with RELRO, as Debian's hardening flags ask of every binary. Not
# -z now: go-nvml leaves the NVML symbols unresolved until it has dlopen()ed
# the driver's library, which only lazy binding allows (with -z now every
# program fails to start on "undefined symbol: nvml..."). cgo: NVML's
# header deprecates functions go-nvml still wraps; that warning is noise.
CGO_ENABLED=1 CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations" \
	"$go" build -trimpath -buildmode=pie \
	-ldflags "$ldflags -extldflags '-Wl,-z,relro'" \
	-o "$stage/bin/" ./cmd/vagentd ./cmd/vagentctl ./cmd/vllm-sim

# The package's configuration is the shipped one with the two settings a
# packaged host needs switched on: the engines run as the system user vagent
# (units.user), and vagentd's control socket belongs to group vagent
# (gateway.control_group). Each commented default must be found exactly once,
# so that an edit of configs/vagent.toml cannot silently drop them.
enable() { # enable KEY: "# KEY = "vagent"" -> "KEY = "vagent""
	local n
	n=$(grep -c "^# $1 = \"vagent\"\$" configs/vagent.toml || true)
	if [ "$n" != 1 ]; then
		echo "stage: configs/vagent.toml must have exactly one line '# $1 = \"vagent\"' (found $n)" >&2
		exit 1
	fi
	sed -i "s/^# $1 = \"vagent\"\$/$1 = \"vagent\"/" "$stage/etc/vagent.toml"
}
cp configs/vagent.toml "$stage/etc/vagent.toml"
enable user
enable control_group
cp configs/agents/*.toml "$stage/etc/agents/"
cp configs/pipelines/*.toml "$stage/etc/pipelines/"

# The template and vagentd.socket (the addresses vagentd serves), rendered
# from exactly what the package ships (render also validates that
# configuration). The agents' drop-ins are rendered on the host by vagentctl
# apply in postinst: they depend on its GPUs; apply also writes its own
# vagentd.socket into /etc/systemd/system when the host's configuration
# listens elsewhere.
"$stage/bin/vagentctl" --config "$stage/etc/vagent.toml" render -o "$stage/units.all" >/dev/null
mv "$stage/units.all/vagent@.service" "$stage/units.all/vagentd.socket" "$stage/units/"
rm -rf "$stage/units.all"

"$go" run ./cmd/mandoc-gen -out "$stage" -vagentd "$stage/bin/vagentd" -version "$version"
gzip -9n "$stage"/man/*

date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
cat >"$stage/changelog.yml" <<EOC
- semver: $version-$release
  date: $date
  packager: vagent developers <vagent@users.noreply.github.com>
  deb:
    urgency: medium
    distributions: [unstable]
  changes:
    - note: vagent $version; history at https://github.com/vagent-dev/vagent/commits
EOC
