#!/bin/sh
# make fuzz: run each libFuzzer target for SECONDS on its seed corpus, all
# targets at once (one process each). New inputs go to
# build/fuzz/work-NAME (the seeds in tests/fuzz/corpus/ stay as they are);
# a crash leaves build/fuzz/NAME-crash-* and fails. Keep a crashing input
# as a regression case by copying it into tests/fuzz/corpus/NAME/.
# Usage: run.sh SECONDS NAME...
secs=$1; shift
pass=0; fail=0
for t in "$@"; do
	mkdir -p "build/fuzz/work-$t"
	echo "fuzz $t: ${secs}s"
	( build/fuzz/fuzz_$t -max_total_time="$secs" -print_final_stats=1 \
		-artifact_prefix=build/fuzz/$t- "build/fuzz/work-$t" tests/fuzz/corpus/$t \
		>build/fuzz/$t.log 2>&1; echo $? >build/fuzz/$t.rc ) &
done
wait
for t in "$@"; do
	if [ "$(cat build/fuzz/$t.rc 2>/dev/null)" = 0 ]; then
		pass=$((pass + 1))
		sed -n "s/^stat::number_of_executed_units: */  $t: runs: /p" build/fuzz/$t.log
	else
		fail=$((fail + 1))
		tail -40 build/fuzz/$t.log
		echo "fuzz $t: FAILED (inputs kept as build/fuzz/$t-*)"
	fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
