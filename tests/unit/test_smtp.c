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
	default:
		snprintf(r->end, sizeof(r->end), "client verdict %d", (int)v.v);
		return false;
	}
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
#define TRANSACTION "MAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n"
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
	w.up = "AUTH PLAIN AGEAYg==\r\n";
	w.down = G "235 ok\r\n" READY;
	scenario("auth initial response", SMTP_LISTEN_STARTTLS, true, initial, &w);
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

int main(void)
{
	test_ehlo_modes();
	test_ehlo_shapes();
	test_starttls_flow();
	test_starttls_direct();
	test_tls_required();
	test_data();
	test_data_cuts();
	test_smuggling();
	test_benign_bare_lf();
	test_bdat();
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
	return unit_done("test_smtp");
}
