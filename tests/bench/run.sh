#!/bin/sh
# run.sh: `make bench`. Installs the competitors and the tools when missing
# (tests/deps.sh bench: stunnel4, hitch, bssl-tool, strace, perf; it also
# stops the system services their packages may start), builds the load
# client, the upstream sink and the floor with the peers' OpenSSL into
# build/bench (the Makefile builds the floor there with mailshim's
# BoringSSL), then runs bench.py, which writes build/bench/results.txt and
# build/bench/bench.svg. MAILSHIM names the binary under test (default
# ./mailshim).
#
# Exit 0 when every measurement ran (the numbers are a report, not a
# verdict), non-zero when something could not run.
set -eu
cd "$(dirname "$0")/../.."
MAILSHIM=${MAILSHIM:-$PWD/mailshim}
out=build/bench

sh tests/deps.sh bench

mkdir -p "$out"
cc -std=c11 -O2 -Wall -Wextra -o "$out/client" tests/bench/client.c -lssl -lcrypto
cc -std=c11 -O2 -Wall -Wextra -o "$out/sink" tests/bench/sink.c
# the same floor as the Makefile's, built against OpenSSL: the peers' library
cc -std=c11 -O2 -Wall -Wextra -Ishim -o "$out/floor-openssl" tests/bench/floor.c -lssl -lcrypto

# Raise the open-file limit for everything started from here (the
# machine may cap it; bench.py sizes its runs below 20000).
# shellcheck disable=SC3045 # dash and bash both have ulimit -n and -H
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || :

exec /usr/bin/python3 tests/bench/bench.py --mailshim "$MAILSHIM" --out "$out"
