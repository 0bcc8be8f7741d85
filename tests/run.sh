#!/bin/sh
# run.sh [UNIT_BIN...]: every test of mailshim. `make test` calls it with
# MAILSHIM set to the binary under test and the unit test binaries as
# arguments.
#
#   1. the unit test binaries (tests/run-unit.sh);
#   2. the integration tests: /usr/bin/python3 -m pytest tests/integration
#      (Debian's interpreter: it sees python3-pytest and python3-aiosmtpd).
#      PYTEST_ARGS is passed on, e.g. PYTEST_ARGS="-x -k 'tls and not slow'".
#
# The last line sums both: "N passed, N failed[, N skipped]". Exits
# non-zero if anything failed or if pytest ran no test.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
MAILSHIM=${MAILSHIM:-$root/mailshim}
export MAILSHIM
export PYTHONDONTWRITEBYTECODE=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mailshim-run.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# --- unit ---------------------------------------------------------------
sh "$here/run-unit.sh" "$@" >"$tmp/unit" 2>&1
unit_rc=$?
cat "$tmp/unit"
unit=$(sed -n 's/^unit: \([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1 \2/p' "$tmp/unit" | tail -n 1)
if [ -n "$unit" ]; then
	unit_passed=${unit% *}
	unit_failed=${unit#* }
else
	unit_passed=0
	unit_failed=1
fi
if [ "$unit_rc" -ne 0 ] && [ "$unit_failed" -eq 0 ]; then
	unit_failed=1
fi

# --- integration ----------------------------------------------------------
echo "integration: $MAILSHIM"
cd "$root" || exit 1
# PYTEST_ARGS is read with the shell's quoting: PYTEST_ARGS="-k 'a or b'".
eval "set -- ${PYTEST_ARGS:-}"
# Two processes (one per core here), one test file each at a time: the
# files are independent (ports are locked, every process is its own).
par=
if /usr/bin/python3 -c 'import xdist' 2>/dev/null; then
	par="-n ${TEST_JOBS:-2} --dist loadfile"
fi
{
	# shellcheck disable=SC2086 # $par is several words on purpose
	/usr/bin/python3 -m pytest -q -p no:cacheprovider $par "$@" tests/integration
	echo $? >"$tmp/pytest.rc"
} 2>&1 | tee "$tmp/pytest"
py_rc=$(cat "$tmp/pytest.rc" 2>/dev/null || echo 99)

# pytest's summary: "2 failed, 40 passed, 3 skipped, 1 error in 9.87s",
# possibly framed by '=' signs; "no tests ran" when nothing ran.
summary=$(grep -E '(passed|failed|error|errors|skipped|no tests ran).* in [0-9.]+s' "$tmp/pytest" | tail -n 1)
count() {
	printf '%s\n' "$summary" | tr ',' '\n' | sed -n "s/^[ =]*\([0-9][0-9]*\) $1[ =]*\( in .*\)\{0,1\}$/\1/p" | head -n 1
}
it_passed=$(count passed)
it_failed=$(count failed)
it_errors=$(count 'errors\{0,1\}')
it_skipped=$(count skipped)
it_xpassed=$(count xpassed)
it_passed=$(( ${it_passed:-0} + ${it_xpassed:-0} ))
it_failed=$(( ${it_failed:-0} + ${it_errors:-0} ))
it_skipped=${it_skipped:-0}

status=0
if [ $((it_passed + it_failed)) -eq 0 ]; then
	echo "integration: pytest ran no test (exit status $py_rc)"
	status=1
elif [ "$py_rc" -ne 0 ] && [ "$it_failed" -eq 0 ]; then
	echo "integration: pytest exit status $py_rc"
	it_failed=1
fi

passed=$((unit_passed + it_passed))
failed=$((unit_failed + it_failed))
[ "$failed" -eq 0 ] || status=1
line="$passed passed, $failed failed"
[ "$it_skipped" -eq 0 ] || line="$line, $it_skipped skipped"
echo "$line"
exit "$status"
