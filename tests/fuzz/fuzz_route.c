/* libFuzzer: the outbound relay's parsers on any input (each given an
 * exact-size copy, so an over-read crashes), and the end-of-data scanner
 * fed in pieces of every size: it must never pass a byte past the end it
 * reports, and its verdict must not depend on how the input is cut. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

static int scan_all(const uint8_t *p, size_t len, size_t step, size_t *end)
{
	struct route_body b;
	size_t off = 0, held = 0;
	const char *why;

	route_body_init(&b);
	while (off < len) {
		size_t avail = held + step < len - off ? held + step : len - off, n = 0;
		int r = route_body_scan(&b, p + off, avail, &n, &why);
		if (r == ROUTE_BODY_BAD)
			return r;
		if (n > avail)
			abort();
		off += n;
		held = avail - n;
		if (r == ROUTE_BODY_END) {
			*end = off;
			return r;
		}
		if (n == 0 && off + held >= len)
			break;
	}
	return ROUTE_BODY_PASS;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size ? size : 1), dom[ROUTE_NAME_MAX], line[ROUTE_NAME_MAX * 2 + 80];
	struct route_mail m;
	struct route_ext e;
	struct route_mx mx[ROUTE_MX_MAX];
	uint32_t rnd[ROUTE_MX_MAX] = { 0 };
	const char *args;
	size_t end1 = 0, end2 = 0, n = 0;
	int code, r1, r2;

	if (s == NULL)
		return 0;
	memcpy(s, data, size);
	(void)route_verb(s, size, &args);
	if (route_mail_parse(s, size, &m) == NULL) {
		route_ehlo(s, size, &e);
		(void)route_mail_line(&m, &e, line, sizeof(line));
	}
	(void)route_rcpt_domain(s, size, dom, sizeof(dom));
	(void)route_reply(data, size, 8192, &code);
	for (size_t off = 0; off + 3 <= size && n < ROUTE_MX_MAX; off += 20)
		if (route_mx_parse(data + off, size - off < 40 ? size - off : 40, &mx[n]))
			n++;
	(void)route_mx_order(mx, n, rnd);
	r1 = scan_all(data, size, size ? size : 1, &end1);
	r2 = scan_all(data, size, 1 + (size & 7), &end2);
	if (r1 != r2 || end1 != end2)
		abort();
	free(s);
	return 0;
}
