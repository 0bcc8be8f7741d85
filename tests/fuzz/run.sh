#!/bin/sh
# make fuzz: run each libFuzzer target for SECONDS on its seed corpus.
# New inputs go to build/fuzz/work-NAME (the seeds in tests/fuzz/corpus/
# stay as they are); a crash leaves build/fuzz/NAME-crash-* and fails.
# Usage: run.sh SECONDS NAME...
secs=$1; shift
pass=0; fail=0
for t in "$@"; do
	work=build/fuzz/work-$t
	mkdir -p "$work"
	echo "fuzz $t: ${secs}s"
	if build/fuzz/fuzz_$t -max_total_time="$secs" -print_final_stats=1 \
		-artifact_prefix=build/fuzz/$t- "$work" tests/fuzz/corpus/$t \
		>build/fuzz/$t.log 2>&1; then
		pass=$((pass + 1))
		grep -E 'stat::number_of_executed_units' build/fuzz/$t.log | sed "s/^/  /"
	else
		fail=$((fail + 1))
		tail -40 build/fuzz/$t.log
		echo "fuzz $t: FAILED (inputs kept as build/fuzz/$t-*)"
	fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
