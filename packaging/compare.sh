#!/usr/bin/env bash
# Prints what the .deb and the .rpm carry (dependencies, maintainer scripts,
# files with modes, configuration files) and fails when their file lists
# differ beyond the distribution conventions nfpm.yaml lists:
#
#   packaging/compare.sh dist/vagent_V_ARCH.deb dist/vagent-V.ARCH.rpm
set -euo pipefail

deb=${1:?usage: compare.sh PACKAGE.deb PACKAGE.rpm}
rpm=${2:?usage: compare.sh PACKAGE.deb PACKAGE.rpm}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Files each format carries by its own convention (nfpm.yaml says why).
deb_only='/usr/share/doc/vagent/copyright
/usr/share/doc/vagent/changelog.Debian.gz
/usr/share/lintian/overrides/vagent
/usr/share/zsh/vendor-completions/_vagentctl'
rpm_only='/usr/share/licenses/vagent/LICENSE
/usr/share/zsh/site-functions/_vagentctl'

echo "== deb: $deb"
dpkg-deb --field "$deb" Package Version Architecture Depends
echo
dpkg-deb --ctrl-tarfile "$deb" | tar -C "$tmp" -xf -
for s in postinst prerm postrm; do
	[ -f "$tmp/$s" ] || { echo "compare: the .deb has no $s" >&2; exit 1; }
	echo "$s script:"
	cat "$tmp/$s"
	echo
done
echo "conffiles:"
cat "$tmp/conffiles"
echo

echo "== rpm: $rpm (rpm -qp --scripts --list)"
rpm -qp --qf 'Name: %{NAME}\nVersion: %{VERSION}-%{RELEASE}\nArchitecture: %{ARCH}\n' "$rpm"
echo "Requires: $(rpm -qpR "$rpm" | paste -sd, | sed 's/,/, /g')"
echo
rpm -qp --scripts --list "$rpm"
for s in postinstall preuninstall postuninstall; do
	rpm -qp --scripts "$rpm" | grep -q "^$s scriptlet" || { echo "compare: the .rpm has no $s scriptlet" >&2; exit 1; }
done
echo

# "MODE PATH" of every file (not directory) in each.
dpkg-deb --fsys-tarfile "$deb" | tar -tvf - | awk '$1 !~ /^d/ { p = $6; sub(/^\./, "", p); print $1, p }' | sort -k2 >"$tmp/deb.files"
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" | awk '$1 !~ /^d/' | sort -k2 >"$tmp/rpm.files"
rpm -qpc "$rpm" | sort >"$tmp/rpm.conf"
sort "$tmp/conffiles" >"$tmp/deb.conf"

printf '%s\n' "$deb_only" | sort >"$tmp/deb.only"
printf '%s\n' "$rpm_only" | sort >"$tmp/rpm.only"
awk '{print $2}' "$tmp/deb.files" | grep -vxFf "$tmp/deb.only" >"$tmp/deb.paths" || true
awk '{print $2}' "$tmp/rpm.files" | grep -vxFf "$tmp/rpm.only" >"$tmp/rpm.paths" || true

fail=0
echo "== files: $(wc -l <"$tmp/deb.files") in the .deb, $(wc -l <"$tmp/rpm.files") in the .rpm"
if ! diff -u --label deb --label rpm "$tmp/deb.paths" "$tmp/rpm.paths"; then
	echo "compare: the file lists differ beyond the conventions in nfpm.yaml (above)" >&2
	fail=1
fi
for f in $(cat "$tmp/deb.only"); do
	grep -q " $f\$" "$tmp/deb.files" || { echo "compare: the .deb lacks $f" >&2; fail=1; }
done
for f in $(cat "$tmp/rpm.only"); do
	grep -q " $f\$" "$tmp/rpm.files" || { echo "compare: the .rpm lacks $f" >&2; fail=1; }
done
# Modes of the files both carry.
join -1 2 -2 2 -o 1.1,2.1,0 "$tmp/deb.files" "$tmp/rpm.files" | awk '$1 != $2 { print "compare: mode of " $3 ": deb " $1 ", rpm " $2; bad = 1 } END { exit bad }' >&2 || fail=1
if ! diff -u --label deb-conffiles --label rpm-config "$tmp/deb.conf" "$tmp/rpm.conf"; then
	echo "compare: configuration files differ" >&2
	fail=1
fi
if [ $fail -eq 0 ]; then
	echo "compare: same files ($(wc -l <"$tmp/deb.paths") shared, modes equal; deb adds $(wc -l <"$tmp/deb.only"), rpm adds $(wc -l <"$tmp/rpm.only") by convention), same configuration files, scripts for install, removal and purge/erase in both"
fi
exit $fail
