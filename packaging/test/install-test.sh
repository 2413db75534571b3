#!/usr/bin/env bash
# The package install test (make install-test; root). It installs the .deb
# on a clean Debian 12 that runs its own systemd, uses it the way an admin
# would, upgrades it and purges it:
#
#  1. builds the .deb twice: VERSION-RELEASE and VERSION-(RELEASE+1), the
#     "rebuilt package with a higher version" of the upgrade;
#  2. makes a clean Debian root with mmdebstrap (minbase + systemd, dbus,
#     polkitd), cached as a tarball in $VAGENT_CI_CACHE
#     (/var/cache/vagent-ci) between runs on one machine;
#  3. boots it: systemd-nspawn -b --register=no --keep-unit
#     --private-network, in a cgroup of its own below this script's; commands
#     run inside with nsenter -a on its PID 1 (an unregistered container has
#     no machinectl or systemd-run -M);
#  4. dpkg -i inside the running system (postinst with systemd up), then:
#     vagentd active as user vagent; vagentctl status for a member of group
#     vagent and refused to another user; polkit lets user vagent start and
#     stop vagent@* and reload systemd, and nothing else; systemctl start
#     vagent@po runs the shipped po agent on vllm-sim as user vagent and
#     journalctl -u vagent@po shows its lines; vagentctl switch through
#     vagentd (which runs as vagent: polkit) moves the GPU from po to dev
#     and back; an upgrade restarts vagentd, not vagentd.socket, and keeps
#     vagent@po's PID, while two clients stream through the gateway: none
#     of their connections is refused and no stream is cut;
#     dpkg --remove stops everything and keeps the data; dpkg --purge removes
#     units and data and leaves no process.
#
# Environment: VERSION and PKG_RELEASE (from the Makefile), GO, MAKE,
# VAGENT_CI_CACHE, VAGENT_INSTALL_TEST_KEEP=1 (leave
# the root and the container running for a look; it prints how to enter).
#
# Works where the host's PID 1 is not systemd and cgroups are v1 "hybrid"
# (name=systemd plus a unified v2 hierarchy), as on these CI machines:
# --keep-unit stops nspawn from asking a host systemd for a scope, and the
# container's systemd runs below a cgroup made here in both hierarchies, so
# that it leaves nothing at the host's top level. No
# SYSTEMD_NSPAWN_UNIFIED_HIERARCHY override is needed on systemd 252.
set -euo pipefail
cd "$(dirname "$0")/../.."

t0=$SECONDS
say() { printf 'install-test [%3ds] %s\n' $((SECONDS - t0)) "$*"; }
die() {
	printf 'install-test [%3ds] FAIL: %s\n' $((SECONDS - t0)) "$*" >&2
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	die "must run as root (it boots systemd in a container)"
fi
for tool in mmdebstrap systemd-nspawn nsenter dpkg-deb findmnt; do
	command -v "$tool" >/dev/null || die "$tool not found: apt-get install mmdebstrap systemd-container util-linux"
done

go=${GO:-go}
make=${MAKE:-make}
pkg_version=${VERSION:-0.1.0}
pkg_release=${PKG_RELEASE:-1}
next_release=$((pkg_release + 1))

work=.e2e/install-test
rm -rf "$work"
mkdir -p "$work"
work=$(cd "$work" && pwd)

# ---- 1. the packages ---------------------------------------------------------
say "building vagent $pkg_version-$pkg_release and $pkg_version-$next_release"
"$make" -s --no-print-directory deb GO="$go" VERSION="$pkg_version" PKG_RELEASE="$pkg_release" DIST="$work/v1" >"$work/build-v1.log" 2>&1 ||
	{ tail -n 30 "$work/build-v1.log" >&2; die "make deb failed"; }
"$make" -s --no-print-directory deb GO="$go" VERSION="$pkg_version" PKG_RELEASE="$next_release" DIST="$work/v2" >"$work/build-v2.log" 2>&1 ||
	{ tail -n 30 "$work/build-v2.log" >&2; die "make deb (upgrade) failed"; }
deb1=$(ls "$work"/v1/*.deb)
deb2=$(ls "$work"/v2/*.deb)

# ---- 2. the clean root ---------------------------------------------------------
cache=${VAGENT_CI_CACHE:-/var/cache/vagent-ci}
suite=bookworm
include=systemd,systemd-sysv,dbus,polkitd,procps,passwd
tarball=$cache/debian-$suite-$(printf %s "$include" | sha256sum | cut -c1-12).tar
if [ ! -s "$tarball" ]; then
	say "making a clean Debian $suite root with mmdebstrap (cached in $tarball)"
	mkdir -p "$cache"
	mmdebstrap --quiet --format=tar --variant=minbase --include="$include" "$suite" "$tarball.tmp" >"$work/mmdebstrap.log" 2>&1 ||
		{ tail -n 30 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
	mv "$tarball.tmp" "$tarball"
fi
root=$work/root
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
mkdir -p "$root/var/cache/vagent-test"
cp "$deb1" "$root/var/cache/vagent-test/v1.deb"
cp "$deb2" "$root/var/cache/vagent-test/v2.deb"
cp packaging/test/stream-client.sh "$root/var/cache/vagent-test/"
# A fixed machine id: journald keeps the agents' logs under it.
systemd-id128 new >"$root/etc/machine-id"

# ---- 3. boot -----------------------------------------------------------------
cgname=vagent-install-test-$$
cgroups=()
# join_cgroups creates $cgname below this shell's cgroup in the hierarchies
# systemd uses (name=systemd and the unified one) and moves the calling
# process there.
join_cgroups() {
	local pid=$1 id ctrls path base d
	while IFS=: read -r id ctrls path; do
		base=
		if [ "$ctrls" = "name=systemd" ]; then
			base=$(findmnt -rn -t cgroup -O name=systemd -o TARGET | head -n 1)
		elif [ "$id" = 0 ] && [ -z "$ctrls" ]; then
			base=$(findmnt -rn -t cgroup2 -o TARGET | head -n 1)
		fi
		[ -n "$base" ] || continue
		d=$base${path%/}/$cgname
		mkdir -p "$d"
		echo "$pid" >"$d/cgroup.procs"
	done </proc/self/cgroup
}
cleanup() {
	local rc=$?
	if [ "${VAGENT_INSTALL_TEST_KEEP:-}" = 1 ] && [ -n "${init:-}" ]; then
		say "kept: nsenter -t $init -a bash   (stop: kill -9 $init; rm -rf $root; rmdir the cgroups named $cgname)"
		return
	fi
	if [ -n "${init:-}" ] && kill -0 "$init" 2>/dev/null; then
		kill -KILL "$init" 2>/dev/null || true
	fi
	if [ -n "${nspawn:-}" ]; then
		wait "$nspawn" 2>/dev/null || true
	fi
	# The container's cgroups, deepest first, once its processes are gone.
	local base
	for base in $(findmnt -rn -t cgroup -O name=systemd -o TARGET) $(findmnt -rn -t cgroup2 -o TARGET); do
		local d
		for d in "$base"/$cgname "$base"/*/$cgname; do
			[ -d "$d" ] || continue
			for _ in $(seq 50); do
				find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
				[ -d "$d" ] || break
				sleep 0.1
			done
		done
	done
	rm -rf "$root"
	if [ $rc -ne 0 ] && [ -f "$work/console.log" ]; then
		echo "--- last lines of the container's console ($work/console.log):" >&2
		tail -n 20 "$work/console.log" >&2
	fi
}
trap cleanup EXIT

say "booting it: systemd-nspawn -b --register=no --keep-unit --private-network"
(
	join_cgroups "$BASHPID"
	exec systemd-nspawn --quiet --directory="$root" --boot --register=no --keep-unit \
		--private-network --hostname=vagent-test --console=read-only </dev/null
) >"$work/console.log" 2>&1 &
nspawn=$!

# The container's PID 1 is systemd, a child of nspawn.
init=
for _ in $(seq 100); do
	for c in $(pgrep -P "$nspawn" 2>/dev/null); do
		if [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ]; then
			init=$c
		fi
	done
	[ -n "$init" ] && break
	kill -0 "$nspawn" 2>/dev/null || die "systemd-nspawn exited"
	sleep 0.1
done
[ -n "$init" ] || die "no systemd in the container after 10s"

# ctr runs a command inside the container, as root, with a clean environment.
ctr() {
	nsenter -t "$init" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
		SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
# as USER runs a command as USER inside (runuser: no password, no PAM session).
as() {
	local u=$1
	shift
	ctr runuser -u "$u" -- "$@"
}

# Until systemd listens on its private socket, systemctl cannot connect.
for _ in $(seq 300); do
	ctr test -S /run/systemd/private && break
	sleep 0.1
done
state=$(ctr timeout 60 systemctl is-system-running --wait 2>&1 || true)
case $state in
running) ;;
degraded) say "booted degraded: $(ctr systemctl --failed --plain --no-legend | awk '{print $1}' | xargs)" ;;
*) die "boot did not finish: $state" ;;
esac
say "booted ($state); PID 1 is host PID $init"

# ---- 4. install and use ------------------------------------------------------
say "dpkg -i vagent $pkg_version-$pkg_release"
ctr dpkg -i /var/cache/vagent-test/v1.deb >"$work/dpkg-install.log" 2>&1 ||
	{ cat "$work/dpkg-install.log" >&2; die "dpkg -i failed"; }
grep -q 'vagent@po.service' "$work/dpkg-install.log" ||
	{ cat "$work/dpkg-install.log" >&2; die "postinst did not apply the agents' units"; }

main_pid() { ctr systemctl show -p MainPID --value "$1"; }
user_of() { ctr ps -o user= -p "$1" | tr -d ' '; }
active() { [ "$(ctr systemctl is-active "$1" 2>/dev/null || true)" = active ]; }
wait_active() {
	for _ in $(seq 100); do
		active "$1" && return 0
		sleep 0.1
	done
	ctr systemctl status --no-pager "$1" >&2 || true
	ctr journalctl -u "$1" --no-pager -n 30 -o cat >&2 || true
	die "$1 is not active"
}

wait_active vagentd.service
ctr systemctl is-enabled --quiet vagentd.service || die "vagentd.service is not enabled"
pid=$(main_pid vagentd.service)
[ "$(user_of "$pid")" = vagent ] || die "vagentd runs as $(user_of "$pid"), not vagent"
sock=$(ctr stat -c '%U:%G %a' /run/vagent/vagentd.sock)
case $sock in
vagent:vagent\ 660 | root:vagent\ 660) ;;
*) die "control socket is $sock, want vagent:vagent or root:vagent 660" ;;
esac
say "ok: vagentd active as user vagent (PID $pid), control socket $sock"

ctr useradd --create-home --groups vagent alice
ctr useradd --create-home bob
out=$(as alice vagentctl status 2>&1) || die "vagentctl status as a member of group vagent failed: $out"
grep -q '^AGENT' <<<"$out" && grep -q '^po ' <<<"$out" || die "vagentctl status as alice printed: $out"
if out=$(as bob vagentctl status 2>&1); then
	die "vagentctl status as bob (not in group vagent) succeeded: $out"
fi
grep -qi 'permission denied' <<<"$out" || die "vagentctl status as bob failed, but not for permission: $out"
say "ok: vagentctl status works for group vagent (alice) and is refused to others (bob)"

# polkit: user vagent may start/stop/restart vagent@* and reload systemd;
# nothing else, and other users not even that.
as vagent systemctl --no-ask-password daemon-reload || die "user vagent may not reload systemd"
if as vagent systemctl --no-ask-password restart systemd-journald.service 2>/dev/null; then
	die "user vagent may restart systemd-journald.service"
fi
if as bob systemctl --no-ask-password start vagent@po.service 2>/dev/null; then
	die "user bob may start vagent@po.service"
fi
as vagent systemctl --no-ask-password start vagent@po.service || die "user vagent may not start vagent@po.service"
# (reset-failed needs the unit loaded: before the stop unloads it.)
as vagent systemctl --no-ask-password reset-failed vagent@po.service || die "user vagent may not reset-failed vagent@po.service"
if as vagent systemctl --no-ask-password kill vagent@po.service 2>/dev/null; then
	die "user vagent may kill vagent@po.service"
fi
as vagent systemctl --no-ask-password stop vagent@po.service || die "user vagent may not stop vagent@po.service"
say "ok: polkit lets user vagent start/stop/reset-failed vagent@* and reload systemd, and nothing else"

ctr systemctl start vagent@po.service || { ctr journalctl -u vagent@po --no-pager -n 30 >&2; die "systemctl start vagent@po failed"; }
wait_active vagent@po.service
po=$(main_pid vagent@po.service)
[ "$(user_of "$po")" = vagent ] || die "vagent@po runs as $(user_of "$po"), not vagent"
for _ in $(seq 100); do
	ctr journalctl -u vagent@po.service --no-pager -o cat | grep -q 'Application startup complete' && break
	sleep 0.1
done
logs=$(ctr journalctl -u vagent@po.service --no-pager -o cat)
grep -Eq 'Starting vLLM (API )?server' <<<"$logs" && grep -q 'Application startup complete' <<<"$logs" ||
	die "journalctl -u vagent@po lacks the engine's lines: $logs"
say "ok: systemctl start vagent@po runs vllm-sim as vagent (PID $po); journalctl -u vagent@po shows $(wc -l <<<"$logs") lines"

# A switch through vagentd: it runs as vagent, so systemd asks polkit.
out=$(as alice vagentctl switch dev 2>&1) || die "vagentctl switch dev (through vagentd) failed: $out"
active vagent@dev.service && ! active vagent@po.service || die "after switch dev: dev $(ctr systemctl is-active vagent@dev.service), po $(ctr systemctl is-active vagent@po.service)"
out=$(as alice vagentctl switch po 2>&1) || die "vagentctl switch po (through vagentd) failed: $out"
active vagent@po.service && ! active vagent@dev.service || die "after switch po: po $(ctr systemctl is-active vagent@po.service), dev $(ctr systemctl is-active vagent@dev.service)"
say "ok: vagentctl switch dev, then po, through vagentd as user vagent"

# ---- upgrade -----------------------------------------------------------------
# Two clients stream through the gateway, a new connection per stream, while
# dpkg upgrades the package. Its postinst restarts vagentd but not
# vagentd.socket: streams in flight finish (gateway.shutdown_timeout) and new
# connections wait in the socket's backlog for the next vagentd, so none may
# be refused and none cut.
ctr systemctl is-active --quiet vagentd.socket || die "vagentd.socket is not active"
ctr systemctl is-enabled --quiet vagentd.socket || die "vagentd.socket is not enabled"
streams() { ctr sh -c 'cat /run/vagent-test-streams.* 2>/dev/null' || true; }
# ms TIMESTAMP-PROPERTY: a property of vagentd.service in ms since the epoch.
ms() { ctr date -d "$(ctr systemctl show --timestamp=us+utc -p "$1" --value vagentd.service)" +%s%3N; }
clients=()
for i in 1 2; do
	ctr bash /var/cache/vagent-test/stream-client.sh 127.0.0.1 8080 po /run/vagent-test-streams.$i /run/vagent-test-stop &
	clients+=($!)
done
for _ in $(seq 300); do
	[ "$(streams | grep -c ' done$')" -ge 2 ] && break
	sleep 0.1
done
[ "$(streams | grep -c ' done$')" -ge 2 ] || die "the clients completed no stream before the upgrade: $(streams)"

po=$(main_pid vagent@po.service)
vd=$(main_pid vagentd.service)
say "dpkg -i vagent $pkg_version-$next_release (upgrade; vagent@po is PID $po, vagentd $vd; 2 clients streaming)"
ctr dpkg -i /var/cache/vagent-test/v2.deb >"$work/dpkg-upgrade.log" 2>&1 ||
	{ cat "$work/dpkg-upgrade.log" >&2; die "dpkg -i (upgrade) failed"; }
[ "$(ctr dpkg-query -W -f '${Version}' vagent)" = "$pkg_version-$next_release" ] || die "the upgrade did not install $pkg_version-$next_release"
wait_active vagentd.service
vd2=$(main_pid vagentd.service)
[ "$vd2" != "$vd" ] || die "vagentd was not restarted by the upgrade (PID $vd)"
[ "$(user_of "$vd2")" = vagent ] || die "vagentd runs as $(user_of "$vd2") after the upgrade"
active vagent@po.service || die "vagent@po is not running after the upgrade"
[ "$(main_pid vagent@po.service)" = "$po" ] || die "vagent@po was restarted by the upgrade: PID $po became $(main_pid vagent@po.service)"
ctr systemctl is-active --quiet vagentd.socket || die "vagentd.socket is not active after the upgrade"
say "ok: upgrade restarted vagentd (PID $vd -> $vd2) and kept vagent@po (PID $po) and vagentd.socket"

# The old vagentd got SIGTERM at ActiveExitTimestamp (the restart left the
# unit active then); the new one was ready at ActiveEnterTimestamp. Let each
# client finish a stream begun after that, then count.
stopped=$(ms ActiveExitTimestamp)
ready=$(ms ActiveEnterTimestamp)
for _ in $(seq 300); do
	[ "$(streams | awk -v r="$ready" '$1 >= r && $3 == "done"' | wc -l)" -ge 2 ] && break
	sleep 0.1
done
ctr touch /run/vagent-test-stop
wait "${clients[@]}"
streams >"$work/upgrade-streams.txt"
total=$(wc -l <"$work/upgrade-streams.txt")
done_=$(grep -c ' done$' "$work/upgrade-streams.txt" || true)
refused=$(grep -c ' refused$' "$work/upgrade-streams.txt" || true)
cut=$(grep -c ' cut$' "$work/upgrade-streams.txt" || true)
# In flight at the SIGTERM: begun before it, ended after it. Queued: begun
# between the SIGTERM and the new vagentd's READY=1.
inflight=$(awk -v s="$stopped" '$1 < s && $2 > s' "$work/upgrade-streams.txt" | wc -l)
queued=$(awk -v s="$stopped" -v r="$ready" '$1 >= s && $1 < r' "$work/upgrade-streams.txt" | wc -l)
after=$(awk -v r="$ready" '$1 >= r && $3 == "done"' "$work/upgrade-streams.txt" | wc -l)
gap=$(awk -v s="$stopped" -v r="$ready" '$1 >= s && $1 < r { w = $2 - $1; if (w > m) m = w } END { print m + 0 }' "$work/upgrade-streams.txt")
say "upgrade: $total streams: $done_ done, $refused refused, $cut cut; $inflight in flight at vagentd's SIGTERM, $queued begun while it restarted ($((ready - stopped)) ms; longest of those streams ${gap} ms), $after done after"
[ "$refused" -eq 0 ] || die "$refused connections refused during the upgrade (see $work/upgrade-streams.txt)"
[ "$cut" -eq 0 ] || die "$cut streams cut during the upgrade (see $work/upgrade-streams.txt)"
[ $((inflight + queued)) -ge 1 ] || die "no stream was in flight or begun while vagentd restarted: the upgrade step proves nothing (see $work/upgrade-streams.txt)"
[ "$after" -ge 2 ] || die "the clients completed $after streams after the upgrade, want 2 (see $work/upgrade-streams.txt)"
say "ok: no connection refused and no stream cut while the upgrade restarted vagentd"

# ---- remove, then purge ------------------------------------------------------
ctr dpkg --remove vagent >"$work/dpkg-remove.log" 2>&1 || { cat "$work/dpkg-remove.log" >&2; die "dpkg --remove failed"; }
if procs=$(ctr pgrep -a -u vagent); then
	die "processes of user vagent left after dpkg --remove: $procs"
fi
ctr test -d /var/lib/vagent || die "dpkg --remove removed /var/lib/vagent"
ctr test -f /etc/vagent/vagent.toml || die "dpkg --remove removed /etc/vagent/vagent.toml"
ctr test ! -e /usr/lib/systemd/system/vagent@.service || die "dpkg --remove left the template unit"
if active vagentd.socket; then
	die "vagentd.socket still listens after dpkg --remove"
fi
say "ok: dpkg --remove stopped vagentd, its socket and the agents, kept configuration and data"

ctr dpkg --purge vagent >"$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; die "dpkg --purge failed"; }
if procs=$(ctr pgrep -a -u vagent); then
	die "processes of user vagent left after dpkg --purge: $procs"
fi
if procs=$(ctr pgrep -a -f 'vllm-sim|vagentd'); then
	die "vagent processes left after dpkg --purge: $procs"
fi
for p in /var/lib/vagent /var/cache/vagent /run/vagent /etc/vagent \
	/usr/lib/systemd/system/vagentd.service /etc/systemd/system/vagent@.service \
	/etc/systemd/system/vagent@po.service.d /etc/systemd/system/multi-user.target.wants/vagentd.service \
	/etc/systemd/system/sockets.target.wants/vagentd.socket /run/vagent/vagentd.sock; do
	ctr test ! -e "$p" || die "dpkg --purge left $p"
done
loaded=$(ctr systemctl list-units --all --plain --no-legend 'vagent*' | awk '$2 != "not-found" {print $1}')
[ -z "$loaded" ] || die "units still loaded after dpkg --purge: $loaded"
say "ok: dpkg --purge removed units and data and left no process"

say "PASS in $((SECONDS - t0))s"
