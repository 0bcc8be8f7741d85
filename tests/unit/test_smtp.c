/*
 * The SMTP state machine, driven the way conn.c drives it: a scripted
 * client stream and a scripted upstream stream, fed in reads of every size
 * (all at once, byte by byte, random cuts with a fixed seed). Each scenario
 * must give the same bytes to the upstream and to the client whatever the
 * cuts, which also shows that no state is lost between calls.
 */
#include "smtp.h"
#include "unit.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct buf {
	char *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			abort();
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static void put_rep(struct buf *b, char c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		put(b, &c, 1);
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- the driver ---- */

/* What the caller sends for SMTP_UP_EHLO, and the client it names in
 * XCLIENT. */
#define XC_EHLO "EHLO shim.example\r\n"
#define XC_ADDR "192.0.2.7"
#define XC_PORT 4242

/* One exchange: what the client sends, then what the upstream answers.
 * The client sends step i+1 only once step i is entirely read and
 * answered, as a client waits for the 220 to STARTTLS. */
struct step {
	const char *c;
	size_t clen;
	const char *s;
	size_t slen;
};

#define LIT(x) x, sizeof(x) - 1
#define STEP(c, s) { LIT(c), LIT(s) }
#define MAXSTEPS 8

enum { ALL, BYTES, RANDOM, NMODES };
static const char *const mode_name[] = { "all", "bytes", "random" };

struct feed {
	struct buf in;
	size_t have, used, limit; /* delivered, consumed, released */
	size_t lim[MAXSTEPS];
	bool blocked;
};

struct run {
	struct buf up, down;
	char end[160];
	size_t pending;
	int bad; /* broken verdict invariants */
	int mode;
	size_t cut; /* ALL mode: the client stream is also cut here */
	uint32_t rng;
};

static size_t chunk(struct run *r, const struct feed *f, bool client)
{
	size_t left = f->limit - f->have, n = left;

	if (r->mode == BYTES)
		return 1;
	if (r->mode == RANDOM) {
		r->rng = r->rng * 1103515245u + 12345u;
		n = 1 + (r->rng >> 16) % 23;
	} else if (client && r->cut > f->have && r->cut < f->limit) {
		n = r->cut - f->have;
	}
	return n < left ? n : left;
}

static void check_result(struct run *r, struct smtp_result v, size_t avail)
{
	if (v.n > avail)
		r->bad++;
	if ((v.v == SMTP_MORE || v.v == SMTP_HOLD) && v.n != 0)
		r->bad++;
	if (v.reply == NULL && v.reply_len != 0)
		r->bad++;
	if (v.v == SMTP_REPLY && v.n == 0 && v.reply_len == 0)
		r->bad++;
}

/* false: the session ended */
static bool client_turn(struct smtp *s, struct run *r, struct feed *c,
    bool *hold)
{
	size_t avail = c->have - c->used;
	struct smtp_result v = smtp_client(s, (uint8_t *)c->in.p + c->used, avail);

	check_result(r, v, avail);
	switch (v.v) {
	case SMTP_MORE:
		c->blocked = true;
		return true;
	case SMTP_HOLD:
		*hold = true;
		return true;
	case SMTP_PASS:
		put(&r->up, c->in.p + c->used, v.n);
		c->used += v.n;
		return true;
	case SMTP_REPLY:
		put(&r->down, v.reply, v.reply_len);
		c->used += v.n;
		return true;
	case SMTP_STARTTLS:
		put(&r->down, v.reply, v.reply_len);
		c->used += v.n;
		if (c->used < c->limit) {
			snprintf(r->end, sizeof(r->end), "injection");
			return false;
		}
		smtp_listen_tls_up(s);
		return true;
	case SMTP_CLOSE:
		put(&r->down, v.reply, v.reply_len);
		snprintf(r->end, sizeof(r->end), "close:%s", v.reason);
		return false;
	case SMTP_UP_EHLO:
		if (v.n != 0)
			r->bad++;
		puts_(&r->up, XC_EHLO);
		return true;
	case SMTP_UP_XCLIENT: {
		char line[SMTP_XCLIENT_MAX];
		size_t n = smtp_xclient_line(s, (uint8_t *)c->in.p + c->used, avail,
		    XC_ADDR, false, XC_PORT, line);
		if (v.n != 0 || n == 0)
			r->bad++;
		put(&r->up, line, n);
		return true;
	}
	default:
		snprintf(r->end, sizeof(r->end), "client verdict %d", (int)v.v);
		return false;
	}
}

/* Replies pass whole: what a PASS covers ends with the last line of a
 * reply ("ddd " or "ddd\r\n"), never inside a multi-line one. */
static bool whole_replies(const char *p, size_t n)
{
	size_t last = n - 1;

	if (n < 4 || p[n - 1] != '\n')
		return false;
	while (last > 0 && p[last - 1] != '\n')
		last--;
	return n - last >= 4 && p[last + 3] != '-';
}

static bool server_turn(struct smtp *s, struct run *r, struct feed *u,
    bool *hold)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	size_t avail = u->have - u->used;
	struct smtp_result v = smtp_server(s, (uint8_t *)u->in.p + u->used,
	    avail, scratch);

	check_result(r, v, avail);
	switch (v.v) {
	case SMTP_MORE:
		u->blocked = true;
		return true;
	case SMTP_PASS:
		if (!whole_replies(u->in.p + u->used, v.n))
			r->bad++;
		put(&r->down, u->in.p + u->used, v.n);
		u->used += v.n;
		*hold = false;
		return true;
	case SMTP_REPLY:
		put(&r->down, v.reply, v.reply_len);
		u->used += v.n;
		*hold = false;
		return true;
	case SMTP_CLOSE:
		put(&r->down, v.reply, v.reply_len);
		snprintf(r->end, sizeof(r->end), "close:%s", v.reason);
		return false;
	case SMTP_REFUSE:
		put(&r->down, v.reply, v.reply_len);
		snprintf(r->end, sizeof(r->end), "refuse:%s", v.reason);
		return false;
	default:
		snprintf(r->end, sizeof(r->end), "server verdict %d", (int)v.v);
		return false;
	}
}

/* Where the upstream's k-th reply from `from` ends: a scripted upstream
 * answers only what it was sent. Bytes that do not parse count as one. */
static size_t replies_end(const struct buf *b, size_t from, size_t limit,
    size_t k)
{
	size_t at = from;

	while (k > 0 && at < limit) {
		const char *lf = memchr(b->p + at, '\n', limit - at);
		size_t end = lf ? (size_t)(lf - b->p) + 1 : limit;
		if (end - at < 4 || b->p[at + 3] != '-')
			k--;
		at = end;
	}
	return at;
}

static void deliver(struct run *r, struct feed *u, size_t limit)
{
	size_t all = u->limit;

	u->limit = limit;
	u->have += chunk(r, u, false);
	u->limit = all;
	u->blocked = false;
}

/* The client goes first whenever it can, and the upstream answers only
 * the commands forwarded, so a reply never reaches the state machine
 * before the command it answers. Bytes the upstream sends unasked come
 * last, when nothing else can move. A client that waits sends nothing. */
static void drive(struct smtp *s, const struct step *st, struct run *r)
{
	struct feed c = { 0 }, u = { 0 };
	size_t nsteps = 0, next = 0;
	bool hold = false, go = true;
	size_t owed;

	for (; st[nsteps].c != NULL; nsteps++) {
		put(&c.in, st[nsteps].c, st[nsteps].clen);
		put(&u.in, st[nsteps].s, st[nsteps].slen);
		c.lim[nsteps] = c.in.len;
		u.lim[nsteps] = u.in.len;
	}
	c.blocked = u.blocked = true;
	while (go) {
		if (!c.blocked && !hold)
			go = client_turn(s, r, &c, &hold);
		else if (!u.blocked)
			go = server_turn(s, r, &u, &hold);
		else if (c.have < c.limit && !hold)
			c.have += chunk(r, &c, true), c.blocked = false;
		else if (u.have < (owed = replies_end(&u.in, u.used, u.limit, smtp_pending(s))))
			deliver(r, &u, owed);
		else if (u.have < u.limit)
			deliver(r, &u, u.limit);
		else if (next < nsteps)
			c.limit = c.lim[next], u.limit = u.lim[next], next++;
		else
			break;
	}
	r->pending = smtp_pending(s);
	buf_free(&c.in);
	buf_free(&u.in);
}

static void show(const char *what, const struct buf *b)
{
	fprintf(stderr, "  %s: \"", what);
	for (size_t i = 0; i < b->len; i++) {
		unsigned char ch = (unsigned char)b->p[i];
		if (ch == '\r')
			fputs("\\r", stderr);
		else if (ch == '\n')
			fputs("\\n", stderr);
		else if (ch < 32 || ch > 126)
			fprintf(stderr, "\\x%02x", ch);
		else
			fputc(ch, stderr);
	}
	fputs("\"\n", stderr);
}

static bool same_buf(const struct buf *b, const char *want)
{
	return b->len == strlen(want) && (b->len == 0 || memcmp(b->p, want, b->len) == 0);
}

struct want {
	const char *up, *down, *end;
	size_t pending;
};

static void expect_run(const char *name, struct run *r, const struct want *w)
{
	bool up = same_buf(&r->up, w->up), down = same_buf(&r->down, w->down);

	CHECK(up);
	CHECK(down);
	CHECK_STR(r->end, w->end);
	CHECK_EQ(r->pending, w->pending);
	CHECK_EQ(r->bad, 0);
	if (!up || !down || strcmp(r->end, w->end) != 0 || r->pending != w->pending) {
		fprintf(stderr, "  in %s (%s, cut %zu), end \"%s\"\n", name,
		    mode_name[r->mode], r->cut, r->end);
		show("up", &r->up);
		show("down", &r->down);
	}
	buf_free(&r->up);
	buf_free(&r->down);
}

static void scenario_from(const char *name, const struct smtp *init,
    const struct step *st, const struct want *w)
{
	for (int mode = 0; mode < NMODES; mode++) {
		struct smtp s = *init;
		struct run r = { .mode = mode, .rng = 20240601u };
		drive(&s, st, &r);
		expect_run(name, &r, w);
	}
}

static struct smtp session(enum smtp_listen m, bool plain_allowed)
{
	struct smtp s;

	smtp_init(&s, m, plain_allowed, false);
	return s;
}

static void scenario(const char *name, enum smtp_listen m, bool plain_allowed,
    const struct step *st, const struct want *w)
{
	struct smtp s = session(m, plain_allowed);

	scenario_from(name, &s, st, w);
}

/* ---- common bytes ---- */

#define G "220 mx.example ESMTP\r\n"
#define EHLO_UP "250-mx.example\r\n250-PIPELINING\r\n250-starttls\r\n" \
	"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250-SIZE 1000\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
/* EHLO_UP as a client sees it: */
#define EHLO_TLS_REQUIRED "250-mx.example\r\n250-PIPELINING\r\n" \
	"250-SIZE 1000\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
#define EHLO_TLS_OFFERED "250-mx.example\r\n250-PIPELINING\r\n" \
	"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250-SIZE 1000\r\n" \
	"250-CHUNKING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
#define EHLO_NO_TLS "250-mx.example\r\n250-PIPELINING\r\n" \
	"250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN\r\n250-SIZE 1000\r\n250-CHUNKING\r\n250 8BITMIME\r\n"

#define READY "220 2.0.0 Ready to start TLS\r\n"
#define R530 "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define R503 "503 5.5.1 Send EHLO first\r\n"
#define R421 "421 4.4.0 upstream sent a malformed reply\r\n"
#define R500 "500 5.5.2 invalid character in command\r\n"
#define R500_LEAD "500 5.5.2 white space before the command\r\n"
#define R501_BDAT "501 5.5.4 Syntax: BDAT size [LAST]\r\n"
#define R550_ID "550 5.7.0 Client identity is set by the relay, not by commands\r\n"
#define R552 "552 5.3.4 BDAT chunk larger than the message size limit\r\n"
#define MALFORMED "close:malformed reply from upstream"

/* ---- EHLO rewrite ---- */

static void test_ehlo_modes(void)
{
	static const struct step st[] = { STEP("EHLO c\r\n", G EHLO_UP), { 0 } };
	struct want w = { "EHLO c\r\n", G EHLO_TLS_REQUIRED, "", 0 };

	scenario("ehlo starttls required", SMTP_LISTEN_STARTTLS, false, st, &w);
	w.down = G EHLO_TLS_OFFERED;
	scenario("ehlo starttls offered", SMTP_LISTEN_STARTTLS, true, st, &w);
	w.down = G EHLO_NO_TLS;
	scenario("ehlo plain", SMTP_LISTEN_PLAIN, false, st, &w);
	scenario("ehlo plain allowed", SMTP_LISTEN_PLAIN, true, st, &w);
	scenario("ehlo implicit", SMTP_LISTEN_IMPLICIT, false, st, &w);
}

static void test_ehlo_shapes(void)
{
	static const struct step one[] = { STEP("EHLO c\r\n", G "250 mx\r\n"), { 0 } };
	static const struct step odd[] = { STEP("ehlo c\r\n", G
	    "250-mx\n250-STARTTLSX\n250-AUTHX\n250-auth=login\n250-Auth\n250 STARTTLS\n"), { 0 } };
	static const struct step last[] = { STEP("EHLO c\r\n", G
	    "250-mx\r\n250-SIZE\r\n250 STARTTLS\r\n"), { 0 } };
	static const struct step name[] = { STEP("EHLO c\r\n", G
	    "250-AUTH\r\n250 8BITMIME\r\n"), { 0 } };
	static const struct step bare[] = { STEP("EHLO c\r\n", G "250\r\n"), { 0 } };
	static const struct step helo[] = { STEP("HELO c\r\nMAIL FROM:<a>\r\n",
	    G "250 mx\r\n"), { 0 } };
	static const struct step refused[] = { STEP("EHLO c\r\nHELO c\r\n", G
	    "550-no\r\n550 STARTTLS\r\n250-mx\r\n250 STARTTLS\r\n"), { 0 } };
	struct want w = { "EHLO c\r\n", G "250-mx\r\n250 STARTTLS\r\n", "", 0 };

	scenario("single-line ehlo, starttls", SMTP_LISTEN_STARTTLS, false, one, &w);
	w.down = G "250 mx\r\n";
	scenario("single-line ehlo, plain", SMTP_LISTEN_PLAIN, false, one, &w);
	w.up = "ehlo c\r\n";
	w.down = G "250-mx\r\n250-STARTTLSX\r\n250-AUTHX\r\n250 STARTTLS\r\n";
	scenario("ehlo keywords, bare LF", SMTP_LISTEN_STARTTLS, false, odd, &w);
	w.up = "EHLO c\r\n";
	w.down = G "250-mx\r\n250 SIZE\r\n";
	scenario("ehlo last line dropped", SMTP_LISTEN_PLAIN, false, last, &w);
	w.down = G "250-AUTH\r\n250-8BITMIME\r\n250 STARTTLS\r\n";
	scenario("ehlo first line is a name", SMTP_LISTEN_STARTTLS, false, name, &w);
	w.down = G "250-\r\n250 STARTTLS\r\n";
	scenario("ehlo without a name", SMTP_LISTEN_STARTTLS, true, bare, &w);
	w.up = "HELO c\r\n";
	w.down = G "250 mx\r\n" R530;
	scenario("helo unchanged", SMTP_LISTEN_STARTTLS, false, helo, &w);
	w.up = "EHLO c\r\nHELO c\r\n";
	w.down = G "550-no\r\n550 STARTTLS\r\n250-mx\r\n250 STARTTLS\r\n";
	scenario("negative ehlo unchanged", SMTP_LISTEN_PLAIN, false, refused, &w);
}

/* ---- STARTTLS on the listen hop ---- */

static void test_starttls_flow(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\nSTARTTLS\r\n", G EHLO_UP),
		STEP("MAIL FROM:<a>\r\nSTARTTLS\r\nBDAT 4\r\nQUITNOOP\r\n", "250 ok\r\n"),
		STEP("EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a>\r\n", EHLO_UP "250 ok\r\n"),
		{ 0 } };
	static const struct step inject[] = {
		STEP("EHLO c\r\n", G EHLO_UP),
		STEP("STARTTLS\r\nMAIL FROM:<evil>\r\n", ""), { 0 } };
	static const struct step args[] = {
		STEP("STARTTLS now\r\nSTARTTLS\tnow\r\nQUIT\r\n", G "221 bye\r\n"), { 0 } };
	static const struct step plain[] = {
		STEP("STARTTLS\r\nNOOP\r\n", G "250 ok\r\n"), { 0 } };
	struct want w = { "EHLO c\r\nNOOP\r\nEHLO c\r\nMAIL FROM:<a>\r\n",
		G EHLO_TLS_REQUIRED READY R503 R503 R503 "250 ok\r\n" EHLO_NO_TLS
		"554 5.5.1 TLS already active\r\n250 ok\r\n", "", 0 };

	scenario("starttls, then EHLO first", SMTP_LISTEN_STARTTLS, false, st, &w);
	w.up = "EHLO c\r\n";
	w.down = G EHLO_TLS_REQUIRED READY;
	w.end = "injection";
	scenario("starttls injection", SMTP_LISTEN_STARTTLS, false, inject, &w);
	w.up = "QUIT\r\n";
	w.down = G "501 5.5.4 Syntax: STARTTLS\r\n501 5.5.4 Syntax: STARTTLS\r\n221 bye\r\n";
	w.end = "";
	scenario("starttls with arguments", SMTP_LISTEN_STARTTLS, false, args, &w);
	w.up = "NOOP\r\n";
	w.down = G "502 5.5.1 STARTTLS not available\r\n250 ok\r\n";
	scenario("starttls in plain mode", SMTP_LISTEN_PLAIN, true, plain, &w);
	w.down = G "554 5.5.1 TLS already active\r\n250 ok\r\n";
	scenario("starttls on implicit TLS", SMTP_LISTEN_IMPLICIT, false, plain, &w);
}

/* After STARTTLS, only a greeting the upstream took opens the session
 * again: one it refused (Postfix answers 501 before it resets anything)
 * leaves what came before TLS behind, so commands still wait for EHLO. */
static void test_starttls_refused_ehlo(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\nMAIL FROM:<a>\r\nSTARTTLS\r\n", G EHLO_UP "250 ok\r\n"),
		STEP("EHLO\r\nRCPT TO:<b>\r\nHELO\r\nRCPT TO:<b>\r\nEHLO c\r\nRCPT TO:<b>\r\n",
		    "501 Syntax: EHLO hostname\r\n501 Syntax: HELO hostname\r\n" EHLO_UP
		    "503 need MAIL\r\n"),
		{ 0 } };
	struct want w = { "EHLO c\r\nMAIL FROM:<a>\r\nEHLO\r\nHELO\r\nEHLO c\r\nRCPT TO:<b>\r\n",
		G EHLO_TLS_OFFERED "250 ok\r\n" READY "501 Syntax: EHLO hostname\r\n" R503
		"501 Syntax: HELO hostname\r\n" R503 EHLO_NO_TLS "503 need MAIL\r\n", "", 0 };

	scenario("starttls, a refused EHLO", SMTP_LISTEN_STARTTLS, true, st, &w);
}

/* The calls themselves: n covers the STARTTLS line alone, and what the
 * caller still offers before the handshake is refused. */
static void test_starttls_direct(void)
{
	static const char in[] = "STARTTLS\r\nMAIL FROM:<evil>\r\n";
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s = session(SMTP_LISTEN_STARTTLS, false);
	struct smtp_result r;

	r = smtp_client(&s, (const uint8_t *)in, sizeof(in) - 1);
	CHECK_EQ(r.v, SMTP_HOLD); /* the greeting is still owed */
	r = smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	CHECK_EQ(r.v, SMTP_PASS);
	CHECK_EQ(smtp_pending(&s), 0);
	r = smtp_client(&s, (const uint8_t *)in, sizeof(in) - 1);
	CHECK_EQ(r.v, SMTP_STARTTLS);
	CHECK_EQ(r.n, 10);
	CHECK(r.reply_len == sizeof(READY) - 1 && memcmp(r.reply, READY, r.reply_len) == 0);
	r = smtp_client(&s, (const uint8_t *)in + 10, sizeof(in) - 11);
	CHECK_EQ(r.v, SMTP_CLOSE);
	CHECK_STR(r.reason, "client sent data after STARTTLS (injection)");
	r = smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6);
	CHECK_EQ(r.v, SMTP_CLOSE);
}

/* ---- policy before TLS ---- */

static void test_tls_required(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\n", G EHLO_UP),
		STEP("MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\nAUTH PLAIN AGEAYg==\r\n"
		    "BDAT 6\r\nQUIT\r\nNOOP\r\nRSET\r\nhelp\r\n\r\nQUIT\r\n",
		    "250 ok\r\n250 ok\r\n221 bye\r\n"),
		{ 0 } };
	static const struct step ok[] = {
		STEP("EHLO c\r\n", G EHLO_UP),
		STEP("MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n",
		    "250 ok\r\n250 ok\r\n554 no\r\n"),
		STEP("AUTH PLAIN AGEAYg==\r\nBDAT 6\r\nQUIT\r\n",
		    "535 no\r\n250 6 octets\r\n"),
		{ 0 } };
	struct want w = { "EHLO c\r\nNOOP\r\nRSET\r\nQUIT\r\n",
		G EHLO_TLS_REQUIRED R530 R530 R530 R530 R530 "250 ok\r\n250 ok\r\n"
		R530 R530 "221 bye\r\n", "", 0 };

	scenario("530 before TLS", SMTP_LISTEN_STARTTLS, false, st, &w);
	w.up = "EHLO c\r\nMAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n"
	    "AUTH PLAIN AGEAYg==\r\nBDAT 6\r\nQUIT\r\n";
	w.down = G EHLO_TLS_OFFERED "250 ok\r\n250 ok\r\n554 no\r\n535 no\r\n250 6 octets\r\n";
	scenario("plain allowed", SMTP_LISTEN_STARTTLS, true, ok, &w);
}

/* ---- DATA ---- */

#define BODY "STARTTLS\r\nEHLO x\r\nQUIT\r\n..\r\n.x\r\na\nb\r\nx\ry\r\n" \
	"BDAT 5\r\n\r\n"
#define TRANSACTION_LINES "MAIL FROM:<a>\r\nRCPT TO:<b>\r\n"
#define TRANSACTION TRANSACTION_LINES "DATA\r\n"
#define TRANSACTION_UP "250 ok\r\n250 ok\r\n354 go\r\n"

static void test_data(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP(TRANSACTION BODY ".\r\nQUIT\r\n",
		    TRANSACTION_UP "250 queued\r\n221 bye\r\n"),
		{ 0 } };
	static const struct step empty[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP(TRANSACTION ".\r\nNOOP\r\n", TRANSACTION_UP "250 queued\r\n250 ok\r\n"),
		{ 0 } };
	static const struct step refused[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP("MAIL FROM:<a>\r\nDATA\r\nSTARTTLS\r\nNOOP\r\n",
		    "250 ok\r\n554 no valid recipients\r\n250 ok\r\n"),
		{ 0 } };
	struct want w = { "EHLO c\r\n" TRANSACTION BODY ".\r\nQUIT\r\n",
		G "250 mx\r\n" TRANSACTION_UP "250 queued\r\n221 bye\r\n", "", 0 };

	scenario("data body verbatim", SMTP_LISTEN_PLAIN, false, st, &w);
	w.up = "EHLO c\r\n" TRANSACTION ".\r\nNOOP\r\n";
	w.down = G "250 mx\r\n" TRANSACTION_UP "250 queued\r\n250 ok\r\n";
	scenario("empty body", SMTP_LISTEN_PLAIN, false, empty, &w);
	w.up = "EHLO c\r\nMAIL FROM:<a>\r\nDATA\r\nNOOP\r\n";
	w.down = G "250 mx\r\n250 ok\r\n554 no valid recipients\r\n"
	    "502 5.5.1 STARTTLS not available\r\n250 ok\r\n";
	scenario("data refused", SMTP_LISTEN_PLAIN, false, refused, &w);
}

/* Every cut of the client stream, so the end of data is split everywhere. */
static void test_data_cuts(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\n" TRANSACTION "x\r\n..\r\n\r\n.\r\nQUIT\r\n",
		    G "250 mx\r\n" TRANSACTION_UP "250 queued\r\n221 bye\r\n"),
		{ 0 } };
	struct want w = { st[0].c, G "250 mx\r\n" TRANSACTION_UP "250 queued\r\n221 bye\r\n", "", 0 };

	for (size_t cut = 1; cut < st[0].clen; cut++) {
		struct smtp s = session(SMTP_LISTEN_PLAIN, false);
		struct run r = { .mode = ALL, .cut = cut };
		drive(&s, st, &r);
		expect_run("data cut", &r, &w);
	}
}

struct smuggle {
	const char *body, *passed, *why;
};

static void test_smuggling(void)
{
	static const struct smuggle v[] = {
		{ "a\r\n.\nMAIL FROM:<x>\r\n", "a\r\n", "LF" },
		{ "a\n.\r\nMAIL FROM:<x>\r\n", "a\n", "LF" },
		{ "a\n.\nMAIL FROM:<x>\r\n", "a\n", "LF" },
		{ ".\nMAIL FROM:<x>\r\n", "", "LF" },
		{ "\r\n.\n", "\r\n", "LF" },
		{ "x\r\n..\r\n\n.\r\n", "x\r\n..\r\n\n", "LF" },
		{ "a\r.\r\nMAIL FROM:<x>\r\n", "a\r", "CR" },
		{ "a\r\n.\rMAIL FROM:<x>\r\n", "a\r\n", "CR" },
		{ "a\r\n.\r\r\n", "a\r\n", "CR" },
		{ "a\r\r.\r\n", "a\r\r", "CR" },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct buf c = { 0 }, up = { 0 }, down = { 0 };
		char end[96];
		puts_(&c, TRANSACTION);
		puts_(&c, v[i].body);
		puts_(&up, "EHLO c\r\n" TRANSACTION);
		puts_(&up, v[i].passed);
		puts_(&down, G "250 mx\r\n" TRANSACTION_UP);
		puts_(&down, v[i].why[0] == 'L' ?
		    "554 5.5.2 bare LF around end-of-data refused\r\n" :
		    "554 5.5.2 bare CR around end-of-data refused\r\n");
		snprintf(end, sizeof(end), "close:bare %s around end-of-data (SMTP smuggling)", v[i].why);
		struct step st[] = { STEP("EHLO c\r\n", G "250 mx\r\n"),
			{ c.p, c.len, LIT(TRANSACTION_UP) },
			{ 0 } };
		struct want w = { up.p, down.p, end, 0 };
		scenario(v[i].body, SMTP_LISTEN_PLAIN, true, st, &w);
		buf_free(&c);
		buf_free(&up);
		buf_free(&down);
	}
}

static void test_benign_bare_lf(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP(TRANSACTION "a\nb\n\n.x\n..\n\r\n.\r\nQUIT\n",
		    TRANSACTION_UP "250 queued\r\n221 bye\r\n"),
		{ 0 } };
	struct want w = { "EHLO c\r\n" TRANSACTION "a\nb\n\n.x\n..\n\r\n.\r\nQUIT\n",
		G "250 mx\r\n" TRANSACTION_UP "250 queued\r\n221 bye\r\n", "", 0 };

	scenario("benign bare LF", SMTP_LISTEN_PLAIN, true, st, &w);
}

/* ---- BDAT ---- */

static void test_bdat(void)
{
	static const struct step st[] = {
		STEP("EHLO c\r\n", G "250-mx\r\n250 CHUNKING\r\n"),
		STEP("MAIL FROM:<a>\r\nRCPT TO:<b>\r\nBDAT 12\r\n\r\n.\r\nQUIT\r\nx"
		    "BDAT 3 last\r\nabcBDAT 0 LAST\r\nQUIT\r\n",
		    "250 ok\r\n250 ok\r\n250 12 octets\r\n250 3 octets\r\n250 queued\r\n221 bye\r\n"),
		{ 0 } };
	static const struct step huge[] = {
		STEP("EHLO c\r\n", G "250-mx\r\n250 CHUNKING\r\n"),
		STEP("BDAT 18446744073709551615\r\nQUIT\r\n", ""), { 0 } };
	static const struct step nochunking[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP("BDAT 13 LAST\r\nMAIL FROM:<x>NOOP\r\n", "250 ok\r\n"), { 0 } };
	struct want w = { NULL, G "250-mx\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n250 12 octets\r\n"
		"250 3 octets\r\n250 queued\r\n221 bye\r\n", "", 0 };

	w.up = "EHLO c\r\nMAIL FROM:<a>\r\nRCPT TO:<b>\r\nBDAT 12\r\n\r\n.\r\nQUIT\r\nx"
	    "BDAT 3 last\r\nabcBDAT 0 LAST\r\nQUIT\r\n";
	scenario("bdat chunks", SMTP_LISTEN_PLAIN, false, st, &w);
	/* Past any message size: refused, and where the chunk ends is moot. */
	w.up = "EHLO c\r\n";
	w.down = G "250-mx\r\n250 CHUNKING\r\n" R552;
	w.end = "close:BDAT chunk over the message size limit";
	scenario("bdat largest size", SMTP_LISTEN_PLAIN, false, huge, &w);
	w.end = "";
	/* No CHUNKING upstream: answered here, the chunk never read as commands. */
	w.up = "EHLO c\r\nNOOP\r\n";
	w.down = G "250 mx\r\n502 5.5.1 BDAT not supported by the mail server\r\n250 ok\r\n";
	scenario("bdat without chunking", SMTP_LISTEN_PLAIN, false, nochunking, &w);
}

/* The one plain BDAT spelling, as the listen side and the relay read it. */
static void test_bdat_parse(void)
{
	static const char *const bad[] = { "BDAT 18446744073709551616", "BDAT 025",
		"BDAT  25", "BDAT\t25", "BDAT 25 LASTX", "BDAT 25 ", "BDAT", "BDAT x",
		"BDATS 25" };
	uint64_t n = 1;
	bool last = false;

#define BP(s) smtp_bdat_parse((const uint8_t *)(s), strlen(s), &n, &last)
	CHECK(BP("BDAT 25 LAST"));
	CHECK_EQ(n, 25);
	CHECK(last);
	CHECK(BP("bdat 0"));
	CHECK_EQ(n, 0);
	CHECK(!last);
	CHECK(BP("BDAT 18446744073709551615 last"));
	CHECK(n == UINT64_MAX && last);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = 7;
		CHECK(!BP(bad[i]));
		CHECK_EQ(n, 7);
	}
#undef BP
}

static void test_bdat_malformed(void)
{
	static const char *const bad[] = {
		"BDAT\r\n", "BDAT \r\n", "BDAT x\r\n", "BDAT  5\r\n", "BDAT 5 \r\n",
		"BDAT 5 LASTX\r\n", "BDAT 5 LAST x\r\n", "BDAT -1\r\n", "BDAT 5x\r\n",
		"BDAT 18446744073709551616\r\n", "BDAT 000000000000000000001\r\n",
		"bdat 5\tLAST\r\n",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct step st[] = { STEP("EHLO c\r\n", G "250 mx\r\n"),
			{ bad[i], strlen(bad[i]), "", 0 }, { 0 } };
		struct want w = { "EHLO c\r\n", G "250 mx\r\n501 5.5.4 Syntax: BDAT size [LAST]\r\n",
			"close:malformed BDAT", 0 };
		scenario(bad[i], SMTP_LISTEN_PLAIN, false, st, &w);
	}
}

/* ---- AUTH ---- */

static void test_auth(void)
{
	static const struct step login[] = {
		STEP("EHLO c\r\n", G "250 mx\r\n"),
		STEP("AUTH LOGIN\r\nSTARTTLS\r\ncGFzcw==\r\nNOOP\r\n",
		    "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n250 ok\r\n"),
		{ 0 } };
	static const struct step initial[] = {
		STEP("AUTH PLAIN AGEAYg==\r\nSTARTTLS\r\n", G "235 ok\r\n"), { 0 } };
	static const struct step failed[] = {
		STEP("AUTH PLAIN AGEAYg==\r\nSTARTTLS\r\n", G "535 no\r\n"), { 0 } };
	static const struct step cancel[] = {
		STEP("AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nx\r\ny\r\nNOOP\r\n",
		    G "334 a\r\n501 cancelled\r\n334 a\r\n334 b\r\n535 no\r\n250 ok\r\n"),
		{ 0 } };
	static const struct step badcr[] = {
		STEP("AUTH LOGIN\r\nab\rNOOP\r\n", G "334 a\r\n"), { 0 } };
	struct want w = { "EHLO c\r\nAUTH LOGIN\r\nSTARTTLS\r\ncGFzcw==\r\nNOOP\r\n",
		G "250-mx\r\n250 STARTTLS\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
		"235 ok\r\n250 ok\r\n", "", 0 };

	scenario("auth login", SMTP_LISTEN_STARTTLS, true, login, &w);
	/* The upstream never sees the shim's STARTTLS, so a login made
	 * before it would outlive it: refused, and the session closed. */
	w.up = "AUTH PLAIN AGEAYg==\r\n";
	w.down = G "235 ok\r\n554 5.5.1 STARTTLS must come before AUTH\r\n";
	w.end = "close:client sent STARTTLS after AUTH";
	scenario("auth initial response, then starttls", SMTP_LISTEN_STARTTLS, true, initial,
	    &w);
	w.down = G "535 no\r\n" READY;
	w.end = "";
	scenario("auth failed, then starttls", SMTP_LISTEN_STARTTLS, true, failed, &w);
	w.up = "AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nx\r\ny\r\nNOOP\r\n";
	w.down = G "334 a\r\n501 cancelled\r\n334 a\r\n334 b\r\n535 no\r\n250 ok\r\n";
	scenario("auth cancelled, failed", SMTP_LISTEN_IMPLICIT, false, cancel, &w);
	w.up = "AUTH LOGIN\r\nab";
	w.down = G "334 a\r\n500 5.5.2 invalid character in command\r\n";
	w.end = "close:invalid character in SASL response";
	scenario("sasl bare CR", SMTP_LISTEN_PLAIN, false, badcr, &w);
}

/* A SASL token longer than a command line goes through. */
static void test_auth_long(void)
{
	struct buf c = { 0 }, up = { 0 };

	puts_(&c, "AUTH GSSAPI\r\n");
	put_rep(&c, 'Q', 9000);
	puts_(&c, "\r\nNOOP\r\n");
	put(&up, c.p, c.len);
	struct step st[] = { { c.p, c.len, LIT(G "334 \r\n235 ok\r\n250 ok\r\n") }, { 0 } };
	struct want w = { up.p, G "334 \r\n235 ok\r\n250 ok\r\n", "", 0 };
	scenario("long sasl line", SMTP_LISTEN_PLAIN, false, st, &w);
	buf_free(&c);
	buf_free(&up);
}

/* ---- command lines ---- */

static void test_long_lines(void)
{
	struct buf c = { 0 };
	size_t at;

	puts_(&c, "NOOP\r\nNOOP ");
	put_rep(&c, 'x', 5000);
	puts_(&c, "\r\nNOOP ");
	at = c.len;
	put_rep(&c, 'y', SMTP_LINE_MAX - 7); /* exactly the limit, CRLF included */
	puts_(&c, "\r\nNOOP ");
	put_rep(&c, 'z', SMTP_LINE_MAX - 6); /* one byte over */
	puts_(&c, "\r\nQUIT\r\n");

	struct buf up = { 0 };
	puts_(&up, "NOOP\r\nNOOP ");
	put(&up, c.p + at, SMTP_LINE_MAX - 5);
	puts_(&up, "QUIT\r\n");

	struct step st[] = { { c.p, c.len, LIT(G "250 a\r\n250 b\r\n221 c\r\n") }, { 0 } };
	struct want w = { up.p, G "250 a\r\n500 5.5.2 line too long\r\n250 b\r\n"
		"500 5.5.2 line too long\r\n221 c\r\n", "", 0 };
	scenario("line too long", SMTP_LISTEN_PLAIN, false, st, &w);
	buf_free(&c);
	buf_free(&up);
}

static void test_bad_chars(void)
{
	static const struct step st[] = {
		STEP("NO\0OP\r\nNOOP\rRSET\r\nNOOP\r\r\n\rQUIT\r\nRSET\n",
		    G "250 ok\r\n"), { 0 } };
	struct want w = { "RSET\n", G "500 5.5.2 invalid character in command\r\n"
		"500 5.5.2 invalid character in command\r\n"
		"500 5.5.2 invalid character in command\r\n"
		"500 5.5.2 invalid character in command\r\n250 ok\r\n", "", 0 };

	scenario("NUL and bare CR", SMTP_LISTEN_PLAIN, false, st, &w);
}

/* ---- the upstream's replies ---- */

static void test_malformed_replies(void)
{
	static const struct { const char *in; size_t len; const char *passed; } bad[] = {
		{ LIT("25O x\r\n"), "" }, { LIT("199 x\r\n"), "" }, { LIT("600 x\r\n"), "" },
		{ LIT("250-a\r\n251 b\r\n"), "" }, { LIT("250 a\0b\r\n"), "" },
		{ LIT("250x\r\n"), "" }, { LIT("2\r\n"), "" }, { LIT("\r\n"), "" },
		{ LIT("250 a\rb\r\n"), "" },
		{ LIT("250-a\r\n250-b\r\n25 c\r\n"), "" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct buf u = { 0 }, down = { 0 };
		puts_(&u, G);
		put(&u, bad[i].in, bad[i].len);
		puts_(&down, G);
		puts_(&down, bad[i].passed);
		puts_(&down, R421);
		struct step st[] = { { "NOOP\r\n", 6, u.p, u.len }, { 0 } };
		struct want w = { "NOOP\r\n", down.p, MALFORMED, 1 };
		scenario(bad[i].in, SMTP_LISTEN_PLAIN, false, st, &w);
		buf_free(&u);
		buf_free(&down);
	}
}

static void test_long_replies(void)
{
	struct buf help = { 0 }, ehlo = { 0 }, longline = { 0 };

	puts_(&help, G);
	for (int i = 0; i < 4; i++) {
		puts_(&help, "214-");
		put_rep(&help, 'h', 3000);
		puts_(&help, "\r\n");
	}
	puts_(&help, "214 end\r\n");
	/* Past SMTP_REPLY_MAX: nothing of it reaches the client, only the 421. */
	struct step st[] = { { "HELP\r\n", 6, help.p, help.len }, { 0 } };
	struct want w = { "HELP\r\n", G R421, "close:upstream reply too long", 1 };
	scenario("long multi-line reply", SMTP_LISTEN_PLAIN, false, st, &w);

	puts_(&ehlo, G "250-mx\r\n");
	for (int i = 0; i < 3; i++) {
		puts_(&ehlo, "250-X");
		put_rep(&ehlo, 'e', 3000);
		puts_(&ehlo, "\r\n");
	}
	puts_(&ehlo, "250 END\r\n");
	struct step est[] = { { "EHLO c\r\n", 8, ehlo.p, ehlo.len }, { 0 } };
	struct want ew = { "EHLO c\r\n", G R421, "close:upstream reply too long", 1 };
	scenario("EHLO reply too long", SMTP_LISTEN_PLAIN, false, est, &ew);

	puts_(&longline, G "250 ");
	put_rep(&longline, 'l', SMTP_LINE_MAX);
	puts_(&longline, "\r\n");
	struct step lst[] = { { "NOOP\r\n", 6, longline.p, longline.len }, { 0 } };
	struct want lw = { "NOOP\r\n", G R421, MALFORMED, 1 };
	scenario("reply line too long", SMTP_LISTEN_PLAIN, false, lst, &lw);

	/* Past the limit, though the rewrite would still fit. */
	struct buf edge = { 0 };
	puts_(&edge, G "250-mx\r\n");
	for (int i = 0; i < 2; i++) {
		puts_(&edge, "250-X");
		put_rep(&edge, 'e', 4000);
		puts_(&edge, "\r\n");
	}
	puts_(&edge, "250-");
	put_rep(&edge, 'f', 8193 - (edge.len - (sizeof(G) - 1)) - 6);
	puts_(&edge, "\r\n250 Z\r\n");
	struct step xst[] = { { "EHLO c\r\n", 8, edge.p, edge.len }, { 0 } };
	scenario("EHLO reply one byte too long", SMTP_LISTEN_PLAIN, false, xst, &ew);

	/* Refused as soon as the limit is passed, not when the line ends. */
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s = session(SMTP_LISTEN_PLAIN, false);
	struct smtp_result r;
	smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	smtp_client(&s, (const uint8_t *)"EHLO c\r\n", 8);
	r = smtp_server(&s, (const uint8_t *)edge.p + sizeof(G) - 1, 8193, scratch);
	CHECK_EQ(r.v, SMTP_CLOSE);
	CHECK_STR(r.reason, "upstream reply too long");
	buf_free(&edge);

	/* Under the limit, but bare LF lines grow by a CR each in the rewrite. */
	struct buf tiny = { 0 };
	puts_(&tiny, G);
	for (int i = 0; i < 1300; i++)
		puts_(&tiny, "250-a\n");
	puts_(&tiny, "250 b\n");
	struct step tst[] = { { "EHLO c\r\n", 8, tiny.p, tiny.len }, { 0 } };
	ew.end = "close:EHLO reply too long";
	scenario("EHLO rewrite too long", SMTP_LISTEN_PLAIN, false, tst, &ew);
	buf_free(&tiny);

	static const struct step mixed[] = {
		STEP("EHLO c\r\n", G "250-mx\r\n251 x\r\n"), { 0 } };
	struct want mw = { "EHLO c\r\n", G R421, MALFORMED, 1 };
	scenario("EHLO reply codes differ", SMTP_LISTEN_PLAIN, false, mixed, &mw);
	buf_free(&help);
	buf_free(&ehlo);
	buf_free(&longline);
}

static void test_unsolicited(void)
{
	static const struct step st[] = {
		STEP("", G "421 4.3.2 shutting down\r\n"), { 0 } };
	static const struct step mid[] = {
		STEP("NOOP\r\n", G "250 ok\r\n421 bye\r\n"),
		STEP("STARTTLS\r\n", ""), { 0 } };
	static const struct step greet[] = { STEP("", "554 no service\r\n"), { 0 } };
	static const struct step junk[] = { STEP("", "hello\r\n"), { 0 } };
	struct want w = { "", G "421 4.3.2 shutting down\r\n", "", 0 };

	scenario("unsolicited 421", SMTP_LISTEN_PLAIN, false, st, &w);
	w.up = "NOOP\r\n";
	w.down = G "250 ok\r\n421 bye\r\n502 5.5.1 STARTTLS not available\r\n";
	scenario("421 after a reply", SMTP_LISTEN_PLAIN, false, mid, &w);
	w.up = "";
	w.down = "554 no service\r\n";
	scenario("554 greeting", SMTP_LISTEN_PLAIN, false, greet, &w);
	w.down = R421;
	w.end = MALFORMED;
	w.pending = 1;
	scenario("junk greeting", SMTP_LISTEN_PLAIN, false, junk, &w);
}

static void test_queue_full(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s = session(SMTP_LISTEN_PLAIN, false);
	struct smtp_result r;
	struct buf c = { 0 }, u = { 0 };

	int passed = 0;
	for (int i = 1; i < SMTP_QUEUE; i++)
		passed += smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6).v == SMTP_PASS;
	CHECK_EQ(passed, SMTP_QUEUE - 1);
	CHECK_EQ(smtp_pending(&s), SMTP_QUEUE);
	r = smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6);
	CHECK_EQ(r.v, SMTP_HOLD);
	r = smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	CHECK_EQ(r.v, SMTP_PASS);
	CHECK_EQ(smtp_pending(&s), SMTP_QUEUE - 1);
	r = smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6);
	CHECK_EQ(r.v, SMTP_PASS);

	puts_(&u, G);
	for (int i = 0; i < 200; i++) {
		puts_(&c, "NOOP\r\n");
		puts_(&u, "250 ok\r\n");
	}
	struct step st[] = { { c.p, c.len, u.p, u.len }, { 0 } };
	struct want w = { c.p, u.p, "", 0 };
	scenario("200 pipelined commands", SMTP_LISTEN_PLAIN, false, st, &w);
	buf_free(&c);
	buf_free(&u);
}

/* ---- upstream STARTTLS ---- */

struct setup_step {
	const char *s;
	size_t len;
};

/* Feeds each upstream reply after the verdict that sends the command it
 * answers; returns the verdicts, and the session as left. */
static void setup_drive(struct smtp *s, const struct setup_step *st, int mode,
    struct buf *log)
{
	struct run r = { .mode = mode, .rng = 77u };
	struct feed f = { 0 };
	char line[160];
	bool go = true;

	for (size_t i = 0; go && st[i].s != NULL; i++) {
		put(&f.in, st[i].s, st[i].len);
		f.limit = f.in.len;
		while (go) {
			size_t avail = f.have - f.used;
			struct smtp_result v = smtp_setup(s, (uint8_t *)f.in.p + f.used, avail);
			check_result(&r, v, avail);
			if (v.v == SMTP_MORE && f.have < f.limit) {
				f.have += chunk(&r, &f, false);
				continue;
			}
			f.used += v.n;
			if (v.v == SMTP_START_TLS && f.used == f.limit)
				smtp_upstream_tls_up(s);
			else if (v.v == SMTP_START_TLS) {
				f.have = f.limit; /* the rest, read before the handshake */
				continue;
			}
			if (v.v == SMTP_REFUSE)
				snprintf(line, sizeof(line), "REFUSE %s|%s", v.reason, v.reply);
			else
				snprintf(line, sizeof(line), "%d:%zu ", (int)v.v, v.n);
			puts_(log, line);
			go = v.v == SMTP_SEND_EHLO || v.v == SMTP_SEND_STARTTLS;
			break;
		}
	}
	CHECK_EQ(r.bad, 0);
	buf_free(&f.in);
}

#define S3(a, b, c) { { a, sizeof(a) - 1 }, { b, sizeof(b) - 1 }, { c, sizeof(c) - 1 }, { NULL, 0 } }
#define GOOD_EHLO "250-mx\r\n250-PIPELINING\r\n250-starttls\r\n250 8BITMIME\r\n"
#define TLS_FAILED "|421 4.7.0 TLS to the upstream failed, try again later\r\n"

static void setup_case(const char *name, const struct setup_step *st,
    const char *want)
{
	for (int mode = 0; mode < NMODES; mode++) {
		struct smtp s;
		struct buf log = { 0 };
		smtp_init(&s, SMTP_LISTEN_PLAIN, false, true);
		setup_drive(&s, st, mode, &log);
		CHECK(same_buf(&log, want));
		if (!same_buf(&log, want))
			fprintf(stderr, "  in %s (%s): %s\n", name, mode_name[mode], log.p);
		buf_free(&log);
	}
}

static void test_setup_paths(void)
{
	static const struct setup_step good[] = S3(G, GOOD_EHLO, "220 go ahead\r\n");
	static const struct setup_step multi[] = S3("220-mx\r\n220 ESMTP\n",
	    "250-mx\r\n250 STARTTLS\r\n", "220 go\r\n");
	static const struct setup_step none[] = S3(G, "250-mx\r\n250 SIZE 10\r\n", "");
	static const struct setup_step named[] = S3(G, "250 STARTTLS\r\n", "");
	static const struct setup_step ehlo_no[] = S3(G, "502 no\r\n", "");
	static const struct setup_step tls_no[] = S3(G, GOOD_EHLO, "454 4.7.0 not now\r\n");
	static const struct setup_step tls_250[] = S3(G, GOOD_EHLO, "250 ok\r\n");
	static const struct setup_step inject[] = S3(G, GOOD_EHLO, "220 go\r\n250 fake\r\n");
	static const struct setup_step greet[] = S3("554 go away\r\n", "", "");
	static const struct setup_step junk[] = S3("220 ok\r\n", "250-mx\r\n220 x\r\n", "");
	static const struct setup_step bad[] = S3("2x0 hi\r\n", "", "");

	setup_case("good", good, "6:22 7:52 8:14 ");
	setup_case("multi-line greeting", multi, "6:18 7:22 8:8 ");
	setup_case("no STARTTLS", none, "6:22 REFUSE upstream offered no STARTTLS" TLS_FAILED);
	setup_case("STARTTLS only as name", named, "6:22 REFUSE upstream offered no STARTTLS" TLS_FAILED);
	setup_case("EHLO refused", ehlo_no, "6:22 REFUSE upstream refused EHLO" TLS_FAILED);
	setup_case("454 to STARTTLS", tls_no, "6:22 7:52 REFUSE upstream refused STARTTLS" TLS_FAILED);
	setup_case("250 to STARTTLS", tls_250, "6:22 7:52 REFUSE upstream refused STARTTLS" TLS_FAILED);
	setup_case("data after 220", inject, "6:22 7:52 REFUSE upstream sent data "
	    "after its STARTTLS 220 (injection)" TLS_FAILED);
	setup_case("greeting not 220", greet, "REFUSE upstream greeting was not 220" TLS_FAILED);
	setup_case("EHLO codes differ", junk, "6:8 REFUSE malformed reply from upstream" TLS_FAILED);
	setup_case("malformed greeting", bad, "REFUSE malformed reply from upstream" TLS_FAILED);
}

/* After the upstream's TLS: no greeting is owed, the relay runs. */
static void test_setup_then_relay(void)
{
	static const struct setup_step good[] = S3(G, GOOD_EHLO, "220 go ahead\r\n");
	static const struct step st[] = {
		STEP("EHLO c\r\nMAIL FROM:<a>\r\n", EHLO_UP "250 ok\r\n"), { 0 } };
	static char scratch[SMTP_EHLO_MAX + 64];
	struct want w = { "EHLO c\r\nMAIL FROM:<a>\r\n", EHLO_TLS_OFFERED "250 ok\r\n", "", 0 };
	struct buf log = { 0 };
	struct smtp s, early;
	struct smtp_result r;

	smtp_init(&s, SMTP_LISTEN_STARTTLS, true, true);
	CHECK_EQ(smtp_pending(&s), 0);
	r = smtp_client(&s, (const uint8_t *)"EHLO c\r\n", 8);
	CHECK_EQ(r.v, SMTP_HOLD);
	early = s;
	r = smtp_server(&early, (const uint8_t *)G, sizeof(G) - 1, scratch);
	CHECK_EQ(r.v, SMTP_CLOSE);
	setup_drive(&s, good, ALL, &log);
	CHECK(same_buf(&log, "6:22 7:52 8:14 "));
	r = smtp_setup(&s, (const uint8_t *)"x", 1);
	CHECK_EQ(r.v, SMTP_REFUSE);
	scenario_from("relay after upstream STARTTLS", &s, st, &w);
	buf_free(&log);

	smtp_init(&s, SMTP_LISTEN_PLAIN, false, false);
	r = smtp_setup(&s, (const uint8_t *)G, sizeof(G) - 1);
	CHECK_EQ(r.v, SMTP_REFUSE);
	CHECK_EQ(smtp_pending(&s), 1);
}

/* A handshake that data in the same read would hit: the 220 leaves one
 * byte behind, and the rest of a setup is refused once TLS is pending. */
static void test_setup_tls_pending(void)
{
	static const char ok[] = "220 go\r\n";
	struct smtp s;
	struct smtp_result r;

	smtp_init(&s, SMTP_LISTEN_PLAIN, false, true);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)G, sizeof(G) - 1).v, SMTP_SEND_EHLO);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)GOOD_EHLO, sizeof(GOOD_EHLO) - 1).v,
	    SMTP_SEND_STARTTLS);
	r = smtp_setup(&s, (const uint8_t *)ok, sizeof(ok) - 1);
	CHECK_EQ(r.v, SMTP_START_TLS);
	CHECK_EQ(r.n, sizeof(ok) - 1);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)ok, 0).v, SMTP_MORE);
	r = smtp_setup(&s, (const uint8_t *)"2", 1);
	CHECK_EQ(r.v, SMTP_REFUSE);
	CHECK_STR(r.reason, "upstream sent data after its STARTTLS 220 (injection)");

	static const char both[] = "220 go\r\n250 fake\r\n";
	smtp_init(&s, SMTP_LISTEN_PLAIN, false, true);
	smtp_setup(&s, (const uint8_t *)G, sizeof(G) - 1);
	smtp_setup(&s, (const uint8_t *)GOOD_EHLO, sizeof(GOOD_EHLO) - 1);
	r = smtp_setup(&s, (const uint8_t *)both, sizeof(both) - 1);
	CHECK_EQ(r.v, SMTP_REFUSE);
	CHECK_STR(r.reason, "upstream sent data after its STARTTLS 220 (injection)");
	CHECK_STR(r.reply, "421 4.7.0 TLS to the upstream failed, try again later\r\n");
}

/* ---- command lines in every spelling ---- */

/*
 * Classes of spelling, after what Postfix's smtpd makes of them: white
 * space (SP, HT, VT, FF) ends the verb and separates the words, case does
 * not matter. The shim reads them the same way, except what it refuses:
 * white space before the verb and a CR before the CRLF.
 */
enum { SP_CANON, SP_MIXED, SP_LEAD_SP, SP_LEAD_TAB, SP_TRAIL_SP, SP_TRAIL_TAB,
	SP_TRAIL_VT, SP_TRAIL_FF, SP_TRAIL_CR, SP_SEP_TAB, SP_SEP_VT, SP_SEP_FF,
	SP_SEP_MANY, NSP };
static const char *const sp_name[] = { "canonical", "mixed case", "leading space",
	"leading tab", "trailing space", "trailing tab", "trailing VT", "trailing FF",
	"CR before CRLF", "tab before args", "VT before args", "FF before args",
	"white space run before args" };

/* What the shim makes of a spelling. */
enum { AS_VERB, AS_LEAD, AS_BADCHAR };

/* The line "verb[ args]" spelled as `how` says, CRLF ended, into b; its
 * class, or -1 when the spelling needs arguments and there are none. */
static int spell(struct buf *b, const char *verb, const char *args, int how)
{
	static const char *const lead[NSP] = { [SP_LEAD_SP] = " ", [SP_LEAD_TAB] = "\t" };
	static const char *const trail[NSP] = { [SP_TRAIL_SP] = " ", [SP_TRAIL_TAB] = "\t",
		[SP_TRAIL_VT] = "\v", [SP_TRAIL_FF] = "\f", [SP_TRAIL_CR] = "\r" };
	static const char *const sep[NSP] = { [SP_SEP_TAB] = "\t", [SP_SEP_VT] = "\v",
		[SP_SEP_FF] = "\f", [SP_SEP_MANY] = " \t\v\f " };

	if (sep[how] && args == NULL)
		return -1;
	b->len = 0;
	puts_(b, lead[how] ? lead[how] : "");
	for (size_t i = 0; verb[i]; i++) {
		char c = verb[i];
		if (how == SP_MIXED && i % 2 == 0)
			c = (char)(c - 'A' + 'a');
		put(b, &c, 1);
	}
	if (args) {
		puts_(b, sep[how] ? sep[how] : " ");
		puts_(b, args);
	}
	puts_(b, trail[how] ? trail[how] : "");
	puts_(b, "\r\n");
	return lead[how] ? AS_LEAD : how == SP_TRAIL_CR ? AS_BADCHAR : AS_VERB;
}

static const char *refusal(int as)
{
	return as == AS_LEAD ? R500_LEAD : R500;
}

static char *cat(const char *a, const char *b, const char *c)
{
	struct buf o = { 0 };

	puts_(&o, a);
	puts_(&o, b);
	puts_(&o, c ? c : "");
	return o.p;
}

/* The body after an odd DATA carries lines the shim would act on as
 * commands: read as body, they reach the upstream as they are. */
static void test_spelled_data(void)
{
	static const char body[] = "STARTTLS\r\nRSET\r\nXCLIENT ADDR=192.0.2.7\r\n.\r\nQUIT\r\n";

	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "DATA", NULL, how);
		if (as < 0)
			continue;
		char *c = cat(TRANSACTION_LINES, l.p, body);
		char *up, *down;
		const char *replies;
		if (as == AS_VERB) {
			replies = "250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n";
			up = cat("EHLO c\r\n", c, NULL);
			down = cat(G "250 mx\r\n", replies, NULL);
		} else {
			/* Refused: what follows is commands, for both. */
			replies = "250 ok\r\n250 ok\r\n250 ok\r\n500 what\r\n221 bye\r\n";
			up = cat("EHLO c\r\n" TRANSACTION_LINES, "RSET\r\n.\r\nQUIT\r\n", NULL);
			struct buf d = { 0 };
			puts_(&d, G "250 mx\r\n250 ok\r\n250 ok\r\n");
			puts_(&d, refusal(as));
			puts_(&d, "502 5.5.1 STARTTLS not available\r\n250 ok\r\n" R550_ID
			    "500 what\r\n221 bye\r\n");
			down = d.p;
		}
		struct step st[] = { STEP("EHLO c\r\n", G "250 mx\r\n"),
			{ c, strlen(c), replies, strlen(replies) }, { 0 } };
		struct want w = { up, down, "", 0 };
		scenario(sp_name[how], SMTP_LISTEN_PLAIN, false, st, &w);
		free(c);
		free(up);
		free(down);
		buf_free(&l);
	}
}

#define EHLO_IDENT "250-mx.example\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n" \
	"250-STARTTLS\r\n250-xforward\tNAME ADDR\r\n250-XCLIENTS\r\n250-SIZE 1000\r\n" \
	"250 Xclient\r\n"
#define EHLO_IDENT_SEEN "250-mx.example\r\n250-XCLIENTS\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"

static void test_spelled_ehlo(void)
{
	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "EHLO", "c", how);
		struct step st[] = { { l.p, l.len, LIT(G EHLO_IDENT) }, { 0 } };
		char *down = cat(G, as == AS_VERB ? EHLO_IDENT_SEEN : refusal(as), NULL);
		struct want w = { as == AS_VERB ? l.p : "", down, "", 0 };
		if (as != AS_VERB)
			st[0].slen = sizeof(G) - 1;
		scenario(sp_name[how], SMTP_LISTEN_STARTTLS, true, st, &w);
		free(down);
		buf_free(&l);
	}
}

/* After STARTTLS only EHLO or HELO opens the session again. */
static void test_spelled_helo(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];

	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "HELO", "c", how);
		struct smtp s = session(SMTP_LISTEN_STARTTLS, true);
		smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
		CHECK_EQ(smtp_client(&s, (const uint8_t *)"STARTTLS\r\n", 10).v, SMTP_STARTTLS);
		smtp_listen_tls_up(&s);
		char *c = cat(l.p, "MAIL FROM:<a>\r\n", NULL);
		struct step st[] = { { c, strlen(c), LIT("250 mx\r\n250 ok\r\n") }, { 0 } };
		char *up = as == AS_VERB ? cat(c, "", NULL) : cat("", "", NULL);
		char *down = as == AS_VERB ? cat("250 mx\r\n250 ok\r\n", "", NULL) :
		    cat(refusal(as), R503, NULL);
		struct want w = { up, down, "", 0 };
		if (as != AS_VERB)
			st[0].slen = 0;
		scenario_from(sp_name[how], &s, st, &w);
		free(c);
		free(up);
		free(down);
		buf_free(&l);
	}
}

static void test_spelled_starttls(void)
{
	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "STARTTLS", NULL, how);
		if (as < 0)
			continue;
		struct step st[] = { STEP("EHLO c\r\n", G EHLO_UP), { l.p, l.len, "", 0 }, { 0 } };
		char *down = cat(G EHLO_TLS_REQUIRED, as == AS_VERB ? READY : refusal(as), NULL);
		struct want w = { "EHLO c\r\n", down, "", 0 };
		scenario(sp_name[how], SMTP_LISTEN_STARTTLS, false, st, &w);
		free(down);
		down = cat(G EHLO_NO_TLS, as == AS_VERB ? "502 5.5.1 STARTTLS not available\r\n" :
		    refusal(as), NULL);
		w.down = down;
		scenario(sp_name[how], SMTP_LISTEN_PLAIN, false, st, &w);
		free(down);
		buf_free(&l);
	}
	/* Arguments, however separated, are a syntax error (as for Postfix). */
	for (int how = SP_SEP_TAB; how < NSP; how++) {
		struct buf l = { 0 };
		spell(&l, "STARTTLS", "x", how);
		struct step st[] = { { l.p, l.len, LIT(G) }, { 0 } };
		struct want w = { "", G "501 5.5.4 Syntax: STARTTLS\r\n", "", 0 };
		scenario(sp_name[how], SMTP_LISTEN_STARTTLS, false, st, &w);
		buf_free(&l);
	}
}

/* An odd AUTH still puts the next line in the SASL exchange. */
static void test_spelled_auth(void)
{
	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "AUTH", "LOGIN", how);
		char *c = cat(l.p, "STARTTLS\r\nNOOP\r\n", NULL);
		const char *replies = as == AS_VERB ? G "334 a\r\n235 ok\r\n250 ok\r\n" :
		    G "250 ok\r\n";
		char *up = as == AS_VERB ? cat(c, "", NULL) : cat("NOOP\r\n", "", NULL);
		char *down = as == AS_VERB ? cat(replies, "", NULL) :
		    cat(G, refusal(as), "502 5.5.1 STARTTLS not available\r\n250 ok\r\n");
		struct step st[] = { { c, strlen(c), replies, strlen(replies) }, { 0 } };
		struct want w = { up, down, "", 0 };
		scenario(sp_name[how], SMTP_LISTEN_PLAIN, false, st, &w);
		free(c);
		free(up);
		free(down);
		buf_free(&l);
	}
}

/* BDAT: only the plain spelling (any case) goes on; any other white space
 * ends the session, since a server could size the chunk otherwise. */
static void test_spelled_bdat(void)
{
	for (int how = 0; how < NSP; how++) {
		struct buf l = { 0 };
		int as = spell(&l, "BDAT", "6 LAST", how);
		bool plain = how == SP_CANON || how == SP_MIXED;
		char *c = cat(l.p, "QUIT\r\nNOOP\r\n", NULL);
		const char *replies = plain ? "250 6 octets\r\n250 ok\r\n" :
		    as == AS_BADCHAR ? "221 bye\r\n250 ok\r\n" : "";
		char *up, *down;
		const char *end = "";
		if (plain) {
			up = cat("EHLO c\r\n", c, NULL);
			down = cat(G "250-mx\r\n250 CHUNKING\r\n", replies, NULL);
		} else if (as == AS_BADCHAR) {
			/* Refused: the upstream never sees a chunk, so QUIT is one. */
			up = cat("EHLO c\r\nQUIT\r\nNOOP\r\n", "", NULL);
			down = cat(G "250-mx\r\n250 CHUNKING\r\n", R500, replies);
		} else {
			up = cat("EHLO c\r\n", "", NULL);
			down = cat(G "250-mx\r\n250 CHUNKING\r\n", R501_BDAT, NULL);
			end = "close:malformed BDAT";
		}
		struct step st[] = { STEP("EHLO c\r\n", G "250-mx\r\n250 CHUNKING\r\n"),
			{ c, strlen(c), replies, strlen(replies) }, { 0 } };
		struct want w = { up, down, end, 0 };
		scenario(sp_name[how], SMTP_LISTEN_PLAIN, false, st, &w);
		free(c);
		free(up);
		free(down);
		buf_free(&l);
	}
}

/* The verbs anyone may send before TLS, against one nobody may (MAIL). */
static void test_spelled_open_verbs(void)
{
	static const struct { const char *verb, *args; bool open; } v[] = {
		{ "RSET", NULL, true }, { "QUIT", NULL, true }, { "NOOP", NULL, true },
		{ "NOOP", "x", true }, { "MAIL", "FROM:<a>", false },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		for (int how = 0; how < NSP; how++) {
			struct buf l = { 0 };
			int as = spell(&l, v[i].verb, v[i].args, how);
			if (as < 0)
				continue;
			bool fwd = as == AS_VERB && v[i].open;
			struct step st[] = { { l.p, l.len, G "250 ok\r\n", fwd ? 30 : 22 }, { 0 } };
			char *down = cat(G, fwd ? "250 ok\r\n" : as == AS_VERB ? R530 :
			    refusal(as), NULL);
			struct want w = { fwd ? l.p : "", down, "", 0 };
			scenario(sp_name[how], SMTP_LISTEN_STARTTLS, false, st, &w);
			free(down);
			buf_free(&l);
		}
}

/* XCLIENT and XFORWARD: answered here in every spelling, never forwarded,
 * in every mode (before TLS where it is required: 530, as any command). */
static void test_identity_commands(void)
{
	static const char *const verbs[] = { "XCLIENT", "XFORWARD" };
	static const enum smtp_listen modes[] = { SMTP_LISTEN_PLAIN, SMTP_LISTEN_STARTTLS,
		SMTP_LISTEN_IMPLICIT };

	for (size_t i = 0; i < 2; i++)
		for (int how = 0; how < NSP; how++)
			for (size_t m = 0; m < 3; m++) {
				struct buf l = { 0 };
				int as = spell(&l, verbs[i], "ADDR=192.0.2.77 NAME=trusted.example", how);
				char *c = cat(l.p, "NOOP\r\n", NULL);
				char *down = cat(G, as == AS_VERB ? R550_ID : refusal(as), "250 ok\r\n");
				struct step st[] = { { c, strlen(c), LIT(G "250 ok\r\n") }, { 0 } };
				struct want w = { "NOOP\r\n", down, "", 0 };
				scenario(sp_name[how], modes[m], true, st, &w);
				free(down);
				down = cat(G, as == AS_VERB ? R530 : refusal(as), "250 ok\r\n");
				w.down = down;
				if (modes[m] == SMTP_LISTEN_STARTTLS)
					scenario(sp_name[how], modes[m], false, st, &w);
				free(c);
				free(down);
				buf_free(&l);
			}
}

/* ---- BDAT and the message size ---- */

/* After an EHLO reply `ehlo`, "BDAT size LAST" is forwarded (ok) or gets
 * 552 and ends the session. */
static void bdat_cap_case(const char *name, const char *ehlo, uint64_t size, bool ok)
{
	char line[64];
	struct buf c = { 0 }, down = { 0 };

	snprintf(line, sizeof(line), "BDAT %llu LAST\r\n", (unsigned long long)size);
	puts_(&c, line);
	puts_(&down, G);
	puts_(&down, ehlo);
	if (ok) {
		/* Only the command line: the chunk would take too long. */
		struct step st[] = { { "EHLO c\r\n", 8, NULL, 0 }, { c.p, c.len, "", 0 }, { 0 } };
		struct buf u = { 0 }, up = { 0 };
		puts_(&u, G);
		puts_(&u, ehlo);
		st[0].s = u.p;
		st[0].slen = u.len;
		puts_(&up, "EHLO c\r\n");
		puts_(&up, line);
		struct want w = { up.p, down.p, "", 1 };
		scenario(name, SMTP_LISTEN_PLAIN, false, st, &w);
		buf_free(&u);
		buf_free(&up);
	} else {
		puts_(&c, "QUIT\r\n");
		puts_(&down, R552);
		struct step st[] = { { "EHLO c\r\n", 8, NULL, 0 }, { c.p, c.len, "", 0 }, { 0 } };
		struct buf u = { 0 };
		puts_(&u, G);
		puts_(&u, ehlo);
		st[0].s = u.p;
		st[0].slen = u.len;
		struct want w = { "EHLO c\r\n", down.p,
			"close:BDAT chunk over the message size limit", 0 };
		scenario(name, SMTP_LISTEN_PLAIN, false, st, &w);
		buf_free(&u);
	}
	buf_free(&c);
	buf_free(&down);
}

static void test_bdat_cap(void)
{
	const uint64_t cap = SMTP_CHUNK_MAX;

	bdat_cap_case("SIZE 1000, chunk 1000", "250-mx\r\n250-SIZE 1000\r\n250 CHUNKING\r\n", 1000, true);
	bdat_cap_case("SIZE 1000, chunk 1001", "250-mx\r\n250-SIZE 1000\r\n250 CHUNKING\r\n", 1001, false);
	bdat_cap_case("size\\t1000, chunk 1001", "250-mx\r\n250-size\t1000\r\n250 CHUNKING\r\n", 1001, false);
	bdat_cap_case("no SIZE, chunk at the cap", "250-mx\r\n250 CHUNKING\r\n", cap, true);
	bdat_cap_case("no SIZE, chunk over the cap", "250-mx\r\n250 CHUNKING\r\n", cap + 1, false);
	bdat_cap_case("SIZE 0, chunk over the cap", "250-mx\r\n250-SIZE 0\r\n250 CHUNKING\r\n", cap + 1, false);
	bdat_cap_case("SIZE 0, chunk at the cap", "250-mx\r\n250-SIZE 0\r\n250 CHUNKING\r\n", cap, true);
	bdat_cap_case("SIZE without a number", "250-mx\r\n250-SIZE\r\n250 CHUNKING\r\n", cap + 1, false);
	bdat_cap_case("SIZE that overflows", "250-mx\r\n250-SIZE 99999999999999999999999\r\n"
	    "250 CHUNKING\r\n", cap + 1, false);
	bdat_cap_case("SIZE above the cap", "250-mx\r\n250-SIZE 4294967296\r\n250 CHUNKING\r\n",
	    4294967296u, true);
	bdat_cap_case("SIZE above the cap, over it", "250-mx\r\n250-SIZE 4294967296\r\n"
	    "250 CHUNKING\r\n", 4294967297u, false);
	/* The cap applies before any other refusal, so a refused chunk is
	 * never skipped for ever. */
	bdat_cap_case("no CHUNKING, chunk over the cap", "250 mx\r\n", cap + 1, false);

	/* Over SIZE 1000 (EHLO_UP) before TLS: 552, not 530. */
	static const struct step tls[] = { STEP("EHLO c\r\n", G EHLO_UP),
		STEP("BDAT 1001\r\nQUIT\r\n", ""), { 0 } };
	struct want w = { "EHLO c\r\n", G EHLO_TLS_REQUIRED R552,
		"close:BDAT chunk over the message size limit", 0 };
	scenario("cap before TLS policy", SMTP_LISTEN_STARTTLS, false, tls, &w);

	/* A new EHLO reply replaces what the last one said. */
	static const struct step again[] = {
		STEP("EHLO c\r\n", G "250-mx\r\n250-SIZE 10\r\n250 CHUNKING\r\n"),
		STEP("EHLO c\r\n", "250-mx\r\n250 CHUNKING\r\n"),
		STEP("BDAT 11 LAST\r\nQUIT\r\n12345", "250 11 octets\r\n"), { 0 } };
	struct want aw = { "EHLO c\r\nEHLO c\r\nBDAT 11 LAST\r\nQUIT\r\n12345",
		G "250-mx\r\n250-SIZE 10\r\n250 CHUNKING\r\n250-mx\r\n250 CHUNKING\r\n"
		"250 11 octets\r\n", "", 0 };
	scenario("SIZE forgotten by the next EHLO", SMTP_LISTEN_PLAIN, false, again, &aw);
}

/* ---- replies pass whole ---- */

static void test_whole_replies(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s = session(SMTP_LISTEN_PLAIN, false);
	struct smtp_result r;
	static const char two[] = "250-first\r\n250 second\r\n";

	smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	smtp_client(&s, (const uint8_t *)"NOOP\r\nNOOP\r\n", 12);
	smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6);
	/* Every cut inside the reply: nothing passes until it is whole. */
	for (size_t cut = 1; cut < sizeof(two) - 1; cut++) {
		struct smtp t = s;
		r = smtp_server(&t, (const uint8_t *)two, cut, scratch);
		CHECK_EQ(r.v, SMTP_MORE);
		r = smtp_server(&t, (const uint8_t *)two, sizeof(two) - 1, scratch);
		CHECK_EQ(r.v, SMTP_PASS);
		CHECK_EQ(r.n, sizeof(two) - 1);
	}
	/* A complete reply goes on; the one behind it that breaks does not. */
	static const char mixed[] = "250 a\r\n250-b\r\n550 c\r\n";
	r = smtp_server(&s, (const uint8_t *)mixed, sizeof(mixed) - 1, scratch);
	CHECK_EQ(r.v, SMTP_PASS);
	CHECK_EQ(r.n, 7);
	r = smtp_server(&s, (const uint8_t *)mixed + 7, sizeof(mixed) - 8, scratch);
	CHECK_EQ(r.v, SMTP_CLOSE);
	CHECK_STR(r.reply, R421);

	/* Exactly SMTP_REPLY_MAX bytes pass; one more is refused whole. */
	for (int extra = 0; extra < 2; extra++) {
		struct buf u = { 0 };
		size_t line = 1000;
		puts_(&u, G);
		while (u.len - (sizeof(G) - 1) + line + 6 <= SMTP_REPLY_MAX) {
			puts_(&u, "214-");
			put_rep(&u, 'h', line);
			puts_(&u, "\r\n");
		}
		size_t rest = SMTP_REPLY_MAX - (u.len - (sizeof(G) - 1)) - 6 + extra;
		puts_(&u, "214 ");
		put_rep(&u, 'e', rest);
		puts_(&u, "\r\n");
		CHECK_EQ(u.len - (sizeof(G) - 1), SMTP_REPLY_MAX + extra);
		struct step st[] = { { "HELP\r\n", 6, u.p, u.len }, { 0 } };
		struct want w = { "HELP\r\n", extra ? G R421 : u.p,
			extra ? "close:upstream reply too long" : "", extra ? 1 : 0 };
		scenario(extra ? "reply one byte too long" : "reply at the limit",
		    SMTP_LISTEN_PLAIN, false, st, &w);
		buf_free(&u);
	}

	/* Pipelined replies, each multi-line, cut anywhere. */
	static const struct step pipe[] = {
		STEP("EHLO c\r\nHELP\r\nMAIL FROM:<a>\r\nHELP\r\n", G "250-mx\r\n250 8BITMIME\r\n"
		    "214-a\r\n214-b\r\n214 c\r\n250 ok\r\n214-d\r\n214 e\r\n"), { 0 } };
	struct want pw = { pipe[0].c, G "250-mx\r\n250 8BITMIME\r\n"
		"214-a\r\n214-b\r\n214 c\r\n250 ok\r\n214-d\r\n214 e\r\n", "", 0 };
	scenario("pipelined multi-line replies", SMTP_LISTEN_PLAIN, false, pipe, &pw);

	/* Codes that differ in a multi-line reply: nothing of it, then 421. */
	static const struct step bad[] = {
		STEP("HELP\r\nNOOP\r\n", G "214-a\r\n214-b\r\n250 c\r\n"), { 0 } };
	struct want bw = { "HELP\r\nNOOP\r\n", G R421, MALFORMED, 2 };
	scenario("mixed codes, nothing passed", SMTP_LISTEN_PLAIN, false, bad, &bw);
}

/* The EHLO reply hides XCLIENT and XFORWARD in every mode. */
static void test_ehlo_identity(void)
{
	static const struct step st[] = { STEP("EHLO c\r\n", G EHLO_IDENT), { 0 } };
	struct want w = { "EHLO c\r\n", G "250-mx.example\r\n250-XCLIENTS\r\n250 SIZE 1000\r\n",
		"", 0 };

	scenario("identity hidden, plain", SMTP_LISTEN_PLAIN, false, st, &w);
	scenario("identity hidden, implicit", SMTP_LISTEN_IMPLICIT, false, st, &w);
	w.down = G EHLO_IDENT_SEEN;
	scenario("identity hidden, starttls", SMTP_LISTEN_STARTTLS, false, st, &w);
}

/* A closed session stays closed, whatever the caller does next. */
static void test_dead_is_final(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s = session(SMTP_LISTEN_STARTTLS, true);
	struct smtp_result r;

	r = smtp_server(&s, (const uint8_t *)"hello\r\n", 7, scratch);
	CHECK_EQ(r.v, SMTP_CLOSE);
	smtp_listen_tls_up(&s);
	smtp_upstream_tls_up(&s);
	CHECK_EQ(smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6).v, SMTP_CLOSE);
	CHECK_EQ(smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch).v, SMTP_CLOSE);

	smtp_init(&s, SMTP_LISTEN_STARTTLS, true, false);
	smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	r = smtp_client(&s, (const uint8_t *)"BDAT x\r\n", 8);
	CHECK_EQ(r.v, SMTP_CLOSE);
	smtp_listen_tls_up(&s);
	CHECK_EQ(smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6).v, SMTP_CLOSE);
	CHECK_EQ(smtp_server(&s, (const uint8_t *)"250 ok\r\n", 8, scratch).v, SMTP_CLOSE);
}

/* ---- XCLIENT to the upstream ---- */

#define XC_UP "250-mx.example\r\n250-PIPELINING\r\n" \
	"250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n250 SIZE 1000\r\n"
#define XC_SEEN "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
#define XC_220 "220 mx.example ESMTP\r\n"
#define XC_LINE(proto, helo) "XCLIENT ADDR=" XC_ADDR " PORT=4242 PROTO=" proto \
	" NAME=[UNAVAILABLE] HELO=" helo "\r\n"
#define R421_XC "421 4.7.0 Upstream mail server cannot be told the client's address, try again later\r\n"

static struct smtp xsession(enum smtp_listen m, bool plain_allowed)
{
	struct smtp s = session(m, plain_allowed);

	smtp_xclient_on(&s);
	return s;
}

static void xscenario(const char *name, enum smtp_listen m,
    const struct step *st, const struct want *w)
{
	struct smtp s = xsession(m, true);

	scenario_from(name, &s, st, w);
}

/* The client's EHLO waits, with what it pipelined behind it, while the
 * shim's EHLO and XCLIENT go first; neither of their replies reaches the
 * client, and the EHLO reply it gets hides XCLIENT. */
static void test_xclient_flow(void)
{
	static const struct step st[] = {
		STEP("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n",
		    G XC_UP XC_220 XC_UP "250 2.1.0 Ok\r\n"),
		STEP("QUIT\r\n", "221 Bye\r\n"), { 0 } };
	struct want w = {
		XC_EHLO XC_LINE("ESMTP", "client.example")
		    "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n",
		G XC_SEEN "250 2.1.0 Ok\r\n221 Bye\r\n", "", 0 };

	xscenario("xclient, plain", SMTP_LISTEN_PLAIN, st, &w);
	xscenario("xclient, implicit", SMTP_LISTEN_IMPLICIT, st, &w);
	w.down = G "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
	    "250 2.1.0 Ok\r\n221 Bye\r\n";
	xscenario("xclient, starttls listener", SMTP_LISTEN_STARTTLS, st, &w);
}

/* HELO says PROTO=SMTP; the argument is xtext-encoded, white space
 * around it dropped; an empty one is [UNAVAILABLE]. */
static void test_xclient_helo(void)
{
	static const struct step helo[] = {
		STEP("helo  odd+name=x\xc3\xa9 \r\n", G XC_UP XC_220 "250 mx.example\r\n"),
		{ 0 } };
	static const struct step bare[] = {
		STEP("EHLO\r\n", G XC_UP XC_220 "501 5.5.4 Syntax: EHLO hostname\r\n"),
		{ 0 } };
	struct want w = { XC_EHLO XC_LINE("SMTP", "odd+2Bname+3Dx+C3+A9")
		"helo  odd+name=x\xc3\xa9 \r\n", G "250 mx.example\r\n", "", 0 };
	struct want wb = { XC_EHLO XC_LINE("ESMTP", "[UNAVAILABLE]") "EHLO\r\n",
		G "501 5.5.4 Syntax: EHLO hostname\r\n", "", 0 };

	xscenario("xclient, helo", SMTP_LISTEN_PLAIN, helo, &w);
	xscenario("xclient, bare ehlo", SMTP_LISTEN_PLAIN, bare, &wb);
}

/* XCLIENT is sent once: a second EHLO, or the one after the listen hop's
 * STARTTLS, goes on alone. */
static void test_xclient_later_ehlo(void)
{
	static const struct step st[] = {
		STEP("EHLO a.example\r\n", G XC_UP XC_220 XC_UP),
		STEP("STARTTLS\r\n", ""),
		STEP("EHLO b.example\r\n", XC_UP),
		STEP("EHLO c.example\r\n", XC_UP), { 0 } };
	struct want w = {
		XC_EHLO XC_LINE("ESMTP", "a.example")
		    "EHLO a.example\r\nEHLO b.example\r\nEHLO c.example\r\n",
		G "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
		    READY XC_SEEN XC_SEEN, "", 0 };

	xscenario("xclient, later ehlo", SMTP_LISTEN_STARTTLS, st, &w);
}

/* Before the exchange nothing but the greeting verbs goes on: the upstream
 * would take a transaction for the shim's. */
static void test_xclient_before_ehlo(void)
{
	static const struct step st[] = {
		STEP("MAIL FROM:<a@b.example>\r\n", G),
		STEP("NOOP\r\n", "250 Ok\r\n"),
		STEP("XCLIENT ADDR=192.0.2.99\r\n", ""),
		STEP("EHLO c\r\n", XC_UP XC_220 XC_UP), { 0 } };
	struct want w = { "NOOP\r\n" XC_EHLO XC_LINE("ESMTP", "c") "EHLO c\r\n",
		G R503 "250 Ok\r\n" R503 XC_SEEN, "", 0 };

	xscenario("xclient, before ehlo", SMTP_LISTEN_PLAIN, st, &w);
}

/* An upstream that does not take XCLIENT (none offered, attributes
 * missing, its EHLO or XCLIENT refused) gets the session refused. */
static void test_xclient_refused(void)
{
	static const struct {
		const char *name, *up, *sent, *end;
	} cases[] = {
		{ "no xclient", G EHLO_UP, XC_EHLO, "refuse:upstream offered no XCLIENT" },
		{ "no helo attribute",
		  G "250-mx.example\r\n250 XCLIENT NAME ADDR PORT PROTO\r\n", XC_EHLO,
		  "refuse:upstream XCLIENT does not take ADDR, PORT, PROTO and HELO" },
		{ "xclient as a prefix", G "250-mx.example\r\n250 XCLIENTS ADDR PORT PROTO HELO\r\n",
		  XC_EHLO, "refuse:upstream offered no XCLIENT" },
		{ "on the first line only", G "250-mx.example XCLIENT ADDR PORT PROTO HELO\r\n250 SIZE\r\n",
		  XC_EHLO, "refuse:upstream offered no XCLIENT" },
		{ "ehlo refused", G "554 5.7.1 go away\r\n", XC_EHLO,
		  "refuse:upstream refused the EHLO before XCLIENT" },
		{ "xclient refused", G XC_UP "550 5.7.0 Not authorized\r\n",
		  XC_EHLO XC_LINE("ESMTP", "c"), "refuse:upstream refused XCLIENT" },
		{ "xclient 250", G XC_UP "250 Ok\r\n",
		  XC_EHLO XC_LINE("ESMTP", "c"), "refuse:upstream refused XCLIENT" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct step st[] = { { "EHLO c\r\nNOOP\r\n", 14, cases[i].up, strlen(cases[i].up) },
			{ 0 } };
		struct want w = { cases[i].sent, G R421_XC, cases[i].end, 0 };
		struct smtp s = xsession(SMTP_LISTEN_PLAIN, true);

		scenario_from(cases[i].name, &s, st, &w);
	}
}

/* A STARTTLS upstream: the exchange runs inside TLS, at the client's
 * first EHLO, whatever the shim's setup EHLO saw before TLS. */
static void test_xclient_starttls_upstream(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	static const char ehlo_pre[] = "250-mx.example\r\n250 STARTTLS\r\n";
	struct smtp s;
	struct smtp_result r;
	const uint8_t *ehlo = (const uint8_t *)"EHLO c\r\n";

	smtp_init(&s, SMTP_LISTEN_PLAIN, true, true);
	smtp_xclient_on(&s);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)G, sizeof(G) - 1).v, SMTP_SEND_EHLO);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)ehlo_pre, sizeof(ehlo_pre) - 1).v,
	    SMTP_SEND_STARTTLS);
	CHECK_EQ(smtp_setup(&s, (const uint8_t *)READY, sizeof(READY) - 1).v, SMTP_START_TLS);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_HOLD);
	smtp_upstream_tls_up(&s);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_UP_EHLO);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_HOLD);
	r = smtp_server(&s, (const uint8_t *)XC_UP, sizeof(XC_UP) - 1, scratch);
	CHECK(r.v == SMTP_REPLY && r.n == sizeof(XC_UP) - 1 && r.reply_len == 0);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_UP_XCLIENT);
	r = smtp_server(&s, (const uint8_t *)XC_220, sizeof(XC_220) - 1, scratch);
	CHECK(r.v == SMTP_REPLY && r.n == sizeof(XC_220) - 1 && r.reply_len == 0);
	r = smtp_client(&s, ehlo, 8);
	CHECK(r.v == SMTP_PASS && r.n == 8);
	CHECK_EQ(smtp_pending(&s), 1);

	/* A refusal ends the session for both readers. */
	s = xsession(SMTP_LISTEN_PLAIN, true);
	smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_UP_EHLO);
	r = smtp_server(&s, (const uint8_t *)EHLO_UP, sizeof(EHLO_UP) - 1, scratch);
	CHECK(r.v == SMTP_REFUSE && r.reply != NULL && r.n == 0);
	CHECK_EQ(smtp_client(&s, ehlo, 8).v, SMTP_CLOSE);
	CHECK_EQ(smtp_server(&s, (const uint8_t *)XC_220, sizeof(XC_220) - 1, scratch).v,
	    SMTP_CLOSE);
}

static bool xchar(unsigned c)
{
	return c >= 33 && c <= 126 && c != '+' && c != '=';
}

/* Every byte: itself when RFC 3461 allows it, else +HH in upper case;
 * and the encoding decodes back to the bytes. */
static void test_xtext_every_byte(void)
{
	uint8_t all[256];
	char out[768], one[4];
	size_t n, o = 0, bad = 0;

	for (unsigned c = 0; c < 256; c++) {
		uint8_t b = (uint8_t)c;
		char want[4];
		all[c] = b;
		n = smtp_xtext(&b, 1, one, sizeof(one));
		if (xchar(c))
			snprintf(want, sizeof(want), "%c", (int)c);
		else
			snprintf(want, sizeof(want), "+%02X", c);
		if (n != strlen(want) || memcmp(one, want, n) != 0)
			bad++;
	}
	CHECK_EQ(bad, 0);
	n = smtp_xtext(all, sizeof(all), out, sizeof(out));
	CHECK_EQ(n, 94 - 2 + (256 - 92) * 3);
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (out[i] == '+') {
			CHECK(i + 2 < n && sscanf(out + i + 1, "%2X", &v) == 1);
			i += 2;
		} else {
			v = (unsigned char)out[i];
			CHECK(xchar(v));
		}
		if (o < 256 && all[o] != v)
			bad++;
		o++;
	}
	CHECK_EQ(o, 256);
	CHECK_EQ(bad, 0);
}

/* Only whole encodings are written, and never past cap; the length is
 * always the whole encoding's. */
static void test_xtext_bounds(void)
{
	char out[8];

	memset(out, '#', sizeof(out));
	CHECK_EQ(smtp_xtext((const uint8_t *)"ab=cd", 5, out, 4), 7);
	CHECK(memcmp(out, "ab##", 4) == 0);
	CHECK_EQ(smtp_xtext((const uint8_t *)"ab=cd", 5, out, 5), 7);
	CHECK(memcmp(out, "ab+3D#", 6) == 0);
	CHECK_EQ(smtp_xtext((const uint8_t *)"", 0, out, 0), 0);
	CHECK_EQ(smtp_xtext((const uint8_t *)"x+", 2, NULL, 0), 4);
}

static size_t xline(const struct smtp *s, const char *client, bool v6,
    const char *addr, char *out)
{
	return smtp_xclient_line(s, (const uint8_t *)client, strlen(client), addr, v6,
	    65535, out);
}

/* The line stays within 512 bytes, CRLF included: a HELO argument that
 * does not fit, or is longer than 255 bytes, is sent as [UNAVAILABLE]. */
static void test_xclient_line(void)
{
	static const char v6[] = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
	struct smtp s = xsession(SMTP_LISTEN_PLAIN, true);
	char out[SMTP_XCLIENT_MAX + 1], helo[600], client[700], want[700];
	size_t fixed, n;

	n = xline(&s, "EHLO h\r\n", true, "::1", out);
	out[n] = '\0';
	CHECK_STR(out, "XCLIENT ADDR=IPV6:::1 PORT=65535 PROTO=ESMTP HELO=h\r\n");
	s.xclient_name = true;
	n = xline(&s, "Helo\th\n", false, "10.1.2.3", out);
	out[n] = '\0';
	CHECK_STR(out, "XCLIENT ADDR=10.1.2.3 PORT=65535 PROTO=SMTP NAME=[UNAVAILABLE] HELO=h\r\n");
	CHECK_EQ(xline(&s, "MAIL FROM:<a>\r\n", false, "10.1.2.3", out), 0);
	CHECK_EQ(xline(&s, "EHLOx y\r\n", false, "10.1.2.3", out), 0);
	CHECK_EQ(xline(&s, "EHLO y", false, "10.1.2.3", out), 0);

	/* The longest fixed part: an IPv6 address of 39 characters. */
	fixed = strlen("XCLIENT ADDR=IPV6: PORT=65535 PROTO=ESMTP NAME=[UNAVAILABLE] HELO=\r\n") +
	    strlen(v6);
	/* HELO values of 255 bytes fit, encoded as they are... */
	memset(helo, 'a', 255);
	helo[255] = '\0';
	snprintf(client, sizeof(client), "EHLO %s\r\n", helo);
	n = xline(&s, client, true, v6, out);
	CHECK_EQ(n, fixed + 255);
	CHECK(n <= SMTP_XCLIENT_MAX);
	/* ...256 do not. */
	snprintf(client, sizeof(client), "EHLO %sa\r\n", helo);
	n = xline(&s, client, true, v6, out);
	out[n] = '\0';
	snprintf(want, sizeof(want), "XCLIENT ADDR=IPV6:%s PORT=65535 PROTO=ESMTP "
	    "NAME=[UNAVAILABLE] HELO=[UNAVAILABLE]\r\n", v6);
	CHECK_STR(out, want);
	/* Encoded, the last byte that fits and the first that does not. */
	for (size_t k = 1; k <= 255; k++) {
		size_t enc = fixed + 3 * k;
		memset(helo, '=', k);
		helo[k] = '\0';
		snprintf(client, sizeof(client), "EHLO %s\r\n", helo);
		n = xline(&s, client, true, v6, out);
		CHECK(n <= SMTP_XCLIENT_MAX);
		if (enc <= SMTP_XCLIENT_MAX && n != enc)
			CHECK_EQ(n, enc);
		if (enc > SMTP_XCLIENT_MAX && n != fixed + strlen("[UNAVAILABLE]"))
			CHECK_EQ(n, fixed + strlen("[UNAVAILABLE]"));
	}
	/* CR, LF and NUL never get through as themselves. */
	n = xline(&s, "EHLO a\tb\vc\fd e\r\n", false, "10.1.2.3", out);
	out[n] = '\0';
	CHECK(strstr(out, "HELO=a+09b+0Bc+0Cd+20e\r\n") != NULL);
}


/* REQUIRETLS (RFC 8689): offered only over authenticated TLS on both
 * hops, and a MAIL asking for it elsewhere is refused, never forwarded. */
static void requiretls_case(bool listen_tls, bool up_auth, bool offered)
{
	static const char ehlo_up[] = "250-mx\r\n250-REQUIRETLS\r\n250 SIZE 100\r\n";
	static const char mail[] = "MAIL FROM:<a@b> SIZE=10 requiretls\r\n";
	static char scratch[SMTP_EHLO_MAX + 64];
	struct smtp s;
	struct smtp_result r;

	smtp_init(&s, listen_tls ? SMTP_LISTEN_IMPLICIT : SMTP_LISTEN_PLAIN, true, false);
	if (up_auth)
		smtp_upstream_authenticated(&s);
	r = smtp_server(&s, (const uint8_t *)"220 mx\r\n", 8, scratch);
	CHECK_EQ(r.v, SMTP_PASS);
	r = smtp_client(&s, (const uint8_t *)"EHLO c\r\n", 8);
	CHECK_EQ(r.v, SMTP_PASS);
	r = smtp_server(&s, (const uint8_t *)ehlo_up, sizeof(ehlo_up) - 1, scratch);
	CHECK_EQ(r.v, SMTP_REPLY);
	CHECK_EQ(r.reply && memmem(r.reply, r.reply_len, "REQUIRETLS", 10) != NULL, offered);
	CHECK(r.reply && memmem(r.reply, r.reply_len, "SIZE 100", 8) != NULL);
	r = smtp_client(&s, (const uint8_t *)mail, sizeof(mail) - 1);
	if (offered) {
		CHECK_EQ(r.v, SMTP_PASS);
		CHECK_EQ(r.n, sizeof(mail) - 1);
	} else {
		CHECK_EQ(r.v, SMTP_REPLY);
		CHECK(r.reply && strncmp(r.reply, "550 5.7.30 ", 11) == 0);
	}
	/* The word as an address, or inside another word, asks nothing. */
	if (!offered) {
		static const char other[] = "MAIL FROM:<requiretls@b> XREQUIRETLS\r\n";
		r = smtp_client(&s, (const uint8_t *)other, sizeof(other) - 1);
		CHECK_EQ(r.v, SMTP_PASS);
	}
}

static void test_requiretls(void)
{
	requiretls_case(true, true, true);
	requiretls_case(false, true, false);
	requiretls_case(true, false, false);
	requiretls_case(false, false, false);
}

/*
 * A 221 to QUIT ends the session (smtp_quit_done()): the verdict that
 * covers it covers nothing after it, whatever the read's cut. Any other
 * reply to QUIT, and a 221 to any other command, ends nothing.
 */
static void test_quit_done(void)
{
	static char scratch[SMTP_EHLO_MAX + 64];
	static const char tail[] = "221 2.0.0 Bye\r\n250 late\r\n";
	struct smtp s;
	struct smtp_result r;
	size_t cut;

	for (cut = 0; cut <= sizeof(tail) - 1; cut++) {
		s = session(SMTP_LISTEN_PLAIN, true);
		CHECK_EQ(smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch).v, SMTP_PASS);
		CHECK_EQ(smtp_client(&s, (const uint8_t *)"NOOP\r\nQUIT\r\n", 12).n, 6);
		CHECK_EQ(smtp_client(&s, (const uint8_t *)"QUIT\r\n", 6).v, SMTP_PASS);
		r = smtp_server(&s, (const uint8_t *)"250 ok\r\n", 8, scratch);
		CHECK(r.v == SMTP_PASS && r.n == 8 && !smtp_quit_done(&s));
		/* the reply in two reads, cut anywhere */
		r = smtp_server(&s, (const uint8_t *)tail, cut, scratch);
		if (cut < 15)
			CHECK(r.v == SMTP_MORE && !smtp_quit_done(&s));
		else
			CHECK(r.v == SMTP_PASS && r.n == 15 && smtp_quit_done(&s));
		if (cut < 15) {
			r = smtp_server(&s, (const uint8_t *)tail, sizeof(tail) - 1, scratch);
			CHECK(r.v == SMTP_PASS && r.n == 15 && smtp_quit_done(&s));
		}
		CHECK_EQ(smtp_pending(&s), 0);
	}

	/* A refused QUIT (a 5xx, or a 421 that is not 221) ends nothing here. */
	s = session(SMTP_LISTEN_PLAIN, true);
	smtp_server(&s, (const uint8_t *)G, sizeof(G) - 1, scratch);
	smtp_client(&s, (const uint8_t *)"QUIT\r\n", 6);
	r = smtp_server(&s, (const uint8_t *)"500 no\r\n", 8, scratch);
	CHECK(r.v == SMTP_PASS && !smtp_quit_done(&s));
	smtp_client(&s, (const uint8_t *)"QUIT\r\n", 6);
	r = smtp_server(&s, (const uint8_t *)"250 stay\r\n", 10, scratch);
	CHECK(r.v == SMTP_PASS && !smtp_quit_done(&s));
	/* a 221 to NOOP is only a reply */
	smtp_client(&s, (const uint8_t *)"NOOP\r\n", 6);
	r = smtp_server(&s, (const uint8_t *)"221 odd\r\n", 9, scratch);
	CHECK(r.v == SMTP_PASS && !smtp_quit_done(&s));
	/* quit, as spelled by a client a server still reads as QUIT */
	smtp_client(&s, (const uint8_t *)"qUiT\r\n", 6);
	r = smtp_server(&s, (const uint8_t *)"221-a\r\n221 b\r\n", 14, scratch);
	CHECK(r.v == SMTP_PASS && r.n == 14 && smtp_quit_done(&s));
}

int main(void)
{
	test_requiretls();
	test_ehlo_modes();
	test_ehlo_shapes();
	test_starttls_flow();
	test_starttls_refused_ehlo();
	test_starttls_direct();
	test_tls_required();
	test_data();
	test_data_cuts();
	test_smuggling();
	test_benign_bare_lf();
	test_bdat();
	test_bdat_parse();
	test_bdat_malformed();
	test_auth();
	test_auth_long();
	test_long_lines();
	test_bad_chars();
	test_malformed_replies();
	test_long_replies();
	test_unsolicited();
	test_queue_full();
	test_setup_paths();
	test_setup_then_relay();
	test_setup_tls_pending();
	test_spelled_data();
	test_spelled_ehlo();
	test_spelled_helo();
	test_spelled_starttls();
	test_spelled_auth();
	test_spelled_bdat();
	test_spelled_open_verbs();
	test_identity_commands();
	test_ehlo_identity();
	test_bdat_cap();
	test_whole_replies();
	test_dead_is_final();
	test_xclient_flow();
	test_xclient_helo();
	test_xclient_later_ehlo();
	test_xclient_before_ehlo();
	test_xclient_refused();
	test_xclient_starttls_upstream();
	test_xtext_every_byte();
	test_xtext_bounds();
	test_xclient_line();
	test_quit_done();
	return unit_done("test_smtp");
}
