#include "tickets.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -1;
}

static int b64_value(uint8_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

static bool is_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Printable ASCII and line breaks only: random key bytes never are, and a
 * mistyped text file gets a message about its line, not its size. */
static bool is_text(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((p[i] < 0x20 || p[i] > 0x7e) && !is_space(p[i]))
			return false;
	return true;
}

/*
 * Strict base64 of one line (RFC 4648: whole quanta, '=' only as the
 * last one or two characters). Decoded length, or -1.
 */
static long b64_decode(const uint8_t *s, size_t n, uint8_t *out, size_t cap)
{
	size_t i, o = 0, pad = 0;

	if (n == 0 || n % 4 != 0)
		return -1;
	if (s[n - 1] == '=')
		pad = s[n - 2] == '=' ? 2 : 1;
	for (i = 0; i < n; i += 4) {
		uint32_t v = 0;
		size_t k, last = i + 4 == n;
		for (k = 0; k < 4; k++) {
			int d = b64_value(s[i + k]);
			if (d < 0 && !(last && k >= 4 - pad))
				return -1;
			v = v << 6 | (uint32_t)(d < 0 ? 0 : d);
		}
		for (k = 0; k < 3 - (last ? pad : 0); k++) {
			if (o == cap)
				return -1;
			out[o++] = (uint8_t)(v >> (16 - 8 * k));
		}
	}
	return (long)o;
}

/* nginx splits 80 bytes name, HMAC, AES; haproxy name, AES, HMAC. 48
 * bytes are name, AES, HMAC for both. */
static void key_set(struct ticket_key *k, const uint8_t *b, size_t size, bool hmac_first)
{
	size_t half = size == 48 ? 16 : 32;

	memset(k, 0, sizeof(*k));
	k->size = (uint8_t)size;
	memcpy(k->name, b, TICKET_NAME_LEN);
	if (hmac_first && size == 80) {
		memcpy(k->hmac, b + 16, half);
		memcpy(k->aes, b + 16 + half, half);
	} else {
		memcpy(k->aes, b + 16, half);
		memcpy(k->hmac, b + 16 + half, half);
	}
}

static int parse_binary(const uint8_t *p, size_t len, struct tickets *out, char *err,
    size_t errlen)
{
	if (len == 48) {
		key_set(&out->k[0], p, 48, true);
		out->n = 1;
		return 0;
	}
	if (len == 0 || len % 80 != 0)
		return fail(err, errlen, "%zu bytes: a binary key file is one 48-byte key "
		    "or 80-byte keys (a multiple of 80 bytes)", len);
	if (len / 80 > TICKETS_MAX)
		return fail(err, errlen, "%zu keys: at most %d", len / 80, TICKETS_MAX);
	for (out->n = 0; out->n < len / 80; out->n++)
		key_set(&out->k[out->n], p + 80 * out->n, 80, true);
	return 0;
}

static int parse_text(const uint8_t *p, size_t len, struct tickets *out, char *err,
    size_t errlen)
{
	size_t at = 0, line = 0;
	uint8_t raw[81];

	out->n = 0;
	while (at < len) {
		const uint8_t *s = p + at, *nl = memchr(s, '\n', len - at);
		size_t n = nl ? (size_t)(nl - s) : len - at;
		long got;

		at += n + (nl != NULL);
		line++;
		while (n > 0 && is_space(s[n - 1]))
			n--;
		while (n > 0 && is_space(s[0])) {
			s++;
			n--;
		}
		if (n == 0)
			continue;
		got = b64_decode(s, n, raw, sizeof(raw));
		if (got < 0)
			return fail(err, errlen, "line %zu: not valid base64", line);
		if (got != 48 && got != 80)
			return fail(err, errlen, "line %zu: the key is %ld bytes; it must be 48 "
			    "or 80", line, got);
		if (out->n == TICKETS_MAX)
			return fail(err, errlen, "line %zu: more than %d keys", line, TICKETS_MAX);
		key_set(&out->k[out->n++], raw, (size_t)got, false);
	}
	memset(raw, 0, sizeof(raw));
	if (out->n == 0)
		return fail(err, errlen, "no key in it");
	return 0;
}

int tickets_parse(const uint8_t *p, size_t len, struct tickets *out, char *err,
    size_t errlen)
{
	int r;

	memset(out, 0, sizeof(*out));
	r = is_text(p, len) ? parse_text(p, len, out, err, errlen) :
	    parse_binary(p, len, out, err, errlen);
	if (r < 0)
		memset(out, 0, sizeof(*out));
	return r;
}

size_t tickets_key_len(const struct ticket_key *k)
{
	return k->size == 48 ? 16 : 32;
}
