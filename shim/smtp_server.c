/*
 * smtp_server: the upstream's replies (see smtp.h).
 *
 * A reply is relayed whole or not at all: its lines stay unread in the
 * caller's buffer until the last one has come and every line is checked
 * (same code, well formed, SMTP_REPLY_MAX bytes in all). So a failing
 * upstream never leaves the client with "250-first" and then the shim's
 * 421: a reply that breaks off, mixes codes or grows too long is dropped
 * whole and the client gets the 421 alone. Replies that are complete go
 * on together; the first one that fails is reported on the next call, so
 * the same bytes give the same result however they are cut into reads.
 *
 * Each reply takes the command it answers off the queue, so the client
 * side knows when the reply to DATA or AUTH came. A positive reply to EHLO
 * is rewritten: STARTTLS is the shim's (added while the listen hop offers
 * it, removed otherwise), XCLIENT and XFORWARD are never offered (the
 * shim answers them), AUTH is hidden from a client that must not use it in
 * the clear; CHUNKING and SIZE are noted for BDAT. The replies to the
 * shim's own EHLO and XCLIENT are smtp_xclient.c's.
 */
#include "smtp_int.h"

#include <string.h>

const struct text smtp_t_malformed = TEXT("421 4.4.0 upstream sent a malformed reply\r\n");
const char smtp_why_malformed[] = "malformed reply from upstream";
const char smtp_why_long[] = "upstream reply too long";

void smtp_server_enter(struct smtp *s, uint8_t to)
{
	if (s->sstate != S_DEAD)
		s->sstate = to;
}

/* ---- reply lines ---- */

enum { L_MORE, L_OK, L_BAD };

static unsigned code_of(const uint8_t *p)
{
	return (unsigned)(p[0] - '0') * 100 + (unsigned)(p[1] - '0') * 10 +
	    (unsigned)(p[2] - '0');
}

static bool digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/* "ddd-text", "ddd text" or "ddd", code 200-599 (1xx has no place in a
 * session the shim relays). */
static bool line_ok(const uint8_t *p, size_t n)
{
	if (n < 4 || p[0] < '2' || p[0] > '5' || !digit(p[1]) || !digit(p[2]))
		return false;
	if (p[3] != '-' && p[3] != ' ' && p[3] != '\r' && p[3] != '\n')
		return false;
	return smtp_clean_len(p, n, true) == n;
}

static int reply_line(const uint8_t *p, size_t len, size_t *n)
{
	size_t lim = len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX;
	const uint8_t *lf = memchr(p, '\n', lim);

	if (lf == NULL)
		return len < SMTP_LINE_MAX ? L_MORE : L_BAD;
	*n = (size_t)(lf - p) + 1;
	return line_ok(p, *n) ? L_OK : L_BAD;
}

static bool final_line(const uint8_t *p)
{
	return p[3] != '-';
}

int smtp_gather(struct smtp *s, const uint8_t *p, size_t len)
{
	for (;;) {
		size_t off = s->reply_len, n = 0;
		int r = off > len ? L_BAD : reply_line(p + off, len - off, &n);

		if (r == L_BAD)
			return G_BAD;
		if (r == L_MORE)
			return len > SMTP_REPLY_MAX ? G_LONG : G_MORE;
		if (s->reply_code && code_of(p + off) != s->reply_code)
			return G_BAD;
		s->reply_code = (uint16_t)code_of(p + off);
		s->reply_len = off + n;
		if (s->reply_len > SMTP_REPLY_MAX)
			return G_LONG;
		if (final_line(p + off))
			return G_DONE;
	}
}

void smtp_reply_reset(struct smtp *s)
{
	s->reply_code = 0;
	s->reply_len = 0;
}

/* The text after "ddd-" of a checked line, without its line end. */
static const uint8_t *line_text(const uint8_t *p, size_t n, size_t *tlen)
{
	size_t start = p[3] == '-' || p[3] == ' ' ? 4 : 3, end = n - 1;

	if (end > 0 && p[end - 1] == '\r')
		end--;
	*tlen = end > start ? end - start : 0;
	return p + start;
}

/* The length of the first word of t (up to white space). */
static size_t word_len(const uint8_t *t, size_t tlen)
{
	size_t len = 0;

	while (len < tlen && !smtp_space(t[len]))
		len++;
	return len;
}

/* The first word of an EHLO keyword line is w (prefix: starts with w). */
static bool keyword(const uint8_t *t, size_t tlen, const char *w, bool prefix)
{
	size_t wl = strlen(w), len = word_len(t, tlen);

	return (prefix ? len >= wl : len == wl) && smtp_same(t, w, wl);
}

static size_t next_line(const uint8_t *p, size_t at, size_t n)
{
	const uint8_t *lf = memchr(p + at, '\n', n - at);

	return (size_t)(lf - p) + 1;
}

/* Keyword lines after the first (the first names the server). */
bool smtp_offers(const uint8_t *p, size_t n, const char *word)
{
	for (size_t at = next_line(p, 0, n), end; at < n; at = end) {
		size_t tlen;
		const uint8_t *t;
		end = next_line(p, at, n);
		t = line_text(p + at, end - at, &tlen);
		if (keyword(t, tlen, word, false))
			return true;
	}
	return false;
}

/* "SIZE n" (RFC 1870): n, or 0 when there is none, it is 0 (no limit) or
 * it does not parse; SMTP_CHUNK_MAX then bounds a chunk. */
static uint64_t size_limit(const uint8_t *t, size_t tlen)
{
	size_t i = word_len(t, tlen), digits = 0;
	uint64_t v = 0;

	while (i < tlen && smtp_space(t[i]))
		i++;
	for (; i < tlen && digit(t[i]); i++, digits++) {
		unsigned d = t[i] - '0';
		if (digits == 20 || v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	return i == tlen ? v : 0;
}

/* ---- the EHLO rewrite ---- */

struct out {
	char *p;
	size_t len, last;
	bool full;
};

static void emit(struct out *o, const uint8_t *code, const uint8_t *t,
    size_t tlen)
{
	if (o->len + tlen + 6 > SMTP_EHLO_MAX + 64) {
		o->full = true;
		return;
	}
	memcpy(o->p + o->len, code, 3);
	o->last = o->len + 3;
	o->p[o->len + 3] = '-';
	memcpy(o->p + o->len + 4, t, tlen);
	memcpy(o->p + o->len + 4 + tlen, "\r\n", 2);
	o->len += tlen + 6;
}

/* Extensions the client never sees from the upstream: STARTTLS on the
 * listen hop is the shim's; XCLIENT and XFORWARD would let the client
 * tell the upstream who it is (the upstream trusts the shim's address). */
static const char *const hidden[] = { "STARTTLS", "XCLIENT", "XFORWARD" };

/* RFC 8689: a message that asks for REQUIRETLS may only go on over TLS
 * whose server was authenticated, on every hop this path has. */
static bool requiretls_ok(const struct smtp *s)
{
	return s->listen_tls && s->up_authenticated;
}

static bool keep(const struct smtp *s, const uint8_t *t, size_t tlen)
{
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
		if (keyword(t, tlen, hidden[i], false))
			return false;
	if (keyword(t, tlen, "REQUIRETLS", false) && !requiretls_ok(s))
		return false;
	if (smtp_tls_required(s) && (keyword(t, tlen, "AUTH", false) ||
	    keyword(t, tlen, "AUTH=", true)))
		return false;
	return true;
}

/* What the client side needs to know of the upstream's extensions. */
static void note(struct smtp *s, const uint8_t *t, size_t tlen)
{
	if (keyword(t, tlen, "CHUNKING", false))
		s->up_chunking = true;
	if (keyword(t, tlen, "SIZE", false))
		s->up_size = size_limit(t, tlen);
}

/* Rewrites the checked reply p[0..n) into buf, CRLF line ends and the
 * continuation marks renumbered; 0 if it does not fit. */
static size_t rewrite(struct smtp *s, const uint8_t *p, size_t n, char *buf)
{
	struct out o = { buf, 0, 0, false };
	const uint8_t starttls[] = "STARTTLS";

	s->up_chunking = false;
	s->up_size = 0;
	s->requiretls = false;
	for (size_t at = 0, end; at < n; at = end) {
		size_t tlen;
		const uint8_t *t;
		end = next_line(p, at, n);
		t = line_text(p + at, end - at, &tlen);
		if (at > 0)
			note(s, t, tlen);
		if (at == 0 || keep(s, t, tlen)) {
			emit(&o, p, t, tlen);
			if (at > 0 && keyword(t, tlen, "REQUIRETLS", false))
				s->requiretls = true;
		}
	}
	if (smtp_tls_offered(s))
		emit(&o, p, starttls, sizeof(starttls) - 1);
	if (o.full)
		return 0;
	o.p[o.last] = ' ';
	return o.len;
}

/* ---- replies ---- */

/* A reply is complete: the command it answers leaves the queue. True when
 * the client side reads differently from now on. */
static bool reply_done(struct smtp *s)
{
	unsigned code = s->reply_code;

	smtp_reply_reset(s);
	if (code == 421)
		s->up_421 = true;
	if (s->qlen == 0)
		return false; /* unsolicited, e.g. a 421 before closing */
	switch (smtp_qpop(s)) {
	case K_DATA:
		/* The body starts at a line start. */
		s->hist[0] = '\r';
		s->hist[1] = '\n';
		smtp_client_enter(s, code == 354 ? C_BODY : C_CMD);
		return true;
	case K_EHLO:
	case K_HELO:
		/* Only a greeting the upstream took ends the wait for it: one it
		 * refused reset nothing there (Postfix answers 501 before its
		 * reset), so what came before TLS must not go on. */
		if (code / 100 == 2)
			s->need_ehlo = false;
		return false;
	case K_AUTH:
	case K_AUTHC:
		if (code / 100 == 2)
			s->authed = true;
		smtp_client_enter(s, code == 334 ? C_SASL : C_CMD);
		return true;
	case K_QUIT:
		/* Nothing the upstream sends after it is relayed. */
		s->quit_done = code == 221;
		return s->quit_done;
	default:
		return false;
	}
}

/* A positive EHLO reply goes out rewritten, in one write (some clients
 * read it in one read). */
static struct smtp_result ehlo_reply(struct smtp *s, const uint8_t *p,
    char *scratch)
{
	size_t n = s->reply_len;
	struct text t = { scratch, rewrite(s, p, n, scratch) };

	if (t.len == 0)
		return smtp_die(s, &smtp_t_malformed, "EHLO reply too long");
	reply_done(s);
	return smtp_answer(SMTP_REPLY, n, &t, NULL);
}

static struct smtp_result broken(struct smtp *s, int g)
{
	return smtp_die(s, &smtp_t_malformed,
	    g == G_LONG ? smtp_why_long : smtp_why_malformed);
}

/*
 * The reply in progress (reply_len, reply_code) is always the first one
 * not yet covered by a verdict, so it can be resumed on the next call;
 * a rewritten EHLO reply, which needs a verdict of its own, is gathered
 * again from its start.
 */
static struct smtp_result replies(struct smtp *s, const uint8_t *p,
    size_t len, char *scratch)
{
	size_t off = 0;

	while (off < len) {
		int g = smtp_gather(s, p + off, len - off);
		if (g == G_MORE)
			break;
		if (g != G_DONE)
			return off ? smtp_pass(off) : broken(s, g);
		/* Replies to the shim's own commands have verdicts of their own. */
		if (smtp_xclient_owed(s)) {
			if (off == 0)
				return smtp_xclient_reply(s, p);
			smtp_reply_reset(s);
			break;
		}
		if (smtp_qfront(s) == K_EHLO && s->reply_code / 100 == 2) {
			if (off == 0)
				return ehlo_reply(s, p, scratch);
			smtp_reply_reset(s);
			break;
		}
		off += s->reply_len;
		if (reply_done(s))
			break;
	}
	return smtp_pass(off);
}

struct smtp_result smtp_server(struct smtp *s, const uint8_t *p, size_t len,
    char *scratch)
{
	if (s->sstate == S_DEAD)
		return smtp_dead();
	if (s->setup != SETUP_NONE)
		return smtp_die(s, NULL, "upstream relay started before its TLS");
	if (len == 0)
		return smtp_verdict(SMTP_MORE, 0);
	return replies(s, p, len, scratch);
}

bool smtp_quit_done(const struct smtp *s)
{
	return s->quit_done;
}

bool smtp_mid_message(const struct smtp *s)
{
	return s->cstate == C_BODY || s->cstate == C_CHUNK;
}

bool smtp_upstream_closing(const struct smtp *s)
{
	return s->up_421;
}

void smtp_upstream_authenticated(struct smtp *s)
{
	s->up_authenticated = true;
}
