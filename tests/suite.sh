#!/bin/sh
# suite.sh: what `make test` runs, in three phases, each ending in its own
# "N passed, N failed" line, then one total line:
#   release     unit tests and every integration test on the release build;
#   sanitizers  the same unit tests and the integration tests (but those
#               marked slow: soak, TLS audit, valgrind) on the ASan+UBSan
#               build, which fails a test on any sanitizer report;
#   fuzz        each libFuzzer target for FUZZ_TIME seconds (default 30).
# With SAN_FULL=1 (make test SAN=1) the phases are "sanitizers fuzz" and
# the sanitizer phase runs every integration test, slow ones included.
# SUITE_PHASES picks phases explicitly.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mailshim-suite.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
skipped=0

phase() {
	name=$1
	shift
	echo "=== $name"
	"$@" >"$tmp/$name" 2>&1
	rc=$?
	cat "$tmp/$name"
	counts=$(sed -n 's/^\([A-Za-z]*: \)\{0,1\}\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed\(, \([0-9][0-9]*\) skipped\)\{0,1\}$/\2 \3 \5/p' "$tmp/$name" | tail -n 1)
	set -- $counts
	p=${1:-0}
	f=${2:-0}
	s=${3:-0}
	if [ -z "$counts" ] || { [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; }; then
		echo "$name: exit status $rc"
		f=$((f + 1))
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
}

san_args="-m 'not slow'"
default="release sanitizers fuzz"
if [ "${SAN_FULL:-}" = 1 ]; then
	san_args=""
	default="sanitizers fuzz"
fi
for ph in ${SUITE_PHASES:-$default}; do
	case $ph in
	release)
		phase release env MAILSHIM="$root/mailshim" \
			sh tests/run.sh build/rel/unit/test_* ;;
	sanitizers)
		phase sanitizers env MAILSHIM="$root/build/san/mailshim" \
			PYTEST_ARGS="$san_args" sh tests/run.sh build/san/unit/test_* ;;
	fuzz)
		phase fuzz sh tests/fuzz/run.sh "${FUZZ_TIME:-30}" config proxy smtp dane http route ;;
	esac
done
line="$passed passed, $failed failed"
[ "$skipped" -eq 0 ] || line="$line, $skipped skipped"
echo "$line"
[ "$failed" -eq 0 ]
