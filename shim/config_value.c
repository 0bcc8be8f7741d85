/*
 * config_value: error reports and the setters of plain values (numbers,
 * words, durations, names, pins, certificates, resolvers). Each setter
 * checks its whole value before it stores anything.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 3, 4)))
void cf_report(struct ctx *c, int line, const char *fmt, ...)
{
	va_list ap;

	c->nerr++;
	if (!c->err)
		return;
	if (line > 0)
		fprintf(c->err, "%s:%d: ", c->file, line);
	else
		fprintf(c->err, "%s: ", c->file);
	va_start(ap, fmt);
	vfprintf(c->err, fmt, ap);
	va_end(ap);
	fputc('\n', c->err);
}

__attribute__((format(printf, 4, 5)))
bool cf_bad(struct ctx *c, const struct key *k, const char *v,
    const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	cf_report(c, c->line, "bad value '%s' for %s: %s", v, k->name, why);
	return false;
}

char *cf_sdup(struct ctx *c, const char *s, size_t n)
{
	char *d = malloc(n + 1);

	if (!d) {
		cf_report(c, c->line, "out of memory");
		return NULL;
	}
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

/* Room for one more element, zeroed; NULL (arr untouched) on failure. */
void *cf_grow(struct ctx *c, void *arr, size_t n, size_t size)
{
	char *a = NULL;

	if (n < SIZE_MAX / size - 1)
		a = realloc(arr, (n + 1) * size);
	if (!a) {
		cf_report(c, c->line, "out of memory");
		return NULL;
	}
	memset(a + n * size, 0, size);
	return a;
}

/* Digits only (no sign, no space), at most max. */
bool cf_parse_num(const char *s, size_t n, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return true;
}

static bool set_uint(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	uint64_t n = 0;
	uint32_t u;

	if (!((k->flags & F_AUTO) && strcmp(v, "auto") == 0) &&
	    (!cf_parse_num(v, strlen(v), k->max, &n) || n < k->min))
		return cf_bad(c, k, v, "expected %sa number from %u to %u",
		    k->flags & F_AUTO ? "auto or " : "", k->min, k->max);
	u = (uint32_t)n;
	memcpy(field(sc, k), &u, sizeof u);
	return true;
}

bool cf_set_str(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	char **slot = field(sc, k);
	char *d = cf_sdup(c, v, strlen(v));

	if (!d)
		return false;
	free(*slot);
	*slot = d;
	return true;
}

bool cf_host_chars(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789.-_", s[i]) || s[i] == '\0')
			return false;
	return n > 0 && n <= 253;
}

/* A name sent on the wire (EHLO, SNI): a space there would split it. */
static bool set_host(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	size_t n = strlen(v);

	if (!cf_host_chars(v, n) && !(strchr(v, ':') && n < 64 &&
	    strspn(v, "0123456789abcdefABCDEF:.") == n))
		return cf_bad(c, k, v, "expected a host name");
	return cf_set_str(c, k, sc, v);
}

static void words_text(const char *const *w, char *buf, size_t cap)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; w[i] && used < cap; i++)
		used += (size_t)snprintf(buf + used, cap - used, "%s%s",
		    i == 0 ? "" : w[i + 1] ? ", " : " or ", w[i]);
}

static int word_index(const char *const *w, const char *v)
{
	for (int i = 0; w[i]; i++)
		if (strcmp(w[i], v) == 0)
			return i;
	return -1;
}

static bool set_word(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	int i = word_index(k->words, v);
	char list[128];
	bool b = i == 1;
	int ver = CONFIG_TLS12 + i;

	if (i < 0) {
		words_text(k->words, list, sizeof list);
		return cf_bad(c, k, v, "expected %s", list);
	}
	if (k->type == T_BOOL)
		memcpy(field(sc, k), &b, sizeof b);
	else if (k->type == T_VERSION)
		memcpy(field(sc, k), &ver, sizeof ver);
	else
		memcpy(field(sc, k), &i, sizeof i);
	return true;
}

static bool set_dur(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	static const struct { const char *unit; uint32_t ms; } units[] = {
		{ "", 1000 }, { "s", 1000 }, { "ms", 1 }, { "m", 60000 },
		{ "h", 3600000 },
	};
	size_t nd = strspn(v, "0123456789");
	uint64_t n;

	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		uint32_t ms;

		if (strcmp(v + nd, units[i].unit) != 0 ||
		    !cf_parse_num(v, nd, k->max, &n))
			continue;
		if (n * units[i].ms < k->min || n * units[i].ms > k->max)
			break;
		ms = (uint32_t)(n * units[i].ms);
		memcpy(field(sc, k), &ms, sizeof ms);
		return true;
	}
	return cf_bad(c, k, v, "expected a duration from 1ms to 24h, "
	    "e.g. 10s, 500ms, 5m or 1h");
}

static int b64val(char ch)
{
	static const char alpha[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const char *p = ch ? strchr(alpha, ch) : NULL;

	return p ? (int)(p - alpha) : -1;
}

/*
 * Strict, padded standard base64; returns the decoded length (written up to
 * cap) or -1. Non-zero unused bits are refused: they mean a typo.
 */
static long b64_decode(const char *s, uint8_t *out, size_t cap)
{
	size_t n = strlen(s), o = 0;

	if (n == 0 || n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t w = 0;
		int pad = 0;

		for (int j = 0; j < 4; j++) {
			int v = s[i + j] == '=' ? 0 : b64val(s[i + j]);

			if (s[i + j] == '=' && (i + 4 != n || j < 2))
				return -1;
			pad += s[i + j] == '=';
			if (v < 0 || (pad && s[i + j] != '='))
				return -1;
			w = w << 6 | (uint32_t)v;
		}
		if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
			return -1;
		for (int j = 0; j < 3 - pad; j++, o++)
			if (o < cap)
				out[o] = (uint8_t)(w >> (16 - 8 * j));
	}
	return (long)o;
}

static bool set_pin(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	static const char prefix[] = "sha256/";
	struct service *s = sc->base;
	uint8_t h[32];
	long n = -1;

	if (strncmp(v, prefix, sizeof prefix - 1) == 0)
		n = b64_decode(v + sizeof prefix - 1, h, sizeof h);
	if (n < 0)
		return cf_bad(c, k, v, "expected sha256/ and the base64 of a SHA-256");
	if (n != 32)
		return cf_bad(c, k, v, "decodes to %ld bytes, a SHA-256 has 32", n);
	uint8_t (*arr)[32] = cf_grow(c, s->pins, s->npins, sizeof *arr);
	if (!arr)
		return false;
	s->pins = arr;
	memcpy(arr[s->npins++], h, sizeof h);
	return true;
}

static bool set_cert(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct certkey *arr = cf_grow(c, s->certs, s->ncerts, sizeof *arr);

	(void)k;
	if (!arr)
		return false;
	s->certs = arr;
	arr[s->ncerts].cert_line = arr[s->ncerts].key_line = c->line;
	return (arr[s->ncerts++].cert = cf_sdup(c, v, strlen(v))) != NULL;
}

/*
 * A key belongs to the listen_cert just before it. Pairing by position
 * alone would give a key to the wrong cert once one cert (a PEM holding
 * its own key) goes without.
 */
static bool set_key(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct certkey *last = s->ncerts ? &s->certs[s->ncerts - 1] : NULL;

	if (!last || last->key) {
		cf_report(c, c->line, "%s has no %s before it to pair with",
		    k->name, NAME(K_LISTEN_CERT));
		return false;
	}
	last->key_line = c->line;
	return (last->key = cf_sdup(c, v, strlen(v))) != NULL;
}

/* "IP" or "IP@PORT" (libunbound's forwarder syntax), numeric only: a
 * resolver found by name would need a resolver first. */
static bool set_resolver(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct config *g = sc->base;
	const char *at = strchr(v, '@');
	size_t hn = at ? (size_t)(at - v) : strlen(v);
	char host[INET6_ADDRSTRLEN];
	uint8_t a[16];
	uint64_t port;
	char **arr;

	if (hn == 0 || hn >= sizeof host || (at && (!cf_parse_num(at + 1,
	    strlen(at + 1), 65535, &port) || port == 0)))
		return cf_bad(c, k, v, "expected a numeric address, optionally "
		    "with @port, e.g. 127.0.0.1@53 or ::1");
	memcpy(host, v, hn);
	host[hn] = '\0';
	if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
		return cf_bad(c, k, v, "expected a numeric address, optionally "
		    "with @port, e.g. 127.0.0.1@53 or ::1");
	if (!(arr = cf_grow(c, g->dns_resolvers, g->ndns_resolvers, sizeof *arr)))
		return false;
	g->dns_resolvers = arr;
	return (arr[g->ndns_resolvers++] = cf_sdup(c, v, strlen(v))) != NULL;
}

setter *const cf_setters[T_NTYPES] = {
	[T_UINT] = set_uint, [T_STR] = cf_set_str, [T_HOST] = set_host,
	[T_ENUM] = set_word, [T_BOOL] = set_word, [T_VERSION] = set_word,
	[T_DUR] = set_dur, [T_LISTEN] = cf_set_listen, [T_METRICS] = cf_set_metrics,
	[T_UPSTREAM] = cf_set_upstream, [T_CIDRS] = cf_set_cidrs, [T_PIN] = set_pin,
	[T_CERT] = set_cert, [T_KEY] = set_key, [T_RESOLVER] = set_resolver,
};
