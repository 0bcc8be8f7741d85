#!/bin/sh
# run-unit.sh BIN...: run each unit test binary, show its output, and end
# with one line "unit: N passed, N failed" summing the "NAME: N passed,
# N failed" lines the binaries print. Exit 1 if any check failed, or any
# binary crashed, exited non-zero or printed no summary.
set -u

passed=0
failed=0
bad=0
out=$(mktemp "${TMPDIR:-/tmp}/mailshim-unit.XXXXXX")
trap 'rm -f "$out"' EXIT

for bin in "$@"; do
	name=$(basename "$bin")
	if [ ! -x "$bin" ]; then
		echo "$name: not an executable: $bin"
		bad=$((bad + 1))
		continue
	fi
	"$bin" >"$out" 2>&1
	rc=$?
	cat "$out"
	# The last summary line the binary printed, as "PASSED FAILED".
	counts=$(sed -n 's/^[A-Za-z0-9_.-]*: \([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed$/\1 \2/p' "$out" | tail -n 1)
	if [ -z "$counts" ]; then
		echo "$name: no summary line (exit status $rc)"
		bad=$((bad + 1))
		continue
	fi
	p=${counts% *}
	f=${counts#* }
	passed=$((passed + p))
	failed=$((failed + f))
	if [ "$rc" -gt 128 ]; then
		echo "$name: killed by signal $((rc - 128))"
		bad=$((bad + 1))
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "$name: exit status $rc with no failed check"
		bad=$((bad + 1))
	fi
done

# A binary that crashed or gave no count is one failure more.
failed=$((failed + bad))
echo "unit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
