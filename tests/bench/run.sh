#!/bin/sh
# run.sh: `make bench`. Installs the competitors and the tools when missing
# (tests/deps.sh bench: stunnel4, hitch, bssl-tool, strace, perf; it also
# stops the system services their packages may start), builds the load
# client, the upstream sink and the floor into build/bench, then runs
# bench.py, which
# writes build/bench/results.txt and build/bench/bench.svg. MAILSHIM names
# the binary under test (default ./mailshim).
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
# the floor: whole handshakes in memory, with the BoringSSL mailshim uses
cc -std=c11 -O2 -Wall -Wextra -I/usr/include/android -o "$out/floor" tests/bench/floor.c \
    -L/usr/lib/x86_64-linux-gnu/android -Wl,-rpath,/usr/lib/x86_64-linux-gnu/android \
    -l:libssl.so.0 -l:libcrypto.so.0

# Raise the open-file limit for everything started from here (the
# machine may cap it; bench.py sizes its runs below 20000).
# shellcheck disable=SC3045 # dash and bash both have ulimit -n and -H
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || :

exec /usr/bin/python3 tests/bench/bench.py --mailshim "$MAILSHIM" --out "$out"
