/* tickets: both key file formats, their layouts, and every way a file is
 * refused. */
#include <stdint.h>
#include <stdlib.h>

#include "tickets.h"
#include "unit.h"

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of n bytes, for building text files. */
static size_t enc(const uint8_t *p, size_t n, char *out)
{
	size_t i, o = 0;

	for (i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
		    (i + 2 < n ? p[i + 2] : 0);
		out[o++] = b64[v >> 18 & 63];
		out[o++] = b64[v >> 12 & 63];
		out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = '\0';
	return o;
}

/* Distinct bytes per key (the high bit keeps them out of base64's set). */
static void fill(uint8_t *p, size_t n, uint8_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(0x80 | ((seed * 31 + i) & 0x7f));
}

static int parse(const void *p, size_t n, struct tickets *t, char *err)
{
	return tickets_parse(p, n, t, err, 200);
}

static void test_binary(void)
{
	uint8_t b[80 * 3];
	struct tickets t;
	char err[200];

	fill(b, 48, 1);
	CHECK_EQ(parse(b, 48, &t, err), 0);
	CHECK_EQ(t.n, 1);
	CHECK_EQ(t.k[0].size, 48);
	CHECK_EQ(tickets_key_len(&t.k[0]), 16);
	/* nginx, 48 bytes: name, AES, HMAC. */
	CHECK(memcmp(t.k[0].name, b, 16) == 0);
	CHECK(memcmp(t.k[0].aes, b + 16, 16) == 0);
	CHECK(memcmp(t.k[0].hmac, b + 32, 16) == 0);

	fill(b, 80, 2);
	fill(b + 80, 80, 3);
	fill(b + 160, 80, 4);
	CHECK_EQ(parse(b, 80, &t, err), 0);
	CHECK_EQ(t.n, 1);
	CHECK_EQ(tickets_key_len(&t.k[0]), 32);
	/* nginx, 80 bytes: name, HMAC, AES. */
	CHECK(memcmp(t.k[0].hmac, b + 16, 32) == 0);
	CHECK(memcmp(t.k[0].aes, b + 48, 32) == 0);
	CHECK_EQ(parse(b, 240, &t, err), 0);
	CHECK_EQ(t.n, 3);
	CHECK(memcmp(t.k[0].name, b, 16) == 0);
	CHECK(memcmp(t.k[2].name, b + 160, 16) == 0);
	CHECK(memcmp(t.k[2].aes, b + 208, 32) == 0);

	/* Any other size is refused, and says its size. */
	CHECK_EQ(parse(b, 47, &t, err), -1);
	CHECK(strstr(err, "47 bytes") != NULL);
	CHECK_EQ(parse(b, 96, &t, err), -1);
	CHECK_EQ(parse(b, 81, &t, err), -1);
	CHECK_EQ(t.n, 0);
}

static void test_text(void)
{
	uint8_t a[80], b[48];
	char text[600], line[120];
	struct tickets t;
	char err[200];

	fill(a, 80, 5);
	fill(b, 48, 6);
	enc(a, 80, line);
	snprintf(text, sizeof(text), "%s\n", line);
	CHECK_EQ(parse(text, strlen(text), &t, err), 0);
	CHECK_EQ(t.n, 1);
	CHECK_EQ(t.k[0].size, 80);
	/* haproxy, 80 bytes: name, AES, HMAC. */
	CHECK(memcmp(t.k[0].name, a, 16) == 0);
	CHECK(memcmp(t.k[0].aes, a + 16, 32) == 0);
	CHECK(memcmp(t.k[0].hmac, a + 48, 32) == 0);

	/* Several lines, mixed sizes, CRLF, blank lines and no final LF. */
	enc(b, 48, line);
	snprintf(text + strlen(text), sizeof(text) - strlen(text), "\r\n  %s  \r\n", line);
	CHECK_EQ(parse(text, strlen(text), &t, err), 0);
	CHECK_EQ(t.n, 2);
	CHECK_EQ(t.k[1].size, 48);
	CHECK(memcmp(t.k[1].aes, b + 16, 16) == 0);
	CHECK(memcmp(t.k[1].hmac, b + 32, 16) == 0);

	/* Refusals name the line. */
	snprintf(text, sizeof(text), "%s\n%s", line, "AAAA\n");
	CHECK_EQ(parse(text, strlen(text), &t, err), -1);
	CHECK_STR(err, "line 2: the key is 3 bytes; it must be 48 or 80");
	snprintf(text, sizeof(text), "\n%.63s\n", line);
	CHECK_EQ(parse(text, strlen(text), &t, err), -1);
	CHECK_STR(err, "line 2: not valid base64");
	snprintf(text, sizeof(text), "%.60s=A==\n", line);
	CHECK_EQ(parse(text, strlen(text), &t, err), -1);
	CHECK_STR(err, "line 1: not valid base64");
	snprintf(text, sizeof(text), "%s %s\n", line, line);
	CHECK_EQ(parse(text, strlen(text), &t, err), -1);
	CHECK_STR(err, "line 1: not valid base64");
	CHECK_EQ(parse("not base64 at all!\n", 19, &t, err), -1);
	CHECK_STR(err, "line 1: not valid base64");
	CHECK_EQ(parse("\n \r\n", 4, &t, err), -1);
	CHECK_STR(err, "no key in it");
	text[0] = '\0';
	for (int i = 0; i < TICKETS_MAX + 1; i++)
		snprintf(text + strlen(text), sizeof(text) - strlen(text), "%s\n", i < 8 ? line : "");
	CHECK_EQ(parse(text, strlen(text), &t, err), 0);
}

static void test_too_many(void)
{
	static char text[(TICKETS_MAX + 1) * 70 + 1];
	uint8_t b[48];
	char line[70];
	struct tickets t;
	char err[200];
	size_t at = 0;

	fill(b, 48, 7);
	enc(b, 48, line);
	for (int i = 0; i < TICKETS_MAX; i++)
		at += (size_t)sprintf(text + at, "%s\n", line);
	CHECK_EQ(parse(text, at, &t, err), 0);
	CHECK_EQ(t.n, TICKETS_MAX);
	at += (size_t)sprintf(text + at, "%s\n", line);
	CHECK_EQ(parse(text, at, &t, err), -1);
	CHECK(strstr(err, "more than") != NULL);
	CHECK_EQ(t.n, 0);
}

int main(void)
{
	test_binary();
	test_text();
	test_too_many();
	return unit_done("test_tickets");
}
