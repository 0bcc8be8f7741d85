/*
 * smtp_client: the client's bytes (see smtp.h).
 *
 * The client side knows which bytes are commands: everything else (DATA
 * bodies, BDAT chunks, SASL responses) is passed without being read as a
 * command, and a command's reading mode is only decided by the upstream's
 * reply to DATA or AUTH (smtp_server.c).
 *
 * A command line is cut into words as Postfix's smtpd cuts it (any of
 * space, HT, VT, FF ends a word; case does not matter), so the shim and
 * the upstream agree on which command it is. What servers read in
 * different ways is refused with 500 and never forwarded: white space
 * before the verb (a server that cuts lines at its own length limit could
 * find a verb the shim did not), a bare CR (some take it for a line end),
 * a NUL (C servers end the line there).
 *
 * Each verb has one row in verbs[]: its check (policy and syntax: 503,
 * 530, 501, 502, ...) and its proceed (what is done with the line).
 * A DATA body is smtp_body.c's, up to its end-of-data line.
 *
 * Decisions the header leaves open:
 *  - Silently dropped bytes (the rest of an overlong line, the chunk of a
 *    refused BDAT) come as SMTP_REPLY with reply NULL and reply_len 0.
 *  - Before smtp_upstream_tls_up() the relay is not running: smtp_client()
 *    answers SMTP_HOLD (call again once TLS is up).
 *  - Any bytes offered to smtp_client() between SMTP_STARTTLS and
 *    smtp_listen_tls_up() close the session (injection), as a second line
 *    of defence behind the caller's own check.
 *  - Verdicts are split so that the same bytes give the same result however
 *    they are cut into reads: bytes before a fault pass first, the fault is
 *    reported with n = 0 on the next call.
 */
#include "smtp_int.h"

#include <string.h>

static const struct text
    t_long = TEXT("500 5.5.2 line too long\r\n"),
    t_badchar = TEXT("500 5.5.2 invalid character in command\r\n"),
    t_lead = TEXT("500 5.5.2 white space before the command\r\n"),
    t_need_tls = TEXT("530 5.7.0 Must issue a STARTTLS command first\r\n"),
    t_need_ehlo = TEXT("503 5.5.1 Send EHLO first\r\n"),
    t_tls_syntax = TEXT("501 5.5.4 Syntax: STARTTLS\r\n"),
    t_ready = TEXT("220 2.0.0 Ready to start TLS\r\n"),
    t_tls_active = TEXT("554 5.5.1 TLS already active\r\n"),
    t_no_tls = TEXT("502 5.5.1 STARTTLS not available\r\n"),
    t_auth_first = TEXT("554 5.5.1 STARTTLS must come before AUTH\r\n"),
    t_identity = TEXT("550 5.7.0 Client identity is set by the relay, not by commands\r\n"),
    t_requiretls = TEXT("550 5.7.30 REQUIRETLS not available: this path is not authenticated TLS all the way\r\n"),
    t_bdat = TEXT("501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
    t_bdat_size = TEXT("552 5.3.4 BDAT chunk larger than the message size limit\r\n"),
    t_no_bdat = TEXT("502 5.5.1 BDAT not supported by the mail server\r\n");

void smtp_client_enter(struct smtp *s, uint8_t to)
{
	if (s->cstate != C_DEAD)
		s->cstate = to;
}

/* ---- bytes ---- */

/* Postfix's ISSPACE in the C locale; CR and LF never reach it here. */
bool smtp_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r' ||
	    c == '\n';
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* ASCII only: a locale must not change what a command is. */
bool smtp_same(const uint8_t *p, const char *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower(p[i]) != lower((unsigned char)w[i]))
			return false;
	return true;
}

/* How many bytes come before a NUL or a CR that does not end the line:
 * some peers take a bare CR for a line end, which would let a line say
 * more than the shim saw. complete: p[n-1] is the line's LF (else the last
 * CR may still get its LF). */
size_t smtp_clean_len(const uint8_t *p, size_t n, bool complete)
{
	size_t scan = n ? n - 1 : 0;
	const uint8_t *nul = memchr(p, 0, n), *cr;

	if (complete && scan)
		scan--;
	cr = memchr(p, '\r', scan);
	if (nul == NULL || (cr != NULL && cr < nul))
		nul = cr;
	return nul ? (size_t)(nul - p) : n;
}

/* ---- a command line, in words ---- */

struct verb;

struct line {
	const uint8_t *p;
	size_t n;             /* bytes, line end included */
	size_t end;           /* bytes before the line end */
	size_t at, len;       /* the verb: p[at..at+len) */
	size_t args;          /* where the words after the verb start (end if none) */
	const struct verb *v;
};

/* What a check decides: go on (t NULL), refuse the line with t, or, with
 * close, end the session (close is the reason). */
struct check {
	const struct text *t;
	const char *close;
};

struct verb {
	char name[9];
	uint8_t kind;         /* what waits for the reply */
	struct check (*check)(struct smtp *, const struct line *);
	struct smtp_result (*proceed)(struct smtp *, const struct line *);
};

/* The line p[0..n), LF included, cut as Postfix's smtpd_token cuts it:
 * white space before the verb, the verb, white space, the arguments. */
static void words(struct line *l, const uint8_t *p, size_t n)
{
	size_t i = 0;

	l->p = p;
	l->n = n;
	l->end = n - 1;
	if (l->end > 0 && p[l->end - 1] == '\r')
		l->end--;
	while (i < l->end && smtp_space(p[i]))
		i++;
	l->at = i;
	while (i < l->end && !smtp_space(p[i]))
		i++;
	l->len = i - l->at;
	while (i < l->end && smtp_space(p[i]))
		i++;
	l->args = i;
}

static bool has_args(const struct line *l)
{
	return l->args < l->end;
}

/* ---- checks ---- */

static const struct check go = { NULL, NULL };

static struct check refuse_with(const struct text *t)
{
	struct check c = { t, NULL };
	return c;
}

static struct check close_with(const struct text *t, const char *why)
{
	struct check c = { t, why };
	return c;
}

/* A verb must open the line; the checks start here (BDAT's own syntax
 * refuses it too). */
static struct check check_line(const struct line *l)
{
	return l->at > 0 ? refuse_with(&t_lead) : go;
}

/* The verbs anyone may send, before TLS and before the new EHLO. */
static struct check check_open(struct smtp *s, const struct line *l)
{
	(void)s;
	return check_line(l);
}

/* The rest of a session: after EHLO once TLS is up, and only with TLS
 * where it is required. */
static struct check check_session(struct smtp *s, const struct line *l)
{
	if (l->at > 0)
		return check_line(l);
	if (s->need_ehlo)
		return refuse_with(&t_need_ehlo);
	if (smtp_tls_required(s))
		return refuse_with(&t_need_tls);
	return go;
}

/* Does a MAIL line carry the REQUIRETLS parameter (any case, any place)? */
static bool asks_requiretls(const struct line *l)
{
	static const char w[] = "REQUIRETLS";
	const size_t wl = sizeof(w) - 1;

	for (size_t i = l->args; i + wl <= l->end; i++) {
		bool start = i == l->args || smtp_space(l->p[i - 1]);
		bool stop = i + wl == l->end || smtp_space(l->p[i + wl]);
		if (start && stop && smtp_same(l->p + i, w, wl))
			return true;
	}
	return false;
}

/* RFC 8689: REQUIRETLS only where it was offered; never dropped silently. */
static struct check check_mail(struct smtp *s, const struct line *l)
{
	struct check c = check_session(s, l);

	if (c.t == NULL && !c.close && !s->requiretls && asks_requiretls(l))
		return refuse_with(&t_requiretls);
	return c;
}

static struct check check_starttls(struct smtp *s, const struct line *l)
{
	if (l->at > 0)
		return check_line(l);
	if (s->need_ehlo)
		return refuse_with(&t_need_ehlo);
	if (s->listen_mode == SMTP_LISTEN_PLAIN)
		return refuse_with(&t_no_tls);
	if (s->listen_tls || s->listen_mode == SMTP_LISTEN_IMPLICIT)
		return refuse_with(&t_tls_active);
	/* The upstream never sees this STARTTLS, so nothing would make it
	 * forget a login made before it (RFC 3207 section 4.2). */
	if (s->authed)
		return close_with(&t_auth_first, "client sent STARTTLS after AUTH");
	return has_args(l) ? refuse_with(&t_tls_syntax) : go;
}

/* XCLIENT, XFORWARD: refused whatever the spelling, never forwarded
 * (after the policy, which may refuse them first). */
static struct check check_identity(struct smtp *s, const struct line *l)
{
	struct check c = check_session(s, l);

	return c.t ? c : refuse_with(&t_identity);
}

/*
 * RFC 3030 bdat-cmd in its one plain spelling (smtp.h). Servers read other
 * spellings in other ways (white space, zeros, overflow), and a chunk the
 * upstream sizes differently is read as commands behind the shim's back.
 */
bool smtp_bdat_parse(const uint8_t *p, size_t end, uint64_t *chunk, bool *last)
{
	size_t i = 5, digits = 0;
	uint64_t size = 0;
	bool is_last;

	if (end <= i || !smtp_same(p, "BDAT ", 5))
		return false;
	if (p[i] == '0' && i + 1 < end && p[i + 1] >= '0' && p[i + 1] <= '9')
		return false;
	for (; i < end && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
		unsigned d = p[i] - '0';
		if (digits == 20 || size > (UINT64_MAX - d) / 10)
			return false;
		size = size * 10 + d;
	}
	if (digits == 0)
		return false;
	is_last = i < end;
	if (is_last && (end - i != 5 || p[i] != ' ' || !smtp_same(p + i + 1, "LAST", 4)))
		return false;
	*chunk = size;
	*last = is_last;
	return true;
}

/* Fills chunk_left and chunk_last. */
static bool parse_bdat(struct smtp *s, const struct line *l)
{
	return l->at == 0 && smtp_bdat_parse(l->p, l->end, &s->chunk_left, &s->chunk_last);
}

/* Where a chunk ends must be known even when BDAT is refused: a malformed
 * one, or one larger than any message may be, ends the session. */
static struct check check_bdat(struct smtp *s, const struct line *l)
{
	uint64_t cap = s->up_size ? s->up_size : SMTP_CHUNK_MAX;
	struct check c;

	if (!parse_bdat(s, l))
		return close_with(&t_bdat, "malformed BDAT");
	if (s->chunk_left > cap)
		return close_with(&t_bdat_size, "BDAT chunk over the message size limit");
	c = check_session(s, l);
	if (c.t == NULL && !s->up_chunking)
		/* An upstream without CHUNKING would read the chunk as commands. */
		c = refuse_with(&t_no_bdat);
	return c;
}

/* ---- proceeds ---- */

/* A reply of the shim's own must not overtake the ones the upstream owes. */
static struct smtp_result say(const struct smtp *s, size_t n,
    const struct text *t)
{
	if (s->qlen)
		return smtp_verdict(SMTP_HOLD, 0);
	return smtp_answer(SMTP_REPLY, n, t, NULL);
}

static struct smtp_result forward(struct smtp *s, size_t n, uint8_t kind,
    uint8_t next)
{
	if (s->qlen == SMTP_QUEUE)
		return smtp_verdict(SMTP_HOLD, 0);
	smtp_qpush(s, kind);
	smtp_client_enter(s, next);
	return smtp_verdict(SMTP_PASS, n);
}

static struct smtp_result proceed_forward(struct smtp *s, const struct line *l)
{
	return forward(s, l->n, l->v->kind, C_CMD);
}

/* DATA, AUTH: the reply decides how what follows is read. */
static struct smtp_result proceed_wait(struct smtp *s, const struct line *l)
{
	return forward(s, l->n, l->v->kind, C_WAIT);
}

/* The first EHLO or HELO waits for the XCLIENT exchange (smtp_xclient.c). */
static struct smtp_result proceed_greet(struct smtp *s, const struct line *l)
{
	if (smtp_xclient_pending(s))
		return smtp_xclient_greet(s);
	return forward(s, l->n, l->v->kind, C_CMD);
}

static struct smtp_result proceed_bdat(struct smtp *s, const struct line *l)
{
	return forward(s, l->n, K_BDAT, s->chunk_left ? C_CHUNK : C_CMD);
}

static struct smtp_result proceed_starttls(struct smtp *s, const struct line *l)
{
	if (s->qlen)
		return smtp_verdict(SMTP_HOLD, 0);
	smtp_client_enter(s, C_TLS);
	return smtp_answer(SMTP_STARTTLS, l->n, &t_ready, NULL);
}

/* Unreachable behind check_identity; says no again rather than forward. */
static struct smtp_result proceed_refuse(struct smtp *s, const struct line *l)
{
	return say(s, l->n, &t_identity);
}

/* One table of verbs; the last row takes every other line. */
static const struct verb verbs[] = {
	{ "EHLO", K_EHLO, check_open, proceed_greet },
	{ "HELO", K_HELO, check_open, proceed_greet },
	{ "NOOP", K_OTHER, check_open, proceed_forward },
	{ "RSET", K_OTHER, check_open, proceed_forward },
	{ "QUIT", K_QUIT, check_open, proceed_forward },
	{ "STARTTLS", K_NONE, check_starttls, proceed_starttls },
	{ "DATA", K_DATA, check_session, proceed_wait },
	{ "BDAT", K_BDAT, check_bdat, proceed_bdat },
	{ "AUTH", K_AUTH, check_session, proceed_wait },
	{ "MAIL", K_OTHER, check_mail, proceed_forward },
	{ "XCLIENT", K_NONE, check_identity, proceed_refuse },
	{ "XFORWARD", K_NONE, check_identity, proceed_refuse },
	{ "", K_OTHER, check_session, proceed_forward },
};

#define NVERBS (sizeof(verbs) / sizeof(verbs[0]))

static const struct verb *lookup(const struct line *l)
{
	for (size_t i = 0; i < NVERBS - 1; i++)
		if (strlen(verbs[i].name) == l->len &&
		    smtp_same(l->p + l->at, verbs[i].name, l->len))
			return &verbs[i];
	return &verbs[NVERBS - 1];
}

/* ---- commands ---- */

/* The chunk of a refused BDAT still follows: drop it rather than read
 * its bytes as commands. */
static struct smtp_result refused(struct smtp *s, const struct line *l,
    struct check c)
{
	struct smtp_result r;

	if (c.close)
		return smtp_die(s, c.t, c.close);
	r = say(s, l->n, c.t);
	if (r.v == SMTP_REPLY && l->v->kind == K_BDAT && s->chunk_left)
		smtp_client_enter(s, C_DISCARD);
	return r;
}

static struct smtp_result too_long(struct smtp *s)
{
	struct smtp_result r = say(s, SMTP_LINE_MAX, &t_long);

	if (r.v == SMTP_REPLY)
		smtp_client_enter(s, C_SKIP);
	return r;
}

static struct smtp_result command(struct smtp *s, const uint8_t *p, size_t len)
{
	size_t lim = len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX;
	const uint8_t *lf = memchr(p, '\n', lim);
	struct line l;
	struct check c;

	if (lf == NULL)
		return len < SMTP_LINE_MAX ? smtp_verdict(SMTP_MORE, 0) : too_long(s);
	words(&l, p, (size_t)(lf - p) + 1);
	if (smtp_clean_len(p, l.n, true) < l.n)
		return say(s, l.n, &t_badchar);
	l.v = lookup(&l);
	c = l.v->check(s, &l);
	if (c.t != NULL)
		return refused(s, &l, c);
	return l.v->proceed(s, &l);
}

/* ---- what is not commands ---- */

static struct smtp_result chunk(struct smtp *s, size_t len,
    enum smtp_verdict v)
{
	size_t n = s->chunk_left < len ? (size_t)s->chunk_left : len;

	s->chunk_left -= n;
	if (s->chunk_left == 0)
		smtp_client_enter(s, C_CMD);
	return smtp_verdict(v, n);
}

static struct smtp_result skip(struct smtp *s, const uint8_t *p, size_t len)
{
	const uint8_t *lf = memchr(p, '\n', len);

	if (lf == NULL)
		return smtp_verdict(SMTP_REPLY, len);
	smtp_client_enter(s, C_CMD);
	return smtp_verdict(SMTP_REPLY, (size_t)(lf - p) + 1);
}

/* A SASL response is opaque but still a line: streamed (GSSAPI tokens may
 * pass the command limit), with the same bytes refused as in commands, so
 * the upstream cannot read a command into it the shim did not see. */
static struct smtp_result sasl(struct smtp *s, const uint8_t *p, size_t len)
{
	const uint8_t *lf = memchr(p, '\n', len);
	size_t n = lf ? (size_t)(lf - p) + 1 : len;
	size_t ok = smtp_clean_len(p, n, lf != NULL);

	/* What comes before the fault passes first, as in a body. */
	if (ok < n)
		return ok ? smtp_verdict(SMTP_PASS, ok) : smtp_die(s, &t_badchar,
		    "invalid character in SASL response");
	if (lf)
		return forward(s, n, K_AUTHC, C_WAIT);
	if (p[n - 1] == '\r')
		n--;
	return smtp_pass(n);
}

struct smtp_result smtp_client(struct smtp *s, const uint8_t *p, size_t len)
{
	if (s->cstate == C_DEAD)
		return smtp_dead();
	if (s->setup != SETUP_NONE || s->cstate == C_WAIT)
		return smtp_verdict(SMTP_HOLD, 0);
	if (len == 0)
		return smtp_verdict(SMTP_MORE, 0);
	switch (s->cstate) {
	case C_CMD:
		return command(s, p, len);
	case C_BODY:
		return smtp_body(s, p, len);
	case C_CHUNK:
		return chunk(s, len, SMTP_PASS);
	case C_DISCARD:
		return chunk(s, len, SMTP_REPLY);
	case C_SASL:
		return sasl(s, p, len);
	case C_SKIP:
		return skip(s, p, len);
	default:
		return smtp_die(s, NULL, "client sent data after STARTTLS (injection)");
	}
}
