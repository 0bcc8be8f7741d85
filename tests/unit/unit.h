/*
 * A tiny unit-test harness: CHECK() records a failure with its place and
 * goes on; each test file's main() ends with unit_done(), which prints
 * "NAME: N passed, N failed" and returns the exit status.
 */
#ifndef MAILSHIM_UNIT_H
#define MAILSHIM_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_pass, unit_fail;

#define CHECK(cond) do { \
	if (cond) { unit_pass++; } else { unit_fail++; \
		fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

#define CHECK_EQ(a, b) do { \
	long long unit_a_ = (long long)(a), unit_b_ = (long long)(b); \
	if (unit_a_ == unit_b_) { unit_pass++; } else { unit_fail++; \
		fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", \
		    __FILE__, __LINE__, #a, unit_a_, #b, unit_b_); } \
} while (0)

#define CHECK_STR(a, b) do { \
	const char *unit_a_ = (a), *unit_b_ = (b); \
	if (unit_a_ && unit_b_ && strcmp(unit_a_, unit_b_) == 0) { unit_pass++; } \
	else { unit_fail++; fprintf(stderr, "%s:%d: CHECK_STR failed: \"%s\" != \"%s\"\n", \
	    __FILE__, __LINE__, unit_a_ ? unit_a_ : "(null)", unit_b_ ? unit_b_ : "(null)"); } \
} while (0)

static inline int unit_done(const char *name)
{
	printf("%s: %d passed, %d failed\n", name, unit_pass, unit_fail);
	return unit_fail ? 1 : 0;
}

#endif
