#!/bin/sh
# run.sh: `make bench`. Installs the competitors from Debian's archive when
# missing (and stops the system services their packages may start),
# builds the load client and the upstream sink into build/bench, then runs
# bench.py. MAILSHIM names the binary under test (default ./mailshim).
#
# Exit 0 when every measurement ran (the numbers are a report, not a
# verdict), non-zero when something could not run.
set -eu
cd "$(dirname "$0")/../.."
MAILSHIM=${MAILSHIM:-$PWD/mailshim}
out=build/bench

need="stunnel4 hitch haproxy openssl libssl-dev gcc"
missing=
for p in $need; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || :)
	case $status in
	*" ok installed") ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "bench: missing Debian packages:$missing" >&2
		echo "bench: as root, run: apt-get install -y --no-install-recommends$missing" >&2
		exit 1
	fi
	echo "bench: installing:$missing"
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2086 # word splitting of the package list is wanted
	apt-get install -y --no-install-recommends $missing || {
		apt-get update && apt-get install -y --no-install-recommends $missing
	}
	# The benchmarks start private instances; never leave a system one
	# running or enabled because its package was just installed here.
	for svc in stunnel4 hitch haproxy; do
		case " $missing " in
		*" $svc "*) ;;
		*) continue ;;
		esac
		if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
			systemctl disable --now "$svc" >/dev/null 2>&1 || :
		elif [ -x "/etc/init.d/$svc" ]; then
			"/etc/init.d/$svc" stop >/dev/null 2>&1 || :
			update-rc.d "$svc" disable >/dev/null 2>&1 || :
		fi
	done
fi

mkdir -p "$out"
cc -std=c11 -O2 -Wall -Wextra -o "$out/client" tests/bench/client.c -lssl -lcrypto
cc -std=c11 -O2 -Wall -Wextra -o "$out/sink" tests/bench/sink.c

# Raise the open-file limit for everything started from here (the
# machine may cap it; bench.py sizes its runs below 20000).
# shellcheck disable=SC3045 # dash and bash both have ulimit -n and -H
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || :

exec /usr/bin/python3 tests/bench/bench.py --mailshim "$MAILSHIM" --out "$out"
