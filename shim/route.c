/* route: the pure parts of the outbound relay (route.h). */
#include "route.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct { const char *w; enum route_verb v; } verbs[] = {
	{ "EHLO", ROUTE_V_EHLO }, { "HELO", ROUTE_V_HELO },
	{ "STARTTLS", ROUTE_V_STARTTLS }, { "MAIL", ROUTE_V_MAIL },
	{ "RCPT", ROUTE_V_RCPT }, { "DATA", ROUTE_V_DATA }, { "RSET", ROUTE_V_RSET },
	{ "NOOP", ROUTE_V_NOOP }, { "QUIT", ROUTE_V_QUIT }, { "VRFY", ROUTE_V_VRFY },
	{ "HELP", ROUTE_V_HELP }, { "BDAT", ROUTE_V_BDAT }, { "AUTH", ROUTE_V_AUTH },
};

/* Postfix's smtpd ends a verb at any white space. */
static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f';
}

enum route_verb route_verb(const char *line, size_t len, const char **args)
{
	size_t n = 0;

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	while (n < len && !blank(line[n]))
		n++;
	*args = line + n;
	while (*args < line + len && blank(**args))
		(*args)++;
	for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
		if (strlen(verbs[i].w) == n && strncasecmp(line, verbs[i].w, n) == 0)
			return verbs[i].v;
	return ROUTE_V_OTHER;
}

/* "KEY:" then optional blanks then a <path>: the path's extent. */
static bool path_of(const char *a, size_t len, const char *key, const char **p,
    size_t *plen, const char **rest)
{
	size_t k = strlen(key), i;
	const char *end = a + len;

	while (len > 0 && (a[len - 1] == '\n' || a[len - 1] == '\r' || blank(a[len - 1])))
		len--;
	end = a + len;
	if (len < k || strncasecmp(a, key, k) != 0)
		return false;
	a += k;
	while (a < end && blank(*a))
		a++;
	if (a >= end || *a != '<')
		return false;
	for (i = 1; a + i < end && a[i] != '>'; i++)
		if ((unsigned char)a[i] < 0x20 || a[i] == '<')
			return false;
	if (a + i >= end)
		return false;
	*p = a;
	*plen = i + 1;
	*rest = a + i + 1;
	if (*rest < end && !blank(**rest))
		return false;
	return true;
}

static const char r_syntax[] = "501 5.5.4 Syntax error in parameters\r\n";
static const char r_param[] = "555 5.5.4 Unsupported parameter\r\n";

const char *route_mail_parse(const char *args, size_t len, struct route_mail *m)
{
	const char *p, *rest, *end;
	size_t plen;

	memset(m, 0, sizeof(*m));
	while (len > 0 && (args[len - 1] == '\n' || args[len - 1] == '\r'))
		len--;
	end = args + len;
	if (!path_of(args, len, "FROM:", &p, &plen, &rest) || plen >= sizeof(m->path))
		return r_syntax;
	memcpy(m->path, p, plen);
	while (rest < end) {
		const char *w;
		size_t n;

		while (rest < end && blank(*rest))
			rest++;
		for (w = rest; rest < end && !blank(*rest); rest++)
			;
		n = (size_t)(rest - w);
		if (n == 0)
			break;
		if (n > 5 && strncasecmp(w, "SIZE=", 5) == 0) {
			char num[24];
			char *e;
			if (n - 5 >= sizeof(num) || !isdigit((unsigned char)w[5]))
				return r_syntax;
			memcpy(num, w + 5, n - 5);
			num[n - 5] = '\0';
			m->size = strtoull(num, &e, 10);
			if (*e != '\0')
				return r_syntax;
		} else if (n == 9 && strncasecmp(w, "BODY=7BIT", 9) == 0) {
			m->body = 1;
		} else if (n == 13 && strncasecmp(w, "BODY=8BITMIME", 13) == 0) {
			m->body = 2;
		} else if (n == 8 && strncasecmp(w, "SMTPUTF8", 8) == 0) {
			m->smtputf8 = true;
		} else {
			return r_param;
		}
	}
	return NULL;
}

const char *route_rcpt_domain(const char *args, size_t len, char *dom, size_t dlen)
{
	const char *p, *rest, *at = NULL;
	size_t plen, n;

	if (!path_of(args, len, "TO:", &p, &plen, &rest))
		return r_syntax;
	if (rest < args + len) {
		/* No RCPT parameter is offered (no DSN): refuse rather than drop. */
		for (const char *q = rest; q < args + len; q++)
			if (!blank(*q) && *q != '\r' && *q != '\n')
				return r_param;
	}
	for (size_t i = 1; i + 1 < plen; i++)
		if (p[i] == '@')
			at = p + i;
	if (at == NULL)
		return "550 5.1.3 A domain is needed in the recipient address\r\n";
	n = (size_t)(p + plen - 1 - (at + 1));
	if (n > 0 && at[n] == '.')
		n--;
	if (n == 0 || n >= dlen || n >= ROUTE_NAME_MAX - 1)
		return "550 5.1.3 Bad recipient domain\r\n";
	if (at[1] == '[')
		return "550 5.7.1 Address literals are not relayed\r\n";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)at[1 + i];
		if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c >= 0x80))
			return "550 5.1.3 Bad recipient domain\r\n";
		dom[i] = (char)tolower(c);
	}
	dom[n] = '\0';
	return NULL;
}

/* One line of an EHLO reply, after "250-" or "250 ". */
static void ehlo_line(const char *l, size_t n, struct route_ext *e)
{
	size_t k = 0;

	while (k < n && !blank(l[k]))
		k++;
	if (k == 8 && strncasecmp(l, "STARTTLS", 8) == 0)
		e->starttls = true;
	else if (k == 8 && strncasecmp(l, "8BITMIME", 8) == 0)
		e->eightbit = true;
	else if (k == 8 && strncasecmp(l, "SMTPUTF8", 8) == 0)
		e->smtputf8 = true;
	else if (k == 10 && strncasecmp(l, "PIPELINING", 10) == 0)
		e->pipelining = true;
	else if (k == 4 && strncasecmp(l, "SIZE", 4) == 0) {
		e->size = true;
		e->size_max = 0;
		for (size_t i = k; i < n; i++) {
			if (isdigit((unsigned char)l[i]))
				e->size_max = e->size_max * 10 + (uint64_t)(l[i] - '0');
			else if (!blank(l[i]))
				break;
			if (e->size_max > ((uint64_t)1 << 50))
				break;
		}
	}
}

void route_ehlo(const char *reply, size_t len, struct route_ext *e)
{
	const char *end = reply + len, *l = reply;
	bool first = true;

	memset(e, 0, sizeof(*e));
	while (l < end) {
		const char *nl = memchr(l, '\n', (size_t)(end - l));
		size_t n = nl ? (size_t)(nl - l) : (size_t)(end - l);
		if (n > 0 && l[n - 1] == '\r')
			n--;
		/* The first line is the greeting name, not an extension. */
		if (!first && n > 4)
			ehlo_line(l + 4, n - 4, e);
		first = false;
		l = nl ? nl + 1 : end;
	}
}

const char *route_mail_line(const struct route_mail *m, const struct route_ext *e,
    char *out, size_t outlen)
{
	int n;

	if (m->body == 2 && !e->eightbit)
		return "554 5.6.3 The receiving server does not accept 8BITMIME\r\n";
	if (m->smtputf8 && !e->smtputf8)
		return "553 5.6.7 The receiving server does not accept SMTPUTF8\r\n";
	if (m->size && e->size && e->size_max && m->size > e->size_max)
		return "552 5.3.4 Message size exceeds the receiving server's limit\r\n";
	n = snprintf(out, outlen, "MAIL FROM:%s", m->path);
	if (m->size && e->size)
		n += snprintf(out + n, outlen - (size_t)n, " SIZE=%llu",
		    (unsigned long long)m->size);
	if (m->body && e->eightbit)
		n += snprintf(out + n, outlen - (size_t)n, " BODY=%s",
		    m->body == 2 ? "8BITMIME" : "7BIT");
	if (m->smtputf8)
		n += snprintf(out + n, outlen - (size_t)n, " SMTPUTF8");
	snprintf(out + n, outlen - (size_t)n, "\r\n");
	return NULL;
}

bool route_mx_parse(const uint8_t *rdata, size_t len, struct route_mx *mx)
{
	size_t i = 2, o = 0;

	if (len < 3)
		return false;
	mx->pref = (uint16_t)(rdata[0] << 8 | rdata[1]);
	while (i < len && rdata[i] != 0) {
		size_t l = rdata[i++];
		if (l > 63 || i + l > len || o + l + 1 >= sizeof(mx->host))
			return false;
		if (o > 0)
			mx->host[o++] = '.';
		for (size_t j = 0; j < l; j++) {
			unsigned char c = rdata[i + j];
			if (!(isalnum(c) || c == '-' || c == '_'))
				return false;
			mx->host[o++] = (char)tolower(c);
		}
		i += l;
	}
	if (i >= len)
		return false;
	mx->host[o] = '\0';
	return true;
}

void route_mx_keep(struct route_mx *mx, size_t *n, const struct route_mx *one)
{
	size_t worst = 0;

	if (*n < ROUTE_MX_MAX) {
		mx[(*n)++] = *one;
		return;
	}
	for (size_t i = 1; i < *n; i++)
		if (mx[i].pref > mx[worst].pref)
			worst = i;
	if (one->pref < mx[worst].pref)
		mx[worst] = *one;
}

size_t route_mx_order(struct route_mx *mx, size_t n, const uint32_t *rnd)
{
	uint32_t key[ROUTE_MX_MAX];
	size_t k = 0;

	for (size_t i = 0; i < n && k < ROUTE_MX_MAX; i++) {
		if (mx[i].host[0] == '\0')
			continue;
		mx[k] = mx[i];
		key[k] = rnd[i];
		k++;
	}
	/* Insertion sort: a handful of records. */
	for (size_t i = 1; i < k; i++) {
		struct route_mx t = mx[i];
		uint32_t tk = key[i];
		size_t j = i;
		while (j > 0 && (mx[j - 1].pref > t.pref ||
		    (mx[j - 1].pref == t.pref && key[j - 1] > tk))) {
			mx[j] = mx[j - 1];
			key[j] = key[j - 1];
			j--;
		}
		mx[j] = t;
		key[j] = tk;
	}
	return k;
}

long route_reply(const uint8_t *p, size_t len, size_t max, int *code)
{
	size_t off = 0;

	for (;;) {
		const uint8_t *nl;
		size_t n;

		if (off >= len)
			return off > max ? -1 : 0;
		nl = memchr(p + off, '\n', len - off);
		if (nl == NULL)
			return len - off > 1024 || len > max ? -1 : 0;
		n = (size_t)(nl - (p + off)) + 1;
		if (n < 4 || !isdigit(p[off]) || !isdigit(p[off + 1]) || !isdigit(p[off + 2]) ||
		    (n > 4 && p[off + 3] != ' ' && p[off + 3] != '-' && p[off + 3] != '\r'))
			return -1;
		*code = (p[off] - '0') * 100 + (p[off + 1] - '0') * 10 + (p[off + 2] - '0');
		if (off > 0 && memcmp(p, p + off, 3) != 0)
			return -1;
		off += n;
		if (off > max)
			return -1;
		if (p[off - n + 3] != '-')
			return (long)off;
	}
}

void route_body_init(struct route_body *b)
{
	b->hist[0] = '\r';
	b->hist[1] = '\n';
}

static void keep(struct route_body *b, const uint8_t *p, size_t n)
{
	if (n >= 2) {
		b->hist[0] = p[n - 2];
		b->hist[1] = p[n - 1];
	} else if (n == 1) {
		b->hist[0] = b->hist[1];
		b->hist[1] = p[0];
	}
}

/*
 * As smtp_client.c: only ".CRLF" after a CRLF ends the body; any other
 * spelling of a dot line with a bare CR or LF is refused (SMTP smuggling).
 * A dot line is held back until its fate is known.
 */
int route_body_scan(struct route_body *b, const uint8_t *p, size_t len, size_t *n,
    const char **why)
{
	size_t off = 0;
	const uint8_t *d;

	while ((d = memchr(p + off, '.', len - off)) != NULL) {
		size_t i = (size_t)(d - p), left = len - i;
		uint8_t b1 = i >= 1 ? p[i - 1] : b->hist[1];
		uint8_t b2 = i >= 2 ? p[i - 2] : i == 1 ? b->hist[1] : b->hist[0];
		bool sol = b1 == '\n' && b2 == '\r', lf = b1 == '\n' && b2 != '\r';
		bool cr = b1 == '\r';

		off = i + 1;
		if (!sol && !lf && !cr)
			continue;
		if (left < 2 || (d[1] == '\r' && left < 3)) {
			*n = i;
			keep(b, p, i);
			return ROUTE_BODY_PASS;
		}
		if (d[1] == '\n' || (d[1] == '\r' && d[2] != '\n') ||
		    (d[1] == '\r' && !sol)) {
			if (i > 0) {
				*n = i;
				keep(b, p, i);
				return ROUTE_BODY_PASS;
			}
			*why = lf || d[1] == '\n' ? "bare LF around end-of-data (SMTP smuggling)" :
			    "bare CR around end-of-data (SMTP smuggling)";
			return ROUTE_BODY_BAD;
		}
		if (d[1] == '\r' && sol) {
			*n = i + 3;
			return ROUTE_BODY_END;
		}
	}
	*n = len;
	keep(b, p, len);
	return ROUTE_BODY_PASS;
}
