#!/bin/sh
# deps.sh: install from Debian's archive what building and testing mailshim
# needs, only when something is missing. Never leaves a system Postfix
# running: the tests start private instances of their own.
set -eu

# Packages are installed with --no-install-recommends, so every package a
# test, `make run` or `make bench` uses is named here, including the ones a
# named package only recommends: swaks does TLS only with
# libnet-ssleay-perl and IPv6 only with libio-socket-inet6-perl.
build="gcc make libc6-dev android-libboringssl-dev libev-dev libunbound-dev libidn2-dev dns-root-data
 clang libclang-rt-14-dev"
peers="openssl ca-certificates swaks libnet-ssleay-perl perl-openssl-defaults libio-socket-inet6-perl
 postfix python3 python3-aiosmtpd python3-pytest python3-pytest-xdist
 testssl.sh valgrind procps iproute2 util-linux haproxy ldnsutils nsd python3-cryptography curl"
# test_packaging.py: man pages rendered by man-db (groff-base does the
# rendering), the unit checked by systemd-analyze (package systemd), the
# manifests linted by yamllint and read by python3-yaml, readelf (binutils),
# the tracked files listed by git.
packaging="man-db groff-base systemd yamllint python3-yaml binutils git"
# make bench: the competitors, OpenSSL's headers for the load client,
# bssl-tool (BoringSSL's own `speed`, the floor), strace and perf
# (BENCH_PROFILE=1).
case "${1:-}" in bench) peers="$peers stunnel4 hitch libssl-dev android-boringssl strace linux-perf" ;; esac

missing=
for p in $build $peers $packaging; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || :)
	case $status in
	*" ok installed") ;;
	*) missing="$missing $p" ;;
	esac
done

[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing Debian packages:$missing" >&2
	echo "deps.sh: as root, run: apt-get update && apt-get install -y --no-install-recommends$missing" >&2
	exit 1
fi

echo "deps.sh: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
# Postfix's package asks how to configure the system's mail; answer "no
# configuration" so it neither prompts nor sets up a listening daemon.
if command -v debconf-set-selections >/dev/null 2>&1; then
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
apt-get update
# shellcheck disable=SC2086 # word splitting of the package list is wanted
apt-get install -y --no-install-recommends $missing

# A package may have started a system service (Postfix, nsd; the bench's
# stunnel4, hitch, haproxy). Tests and benchmarks start private instances
# only: never leave one of these running or enabled.
for svc in postfix nsd stunnel4 hitch haproxy; do
	case " $missing " in
	*" $svc "*) ;;
	*) continue ;;
	esac
	[ "$svc" = postfix ] && { postfix stop >/dev/null 2>&1 || :; }
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || :
	elif [ -x "/etc/init.d/$svc" ]; then
		"/etc/init.d/$svc" stop >/dev/null 2>&1 || :
		update-rc.d "$svc" disable >/dev/null 2>&1 || :
	elif command -v systemctl >/dev/null 2>&1; then
		# systemd installed but not running (a container): nsd ships
		# no init script, only a unit; keep it from starting at boot.
		systemctl disable "$svc" >/dev/null 2>&1 || :
	fi
done
exit 0
