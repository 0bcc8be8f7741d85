/*
 * smtp_xclient: telling the upstream who the client is, with Postfix's
 * XCLIENT (XCLIENT_README), so that an upstream whose policy depends on
 * the client's address sees the client's and never the shim's. See smtp.h.
 *
 * The exchange runs once per upstream connection, at the client's first
 * EHLO or HELO, which waits in the caller's buffer meanwhile:
 *
 *   shim      EHLO helo_name                        (SMTP_UP_EHLO)
 *   upstream  250-... XCLIENT NAME ADDR PORT PROTO HELO ...
 *   shim      XCLIENT ADDR=... PORT=... PROTO=... [NAME=[UNAVAILABLE]] HELO=...
 *                                                   (SMTP_UP_XCLIENT)
 *   upstream  220 ...        (the server's state is reset: EHLO again)
 *   client's  EHLO or HELO line, unchanged; its reply is relayed as usual
 *
 * Neither reply reaches the client. The shim's own EHLO, rather than the
 * client's sent twice, learns whether XCLIENT is offered: the client's
 * line then passes exactly once, after XCLIENT, and nothing of it has to
 * be kept. A STARTTLS upstream hears it inside TLS (what it offered
 * before TLS counts for nothing, RFC 3207). An upstream whose EHLO reply
 * does not offer XCLIENT with ADDR, PORT, PROTO and HELO, or that answers
 * XCLIENT with anything but 220, gets the session refused: the client
 * gets 421 4.7.0 and never talks to an upstream that takes it for the
 * shim.
 *
 * Decisions XCLIENT_README leaves to the client:
 *  - NAME is [UNAVAILABLE] (the shim looks no names up), sent only when
 *    the upstream lists NAME; LOGIN never (the shim authenticates nobody).
 *  - HELO is the client's argument, xtext-encoded. When it is empty,
 *    longer than SMTP_XCLIENT_HELO_MAX (Postfix refuses longer values) or
 *    would make the line longer than SMTP_XCLIENT_MAX, it is sent as
 *    [UNAVAILABLE] rather than cut: a cut name is a different name, and
 *    the client's own EHLO, which comes right after, gives the upstream
 *    the whole name anyway.
 *  - Later EHLOs (after the listen hop's STARTTLS, or a client that greets
 *    twice) go on alone: XCLIENT attributes hold for the whole session,
 *    and the upstream takes the new HELO name from that EHLO itself.
 *  - Before the exchange only EHLO, HELO, NOOP, RSET and QUIT go on (the
 *    others get 503, as after STARTTLS): no transaction may run while the
 *    upstream still takes the client for the shim.
 */
#include "smtp_int.h"

#include <stdio.h>
#include <string.h>

static const struct text t_xclient_failed =
    TEXT("421 4.7.0 Upstream mail server cannot be told the client's address, try again later\r\n");

static const char unavailable[] = "[UNAVAILABLE]";

static void xclient_enter(struct smtp *s, uint8_t to)
{
	s->xclient = to;
}

void smtp_xclient_on(struct smtp *s)
{
	xclient_enter(s, XC_WANT);
	s->need_ehlo = true;
}

/* ---- the client side ---- */

bool smtp_xclient_pending(const struct smtp *s)
{
	return s->xclient != XC_OFF && s->xclient != XC_DONE;
}

/* The client's EHLO or HELO while the exchange is under way: the step it
 * is at, or wait (the greeting, or the reply to the shim's command, is
 * still owed). */
struct smtp_result smtp_xclient_greet(struct smtp *s)
{
	if (s->qlen)
		return smtp_verdict(SMTP_HOLD, 0);
	if (s->xclient == XC_WANT) {
		smtp_qpush(s, K_XEHLO);
		xclient_enter(s, XC_EHLO);
		return smtp_verdict(SMTP_UP_EHLO, 0);
	}
	smtp_qpush(s, K_XCLIENT);
	xclient_enter(s, XC_SENT);
	return smtp_verdict(SMTP_UP_XCLIENT, 0);
}

/* ---- the upstream's replies ---- */

bool smtp_xclient_owed(const struct smtp *s)
{
	uint8_t k = smtp_qfront(s);

	return k == K_XEHLO || k == K_XCLIENT;
}

static struct smtp_result refuse(struct smtp *s, const char *why)
{
	struct smtp_result r = smtp_die(s, &t_xclient_failed, why);

	r.v = SMTP_REFUSE;
	return r;
}

/* The words after "XCLIENT" on an EHLO keyword line, as a set. */
enum { A_ADDR = 1, A_PORT = 2, A_PROTO = 4, A_HELO = 8, A_NAME = 16 };

static const struct { const char *name; unsigned bit; } attrs[] = {
	{ "ADDR", A_ADDR }, { "PORT", A_PORT }, { "PROTO", A_PROTO },
	{ "HELO", A_HELO }, { "NAME", A_NAME },
};

#define NEEDED (A_ADDR | A_PORT | A_PROTO | A_HELO)

static unsigned attr_bit(const uint8_t *w, size_t n)
{
	for (size_t i = 0; i < sizeof(attrs) / sizeof(attrs[0]); i++)
		if (strlen(attrs[i].name) == n && smtp_same(w, attrs[i].name, n))
			return attrs[i].bit;
	return 0;
}

/* The line t[0..n) (no code, no line end) is "XCLIENT attr...": its set,
 * with 0x100 so that a bare XCLIENT is told from none. */
static unsigned xclient_line(const uint8_t *t, size_t n)
{
	size_t i = 0, w;
	unsigned set = 0x100;

	while (i < n && !smtp_space(t[i]))
		i++;
	if (i != 7 || !smtp_same(t, "XCLIENT", 7))
		return 0;
	while (i < n) {
		while (i < n && smtp_space(t[i]))
			i++;
		for (w = i; i < n && !smtp_space(t[i]); i++)
			;
		set |= attr_bit(t + w, i - w);
	}
	return set;
}

/* What the checked reply p[0..n) offers of XCLIENT (keyword lines only). */
static unsigned offered(const uint8_t *p, size_t n)
{
	unsigned set = 0;

	for (size_t at = 0, end; at < n; at = end) {
		const uint8_t *lf = memchr(p + at, '\n', n - at);
		size_t tend;
		end = (size_t)(lf - p) + 1;
		tend = end - 1;
		if (tend > at + 4 && p[tend - 1] == '\r')
			tend--;
		if (at > 0 && tend > at + 4)
			set |= xclient_line(p + at + 4, tend - at - 4);
	}
	return set;
}

static struct smtp_result ehlo_done(struct smtp *s, const uint8_t *p,
    size_t n, unsigned code)
{
	unsigned set;

	if (code / 100 != 2)
		return refuse(s, "upstream refused the EHLO before XCLIENT");
	set = offered(p, n);
	if (set == 0)
		return refuse(s, "upstream offered no XCLIENT");
	if ((set & NEEDED) != NEEDED)
		return refuse(s, "upstream XCLIENT does not take ADDR, PORT, PROTO and HELO");
	s->xclient_name = (set & A_NAME) != 0;
	xclient_enter(s, XC_READY);
	return smtp_answer(SMTP_REPLY, n, NULL, NULL);
}

/* A reply to the shim's EHLO or XCLIENT, gathered whole at p[0]: dropped
 * (SMTP_REPLY with no reply) or the session is refused. */
struct smtp_result smtp_xclient_reply(struct smtp *s, const uint8_t *p)
{
	size_t n = s->reply_len;
	unsigned code = s->reply_code;
	uint8_t k = smtp_qpop(s);

	smtp_reply_reset(s);
	if (k == K_XEHLO)
		return ehlo_done(s, p, n, code);
	if (code != 220)
		return refuse(s, "upstream refused XCLIENT");
	xclient_enter(s, XC_DONE);
	return smtp_answer(SMTP_REPLY, n, NULL, NULL);
}

/* ---- the XCLIENT line ---- */

size_t smtp_xtext(const uint8_t *in, size_t n, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		uint8_t c = in[i];
		if (c >= 33 && c <= 126 && c != '+' && c != '=') {
			if (o + 1 <= cap)
				out[o] = (char)c;
			o++;
			continue;
		}
		if (o + 3 <= cap) {
			out[o] = '+';
			out[o + 1] = hex[c >> 4];
			out[o + 2] = hex[c & 15];
		}
		o += 3;
	}
	return o;
}

struct out {
	char *p;
	size_t len;
};

static void add(struct out *o, const char *s, size_t n)
{
	if (o->len + n <= SMTP_XCLIENT_MAX)
		memcpy(o->p + o->len, s, n);
	o->len += n;
}

static void adds(struct out *o, const char *s)
{
	add(o, s, strlen(s));
}

static void add_xtext(struct out *o, const uint8_t *s, size_t n)
{
	size_t room = o->len < SMTP_XCLIENT_MAX ? SMTP_XCLIENT_MAX - o->len : 0;

	o->len += smtp_xtext(s, n, room ? o->p + o->len : o->p, room);
}

/* The client's line: "EHLO" or "HELO" (any case) at its start, then white
 * space or its end; the argument is the rest, without the white space
 * around it. False when it is neither. */
static bool greeting(const uint8_t *p, size_t len, bool *ehlo,
    const uint8_t **arg, size_t *arg_len)
{
	const uint8_t *lf = memchr(p, '\n', len);
	size_t end, i = 4;

	if (lf == NULL)
		return false;
	end = (size_t)(lf - p);
	if (end > 0 && p[end - 1] == '\r')
		end--;
	if (end < 4 || (end > 4 && !smtp_space(p[4])))
		return false;
	if (!smtp_same(p, "EHLO", 4) && !smtp_same(p, "HELO", 4))
		return false;
	*ehlo = smtp_same(p, "EHLO", 4);
	while (i < end && smtp_space(p[i]))
		i++;
	while (end > i && smtp_space(p[end - 1]))
		end--;
	*arg = p + i;
	*arg_len = end - i;
	return true;
}

size_t smtp_xclient_line(const struct smtp *s, const uint8_t *p, size_t len,
    const char *addr, bool v6, unsigned port, char *out)
{
	struct out o = { out, 0 };
	const uint8_t *arg;
	size_t arg_len, helo;
	bool ehlo;
	char num[16];

	if (!greeting(p, len, &ehlo, &arg, &arg_len))
		return 0;
	adds(&o, "XCLIENT ADDR=");
	if (v6)
		adds(&o, "IPV6:");
	add_xtext(&o, (const uint8_t *)addr, strlen(addr));
	snprintf(num, sizeof(num), "%u", port & 0xffffu);
	adds(&o, " PORT=");
	adds(&o, num);
	adds(&o, ehlo ? " PROTO=ESMTP" : " PROTO=SMTP");
	if (s->xclient_name) {
		adds(&o, " NAME=");
		adds(&o, unavailable);
	}
	adds(&o, " HELO=");
	helo = smtp_xtext(arg, arg_len, NULL, 0);
	if (arg_len == 0 || arg_len > SMTP_XCLIENT_HELO_MAX ||
	    o.len + helo + 2 > SMTP_XCLIENT_MAX)
		adds(&o, unavailable);
	else
		add_xtext(&o, arg, arg_len);
	adds(&o, "\r\n");
	/* The fixed parts and a numeric address always fit. */
	return o.len <= SMTP_XCLIENT_MAX ? o.len : 0;
}
