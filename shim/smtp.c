/*
 * smtp: the SMTP state machine of one relayed session (see smtp.h).
 *
 * The client side knows which bytes are commands: everything else (DATA
 * bodies, BDAT chunks, SASL responses) is passed without being read as a
 * command, and a command's reading mode is only decided by the upstream's
 * reply to DATA or AUTH. The server side matches replies to the queue of
 * commands that wait for them, so the client side knows when that reply
 * came, and rewrites positive EHLO replies.
 *
 * Decisions the header leaves open:
 *  - Silently dropped bytes (the rest of an overlong line, the chunk of a
 *    refused BDAT) come as SMTP_REPLY with reply NULL and reply_len 0.
 *  - Before smtp_upstream_tls_up() the relay is not running: smtp_client()
 *    answers SMTP_HOLD (call again once TLS is up), and smtp_server()
 *    closes, since nothing may cross before the upstream's TLS.
 *  - Any bytes offered to smtp_client() between SMTP_STARTTLS and
 *    smtp_listen_tls_up() close the session (injection), as a second line
 *    of defence behind the caller's own check.
 *  - After any SMTP_CLOSE both sides keep answering SMTP_CLOSE.
 *  - Verdicts are split so that the same bytes give the same result however
 *    they are cut into reads: bytes before a fault pass first, the fault is
 *    reported with n = 0 on the next call.
 */
#include "smtp.h"

#include <string.h>

/* Client side reading modes (cstate). */
enum {
	C_CMD,      /* command lines */
	C_WAIT,     /* DATA or AUTH forwarded: its reply decides what follows */
	C_BODY,     /* DATA body, up to CRLF.CRLF */
	C_CHUNK,    /* BDAT chunk: chunk_left bytes nobody reads */
	C_DISCARD,  /* chunk of a BDAT refused here: dropped */
	C_SASL,     /* one SASL response line */
	C_SKIP,     /* the rest of an overlong line: dropped */
	C_TLS,      /* STARTTLS answered; the handshake comes next */
	C_DEAD,
};

/* What a '.' in a body follows, for the end-of-data matcher. */
enum {
	D_SOL,      /* at a line start after CRLF (or at the body's start) */
	D_SOL_LF,   /* at a line start after a bare LF */
	D_SOL_CR,   /* after a bare CR, and a '.' follows */
	D_MID,      /* inside a line */
};

/* Server side (sstate). */
enum { S_LINES, S_EHLO, S_DEAD };

/* Upstream STARTTLS dialogue (setup). */
enum { SETUP_NONE, SETUP_GREETING, SETUP_EHLO, SETUP_STARTTLS, SETUP_TLS,
	SETUP_FAILED };

/* What waits for a reply (queue entries); K_STARTTLS is never queued. */
enum { K_NONE, K_GREETING, K_EHLO, K_HELO, K_DATA, K_DOT, K_BDAT, K_AUTH,
	K_AUTHC, K_QUIT, K_OTHER, K_STARTTLS };

struct text {
	const char *s;
	size_t len;
};

#define TEXT(x) { x, sizeof(x) - 1 }

static const struct text
    t_long = TEXT("500 5.5.2 line too long\r\n"),
    t_badchar = TEXT("500 5.5.2 invalid character in command\r\n"),
    t_need_tls = TEXT("530 5.7.0 Must issue a STARTTLS command first\r\n"),
    t_need_ehlo = TEXT("503 5.5.1 Send EHLO first\r\n"),
    t_tls_syntax = TEXT("501 5.5.4 Syntax: STARTTLS\r\n"),
    t_ready = TEXT("220 2.0.0 Ready to start TLS\r\n"),
    t_tls_active = TEXT("554 5.5.1 TLS already active\r\n"),
    t_no_tls = TEXT("502 5.5.1 STARTTLS not available\r\n"),
    t_bdat = TEXT("501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
    t_no_bdat = TEXT("502 5.5.1 BDAT not supported by the mail server\r\n"),
    t_bare_lf = TEXT("554 5.5.2 bare LF around end-of-data refused\r\n"),
    t_bare_cr = TEXT("554 5.5.2 bare CR around end-of-data refused\r\n"),
    t_malformed = TEXT("421 4.4.0 upstream sent a malformed reply\r\n"),
    t_tls_failed = TEXT("421 4.7.0 TLS to the upstream failed, try again later\r\n");

static const char why_malformed[] = "malformed reply from upstream";

/* Who may say what before TLS (when required) and before the new EHLO. */
#define PRE_TLS  1
#define PRE_EHLO 2

struct verb {
	char name[9];
	uint8_t len, kind, allow;
};

static const struct verb verbs[] = {
	{ "EHLO", 4, K_EHLO, PRE_TLS | PRE_EHLO },
	{ "HELO", 4, K_HELO, PRE_TLS | PRE_EHLO },
	{ "NOOP", 4, K_OTHER, PRE_TLS | PRE_EHLO },
	{ "RSET", 4, K_OTHER, PRE_TLS | PRE_EHLO },
	{ "QUIT", 4, K_QUIT, PRE_TLS | PRE_EHLO },
	{ "STARTTLS", 8, K_STARTTLS, PRE_TLS },
	{ "DATA", 4, K_DATA, 0 },
	{ "BDAT", 4, K_BDAT, 0 },
	{ "AUTH", 4, K_AUTH, 0 },
};

static const struct verb other_verb = { "", 0, K_OTHER, 0 };

/* ---- small helpers ---- */

static struct smtp_result verdict(enum smtp_verdict v, size_t n)
{
	struct smtp_result r = { v, n, NULL, 0, NULL };
	return r;
}

static struct smtp_result answer(enum smtp_verdict v, size_t n,
    const struct text *t, const char *reason)
{
	struct smtp_result r = { v, n, t ? t->s : NULL, t ? t->len : 0, reason };
	return r;
}

static struct smtp_result pass_or_more(size_t n)
{
	return verdict(n ? SMTP_PASS : SMTP_MORE, n);
}

/* A CLOSE ends both directions: nothing read afterwards can be trusted. */
static struct smtp_result die(struct smtp *s, const struct text *t,
    const char *reason)
{
	s->cstate = C_DEAD;
	s->sstate = S_DEAD;
	return answer(SMTP_CLOSE, 0, t, reason);
}

static struct smtp_result dead(void)
{
	return answer(SMTP_CLOSE, 0, NULL, "session already closed");
}

static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* ASCII only: a locale must not change what a command is. */
static bool same(const uint8_t *p, const char *w, size_t n)
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
static size_t clean_len(const uint8_t *p, size_t n, bool complete)
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

static bool bad_bytes(const uint8_t *p, size_t n, bool complete)
{
	return clean_len(p, n, complete) < n;
}

static void qpush(struct smtp *s, uint8_t kind)
{
	s->q[(s->qhead + s->qlen) % SMTP_QUEUE] = kind;
	s->qlen++;
}

static uint8_t qfront(const struct smtp *s)
{
	return s->qlen ? s->q[s->qhead] : K_NONE;
}

static uint8_t qpop(struct smtp *s)
{
	uint8_t k = qfront(s);

	if (s->qlen) {
		s->qhead = (uint8_t)((s->qhead + 1) % SMTP_QUEUE);
		s->qlen--;
	}
	return k;
}

static bool tls_offered(const struct smtp *s)
{
	return s->listen_mode == SMTP_LISTEN_STARTTLS && !s->listen_tls;
}

static bool tls_required(const struct smtp *s)
{
	return tls_offered(s) && !s->plain_allowed;
}

/* ---- client side: commands ---- */

/* A reply of the shim's own must not overtake the ones the upstream owes. */
static struct smtp_result say(const struct smtp *s, size_t n,
    const struct text *t)
{
	if (s->qlen)
		return verdict(SMTP_HOLD, 0);
	return answer(SMTP_REPLY, n, t, NULL);
}

static struct smtp_result forward(struct smtp *s, size_t n, uint8_t kind,
    uint8_t next)
{
	if (s->qlen == SMTP_QUEUE)
		return verdict(SMTP_HOLD, 0);
	qpush(s, kind);
	s->cstate = next;
	return verdict(SMTP_PASS, n);
}

static const struct verb *lookup(const uint8_t *p, size_t n)
{
	size_t len = 0;

	while (len < n && p[len] != ' ' && p[len] != '\r' && p[len] != '\n')
		len++;
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (verbs[i].len == len && same(p, verbs[i].name, len))
			return &verbs[i];
	return &other_verb;
}

/* RFC 3030 bdat-cmd, strictly: an upstream that reads the line otherwise
 * would take the chunk for commands. Fills chunk_left and chunk_last. */
static bool parse_bdat(struct smtp *s, const uint8_t *p, size_t n)
{
	size_t end = n - 1, i = 5, digits = 0;
	uint64_t size = 0;

	if (end > 0 && p[end - 1] == '\r')
		end--;
	if (end <= i || p[4] != ' ')
		return false;
	for (; i < end && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
		unsigned d = p[i] - '0';
		if (digits == 20 || size > (UINT64_MAX - d) / 10)
			return false;
		size = size * 10 + d;
	}
	if (digits == 0)
		return false;
	s->chunk_last = i < end;
	if (s->chunk_last && (end - i != 5 || p[i] != ' ' || !same(p + i + 1, "LAST", 4)))
		return false;
	s->chunk_left = size;
	return true;
}

static bool allowed(const struct smtp *s, const struct verb *v)
{
	if (s->need_ehlo)
		return v->allow & PRE_EHLO;
	if (tls_required(s))
		return v->allow & PRE_TLS;
	return true;
}

/* The chunk of a refused BDAT still follows: drop it rather than read
 * its bytes as commands. */
static struct smtp_result refuse_verb(struct smtp *s, size_t n,
    const struct verb *v, const struct text *why)
{
	struct smtp_result r = say(s, n, why);

	if (r.v == SMTP_REPLY && v->kind == K_BDAT && s->chunk_left)
		s->cstate = C_DISCARD;
	return r;
}

static struct smtp_result starttls(struct smtp *s, const uint8_t *p, size_t n,
    size_t vlen)
{
	if (s->listen_mode == SMTP_LISTEN_PLAIN)
		return say(s, n, &t_no_tls);
	if (s->listen_tls || s->listen_mode == SMTP_LISTEN_IMPLICIT)
		return say(s, n, &t_tls_active);
	if (p[vlen] != '\r' && p[vlen] != '\n')
		return say(s, n, &t_tls_syntax);
	if (s->qlen)
		return verdict(SMTP_HOLD, 0);
	s->cstate = C_TLS;
	return answer(SMTP_STARTTLS, n, &t_ready, NULL);
}

static struct smtp_result greet(struct smtp *s, size_t n, uint8_t kind)
{
	struct smtp_result r = forward(s, n, kind, C_CMD);

	if (r.v == SMTP_PASS)
		s->need_ehlo = false;
	return r;
}

static struct smtp_result proceed(struct smtp *s, const uint8_t *p, size_t n,
    const struct verb *v)
{
	switch (v->kind) {
	case K_STARTTLS:
		return starttls(s, p, n, v->len);
	case K_EHLO:
	case K_HELO:
		return greet(s, n, v->kind);
	case K_DATA:
	case K_AUTH:
		return forward(s, n, v->kind, C_WAIT);
	case K_BDAT:
		return forward(s, n, K_BDAT, s->chunk_left ? C_CHUNK : C_CMD);
	default:
		return forward(s, n, v->kind, C_CMD);
	}
}

static struct smtp_result too_long(struct smtp *s)
{
	struct smtp_result r = say(s, SMTP_LINE_MAX, &t_long);

	if (r.v == SMTP_REPLY)
		s->cstate = C_SKIP;
	return r;
}

static struct smtp_result command(struct smtp *s, const uint8_t *p, size_t len)
{
	size_t lim = len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX, n;
	const uint8_t *lf = memchr(p, '\n', lim);
	const struct verb *v;

	if (lf == NULL)
		return len < SMTP_LINE_MAX ? verdict(SMTP_MORE, 0) : too_long(s);
	n = (size_t)(lf - p) + 1;
	if (bad_bytes(p, n, true))
		return say(s, n, &t_badchar);
	v = lookup(p, n);
	/* Where a chunk ends must be known even when BDAT is refused. */
	if (v->kind == K_BDAT && !parse_bdat(s, p, n))
		return die(s, &t_bdat, "malformed BDAT");
	if (!allowed(s, v))
		return refuse_verb(s, n, v, s->need_ehlo ? &t_need_ehlo : &t_need_tls);
	/* An upstream without CHUNKING would read the chunk as commands. */
	if (v->kind == K_BDAT && !s->up_chunking)
		return refuse_verb(s, n, v, &t_no_bdat);
	return proceed(s, p, n, v);
}

/* ---- client side: what is not commands ---- */

static struct smtp_result chunk(struct smtp *s, size_t len,
    enum smtp_verdict v)
{
	size_t n = s->chunk_left < len ? (size_t)s->chunk_left : len;

	s->chunk_left -= n;
	if (s->chunk_left == 0)
		s->cstate = C_CMD;
	return verdict(v, n);
}

static struct smtp_result skip(struct smtp *s, const uint8_t *p, size_t len)
{
	const uint8_t *lf = memchr(p, '\n', len);

	if (lf == NULL)
		return verdict(SMTP_REPLY, len);
	s->cstate = C_CMD;
	return verdict(SMTP_REPLY, (size_t)(lf - p) + 1);
}

/* A SASL response is opaque but still a line: streamed (GSSAPI tokens may
 * pass the command limit), with the same bytes refused as in commands, so
 * the upstream cannot read a command into it the shim did not see. */
static struct smtp_result sasl(struct smtp *s, const uint8_t *p, size_t len)
{
	const uint8_t *lf = memchr(p, '\n', len);
	size_t n = lf ? (size_t)(lf - p) + 1 : len, ok = clean_len(p, n, lf != NULL);

	/* What comes before the fault passes first, as in a body. */
	if (ok < n)
		return ok ? verdict(SMTP_PASS, ok) : die(s, &t_badchar,
		    "invalid character in SASL response");
	if (lf)
		return forward(s, n, K_AUTHC, C_WAIT);
	if (p[n - 1] == '\r')
		n--;
	return pass_or_more(n);
}

/* Outcomes of a '.' at a line start. */
enum { DL_TEXT, DL_MORE, DL_END, DL_BARE_LF, DL_BARE_CR };

/*
 * Only ".CRLF" after a CRLF ends the body. Any other way of spelling a
 * dot line with CR or LF is refused: some server down the path may take it
 * for the end and read what follows as a new transaction (SMTP smuggling).
 * ".<CR>x" and "<CR>.<CR><LF>" are refused too, for the servers that take a
 * bare CR for a line end.
 */
static int dot_line(uint8_t at, const uint8_t *p, size_t len)
{
	if (len < 2)
		return DL_MORE;
	if (p[1] == '\n')
		return DL_BARE_LF;
	if (p[1] != '\r')
		return DL_TEXT;
	if (len < 3)
		return DL_MORE;
	if (p[2] != '\n')
		return DL_BARE_CR;
	if (at == D_SOL)
		return DL_END;
	return at == D_SOL_LF ? DL_BARE_LF : DL_BARE_CR;
}

/* What stands before the '.' at p[i]: the two bytes before it, from the
 * input or, at its start, from the bytes passed before. */
static uint8_t dot_context(const struct smtp *s, const uint8_t *p, size_t i)
{
	uint8_t b1 = i >= 1 ? p[i - 1] : s->hist[1];
	uint8_t b2 = i >= 2 ? p[i - 2] : i == 1 ? s->hist[1] : s->hist[0];

	if (b1 == '\n')
		return b2 == '\r' ? D_SOL : D_SOL_LF;
	return b1 == '\r' ? D_SOL_CR : D_MID;
}

/* Remember the last two bytes that passed, for a dot the next read opens
 * with. */
static struct smtp_result body_pass(struct smtp *s, const uint8_t *p, size_t n)
{
	if (n >= 2) {
		s->hist[0] = p[n - 2];
		s->hist[1] = p[n - 1];
	} else if (n == 1) {
		s->hist[0] = s->hist[1];
		s->hist[1] = p[0];
	}
	return pass_or_more(n);
}

static struct smtp_result body_end(struct smtp *s, size_t n)
{
	/* 354 answered the last queued command: the queue is empty. */
	qpush(s, K_DOT);
	s->cstate = C_CMD;
	return verdict(SMTP_PASS, n);
}

/*
 * Only a '.' that starts a line (or follows a bare CR) can end the body or
 * smuggle an end, so the scan jumps from dot to dot: most bodies (base64
 * above all) have few or none, and their bytes are never looked at one by
 * one. A dot line is held back until its fate is known, so a PASS never
 * carries the dot of a refused end-of-data or anything past the end.
 */
static struct smtp_result body(struct smtp *s, const uint8_t *p, size_t len)
{
	size_t off = 0, i;
	const uint8_t *d;

	while ((d = memchr(p + off, '.', len - off)) != NULL) {
		uint8_t at;
		i = (size_t)(d - p);
		at = dot_context(s, p, i);
		off = i + 1;
		if (at == D_MID)
			continue;
		switch (dot_line(at, d, len - i)) {
		case DL_TEXT:
			break;
		case DL_END:
			return body_end(s, i + 3);
		case DL_BARE_LF:
			return i ? body_pass(s, p, i) : die(s, &t_bare_lf,
			    "bare LF around end-of-data (SMTP smuggling)");
		case DL_BARE_CR:
			return i ? body_pass(s, p, i) : die(s, &t_bare_cr,
			    "bare CR around end-of-data (SMTP smuggling)");
		default:
			return body_pass(s, p, i);
		}
	}
	return body_pass(s, p, len);
}

struct smtp_result smtp_client(struct smtp *s, const uint8_t *p, size_t len)
{
	if (s->cstate == C_DEAD)
		return dead();
	if (s->setup != SETUP_NONE)
		return verdict(SMTP_HOLD, 0);
	if (s->cstate == C_WAIT)
		return verdict(SMTP_HOLD, 0);
	if (len == 0)
		return verdict(SMTP_MORE, 0);
	switch (s->cstate) {
	case C_CMD:
		return command(s, p, len);
	case C_BODY:
		return body(s, p, len);
	case C_CHUNK:
		return chunk(s, len, SMTP_PASS);
	case C_DISCARD:
		return chunk(s, len, SMTP_REPLY);
	case C_SASL:
		return sasl(s, p, len);
	case C_SKIP:
		return skip(s, p, len);
	default:
		return die(s, NULL, "client sent data after STARTTLS (injection)");
	}
}

/* ---- server side: reply lines ---- */

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
	return !bad_bytes(p, n, true);
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

enum { G_MORE, G_DONE, G_BAD, G_LONG };

/* One whole reply at p[0], resumed after the lines already checked
 * (reply_len); on G_DONE reply_len is its length, reply_code its code. */
static int gather(struct smtp *s, const uint8_t *p, size_t len)
{
	for (;;) {
		size_t off = s->reply_len, n = 0;
		int r = off > len ? L_BAD : reply_line(p + off, len - off, &n);

		if (r == L_BAD)
			return G_BAD;
		if (r == L_MORE)
			return len > SMTP_EHLO_MAX ? G_LONG : G_MORE;
		if (s->reply_code && code_of(p + off) != s->reply_code)
			return G_BAD;
		s->reply_code = (uint16_t)code_of(p + off);
		s->reply_len = off + n;
		if (s->reply_len > SMTP_EHLO_MAX)
			return G_LONG;
		if (final_line(p + off))
			return G_DONE;
	}
}

static void reply_reset(struct smtp *s)
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

/* The first word of an EHLO keyword line is w (prefix: starts with w). */
static bool keyword(const uint8_t *t, size_t tlen, const char *w, bool prefix)
{
	size_t wl = strlen(w), len = 0;

	while (len < tlen && t[len] != ' ')
		len++;
	return (prefix ? len >= wl : len == wl) && same(t, w, wl);
}

static size_t next_line(const uint8_t *p, size_t at, size_t n)
{
	const uint8_t *lf = memchr(p + at, '\n', n - at);

	return (size_t)(lf - p) + 1;
}

/* Keyword lines after the first (the first names the server). */
static bool offers(const uint8_t *p, size_t n, const char *word)
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

/* ---- server side: the EHLO rewrite ---- */

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

/* STARTTLS on the listen hop is the shim's, never the upstream's; AUTH is
 * not shown to a client that must not use it in the clear. */
static bool keep(const struct smtp *s, const uint8_t *t, size_t tlen)
{
	if (keyword(t, tlen, "STARTTLS", false))
		return false;
	if (tls_required(s) && (keyword(t, tlen, "AUTH", false) ||
	    keyword(t, tlen, "AUTH=", true)))
		return false;
	return true;
}

/* Rewrites the checked reply p[0..n) into out, CRLF line ends and the
 * continuation marks renumbered; 0 if it does not fit. */
static size_t rewrite(const struct smtp *s, const uint8_t *p, size_t n,
    char *buf)
{
	struct out o = { buf, 0, 0, false };
	const uint8_t starttls[] = "STARTTLS";

	for (size_t at = 0, end; at < n; at = end) {
		size_t tlen;
		const uint8_t *t;
		end = next_line(p, at, n);
		t = line_text(p + at, end - at, &tlen);
		if (at == 0 || keep(s, t, tlen))
			emit(&o, p, t, tlen);
	}
	if (tls_offered(s))
		emit(&o, p, starttls, sizeof(starttls) - 1);
	if (o.full)
		return 0;
	o.p[o.last] = ' ';
	return o.len;
}

static struct smtp_result malformed(struct smtp *s)
{
	return die(s, &t_malformed, why_malformed);
}

/* A positive EHLO reply is taken whole: it goes out rewritten, in one
 * write (some clients read it in one read). */
static struct smtp_result ehlo_reply(struct smtp *s, const uint8_t *p,
    size_t len, char *scratch)
{
	int g = gather(s, p, len);
	struct text t = { scratch, 0 };
	size_t n = s->reply_len;

	if (g == G_MORE)
		return verdict(SMTP_MORE, 0);
	if (g == G_BAD)
		return malformed(s);
	if (g == G_DONE) {
		t.len = rewrite(s, p, n, scratch);
		s->up_chunking = offers(p, n, "CHUNKING");
	}
	if (t.len == 0)
		return die(s, &t_malformed, "EHLO reply too long");
	reply_reset(s);
	s->sstate = S_LINES;
	qpop(s);
	return answer(SMTP_REPLY, n, &t, NULL);
}

/* A reply is complete: the command it answers leaves the queue. True when
 * the client side reads differently from now on. */
static bool reply_done(struct smtp *s)
{
	unsigned code = s->reply_code;

	s->reply_code = 0;
	if (s->qlen == 0)
		return false; /* unsolicited, e.g. a 421 before closing */
	switch (qpop(s)) {
	case K_DATA:
		s->cstate = code == 354 ? C_BODY : C_CMD;
		/* The body starts at a line start. */
		s->hist[0] = '\r';
		s->hist[1] = '\n';
		return true;
	case K_AUTH:
	case K_AUTHC:
		s->cstate = code == 334 ? C_SASL : C_CMD;
		return true;
	default:
		return false;
	}
}

static bool rewrites(const struct smtp *s, const uint8_t *line)
{
	return s->reply_code == 0 && qfront(s) == K_EHLO && line[0] == '2';
}

/* Other replies go on line by line, so their length is not bounded. */
static struct smtp_result replies(struct smtp *s, const uint8_t *p,
    size_t len, char *scratch)
{
	size_t off = 0, n = 0;

	while (off < len) {
		int r = reply_line(p + off, len - off, &n);
		if (r == L_MORE)
			break;
		if (r == L_BAD || (s->reply_code && code_of(p + off) != s->reply_code))
			return off ? verdict(SMTP_PASS, off) : malformed(s);
		if (rewrites(s, p + off)) {
			if (off)
				break;
			s->sstate = S_EHLO;
			return ehlo_reply(s, p, len, scratch);
		}
		s->reply_code = (uint16_t)code_of(p + off);
		off += n;
		if (final_line(p + off - n) && reply_done(s))
			break;
	}
	return pass_or_more(off);
}

struct smtp_result smtp_server(struct smtp *s, const uint8_t *p, size_t len,
    char *scratch)
{
	if (s->sstate == S_DEAD)
		return dead();
	if (s->setup != SETUP_NONE)
		return die(s, NULL, "upstream relay started before its TLS");
	if (len == 0)
		return verdict(SMTP_MORE, 0);
	if (s->sstate == S_EHLO)
		return ehlo_reply(s, p, len, scratch);
	return replies(s, p, len, scratch);
}

/* ---- upstream STARTTLS dialogue ---- */

static struct smtp_result refuse(struct smtp *s, size_t n, const char *why)
{
	s->setup = SETUP_FAILED;
	return answer(SMTP_REFUSE, n, &t_tls_failed, why);
}

static struct smtp_result setup_greeting(struct smtp *s, size_t n,
    unsigned code)
{
	if (code != 220)
		return refuse(s, n, "upstream greeting was not 220");
	s->setup = SETUP_EHLO;
	return verdict(SMTP_SEND_EHLO, n);
}

static struct smtp_result setup_ehlo(struct smtp *s, const uint8_t *p,
    size_t n, unsigned code)
{
	if (code / 100 != 2)
		return refuse(s, n, "upstream refused EHLO");
	s->reply_starttls = offers(p, n, "STARTTLS");
	if (!s->reply_starttls)
		return refuse(s, n, "upstream offered no STARTTLS");
	s->setup = SETUP_STARTTLS;
	return verdict(SMTP_SEND_STARTTLS, n);
}

/* Bytes behind the 220 were sent before TLS and would be read as if
 * they came through it. */
static struct smtp_result setup_starttls(struct smtp *s, size_t n,
    unsigned code, size_t len)
{
	if (code != 220)
		return refuse(s, n, "upstream refused STARTTLS");
	if (len > n)
		return refuse(s, n, "upstream sent data after its STARTTLS 220 (injection)");
	s->setup = SETUP_TLS;
	return verdict(SMTP_START_TLS, n);
}

static struct smtp_result setup_reply(struct smtp *s, const uint8_t *p,
    size_t len)
{
	int g = gather(s, p, len);
	size_t n = s->reply_len;
	unsigned code = s->reply_code;

	if (g == G_MORE)
		return verdict(SMTP_MORE, 0);
	if (g != G_DONE)
		return refuse(s, 0, g == G_BAD ? why_malformed : "upstream reply too long");
	reply_reset(s);
	switch (s->setup) {
	case SETUP_GREETING:
		return setup_greeting(s, n, code);
	case SETUP_EHLO:
		return setup_ehlo(s, p, n, code);
	default:
		return setup_starttls(s, n, code, len);
	}
}

struct smtp_result smtp_setup(struct smtp *s, const uint8_t *p, size_t len)
{
	switch (s->setup) {
	case SETUP_GREETING:
	case SETUP_EHLO:
	case SETUP_STARTTLS:
		return setup_reply(s, p, len);
	case SETUP_TLS:
		return len ? refuse(s, 0, "upstream sent data after its STARTTLS 220 (injection)")
		    : verdict(SMTP_MORE, 0);
	default:
		/* Not a verdict on the upstream: leave the session as it is. */
		return answer(SMTP_REFUSE, 0, &t_tls_failed,
		    "upstream STARTTLS dialogue out of order");
	}
}

/* ---- session ---- */

void smtp_init(struct smtp *s, enum smtp_listen listen_mode,
    bool plain_allowed, bool upstream_setup)
{
	memset(s, 0, sizeof(*s));
	s->listen_mode = (uint8_t)listen_mode;
	s->plain_allowed = plain_allowed;
	s->listen_tls = listen_mode == SMTP_LISTEN_IMPLICIT;
	s->cstate = C_CMD;
	s->sstate = S_LINES;
	s->setup = upstream_setup ? SETUP_GREETING : SETUP_NONE;
	if (!upstream_setup)
		qpush(s, K_GREETING);
}

/* What the client said before TLS is forgotten: only EHLO (or HELO) starts
 * a session again. The queue is empty (STARTTLS waited for it). */
void smtp_listen_tls_up(struct smtp *s)
{
	s->listen_tls = true;
	if (s->listen_mode == SMTP_LISTEN_STARTTLS)
		s->need_ehlo = true;
	if (s->cstate == C_TLS)
		s->cstate = C_CMD;
}

/* The caller delivers the greeting read before TLS: none is queued. */
void smtp_upstream_tls_up(struct smtp *s)
{
	if (s->setup != SETUP_TLS)
		return;
	s->setup = SETUP_NONE;
	s->sstate = S_LINES;
	reply_reset(s);
	s->qhead = 0;
	s->qlen = 0;
}

size_t smtp_pending(const struct smtp *s)
{
	return s->qlen;
}
