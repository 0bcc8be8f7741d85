/*
 * smtp_setup: the session's life (init, the TLS transitions, the queue of
 * commands owed a reply, the verdicts both readers give) and the upstream
 * STARTTLS dialogue, where the shim is the client: greeting, EHLO,
 * STARTTLS, 220, then the handshake (see smtp.h).
 *
 * Decisions the header leaves open:
 *  - After any SMTP_CLOSE both sides keep answering SMTP_CLOSE.
 *  - Bytes behind the upstream's 220 to STARTTLS are refused whether they
 *    come in the same read or later, before the handshake.
 */
#include "smtp_int.h"

#include <string.h>

/* ---- verdicts ---- */

struct smtp_result smtp_verdict(enum smtp_verdict v, size_t n)
{
	struct smtp_result r = { v, n, NULL, 0, NULL };
	return r;
}

struct smtp_result smtp_answer(enum smtp_verdict v, size_t n,
    const struct text *t, const char *reason)
{
	struct smtp_result r = { v, n, t ? t->s : NULL, t ? t->len : 0, reason };
	return r;
}

struct smtp_result smtp_pass(size_t n)
{
	return smtp_verdict(n ? SMTP_PASS : SMTP_MORE, n);
}

struct smtp_result smtp_die(struct smtp *s, const struct text *t,
    const char *reason)
{
	smtp_client_enter(s, C_DEAD);
	smtp_server_enter(s, S_DEAD);
	return smtp_answer(SMTP_CLOSE, 0, t, reason);
}

struct smtp_result smtp_dead(void)
{
	return smtp_answer(SMTP_CLOSE, 0, NULL, "session already closed");
}

/* ---- commands waiting for replies ---- */

void smtp_qpush(struct smtp *s, uint8_t kind)
{
	s->q[(s->qhead + s->qlen) % SMTP_QUEUE] = kind;
	s->qlen++;
}

uint8_t smtp_qfront(const struct smtp *s)
{
	return s->qlen ? s->q[s->qhead] : K_NONE;
}

uint8_t smtp_qpop(struct smtp *s)
{
	uint8_t k = smtp_qfront(s);

	if (s->qlen) {
		s->qhead = (uint8_t)((s->qhead + 1) % SMTP_QUEUE);
		s->qlen--;
	}
	return k;
}

/* ---- policy of the listen hop ---- */

bool smtp_tls_offered(const struct smtp *s)
{
	return s->listen_mode == SMTP_LISTEN_STARTTLS && !s->listen_tls;
}

bool smtp_tls_required(const struct smtp *s)
{
	return smtp_tls_offered(s) && !s->plain_allowed;
}

/* ---- upstream STARTTLS dialogue ---- */

static const struct text
    t_tls_failed = TEXT("421 4.7.0 TLS to the upstream failed, try again later\r\n");

static const char why_injection[] =
    "upstream sent data after its STARTTLS 220 (injection)";

void smtp_setup_enter(struct smtp *s, uint8_t to)
{
	if (s->setup != SETUP_FAILED)
		s->setup = to;
}

static struct smtp_result refuse(struct smtp *s, size_t n, const char *why)
{
	smtp_setup_enter(s, SETUP_FAILED);
	return smtp_answer(SMTP_REFUSE, n, &t_tls_failed, why);
}

static struct smtp_result setup_greeting(struct smtp *s, size_t n,
    unsigned code)
{
	if (code != 220)
		return refuse(s, n, "upstream greeting was not 220");
	smtp_setup_enter(s, SETUP_EHLO);
	return smtp_verdict(SMTP_SEND_EHLO, n);
}

static struct smtp_result setup_ehlo(struct smtp *s, const uint8_t *p,
    size_t n, unsigned code)
{
	if (code / 100 != 2)
		return refuse(s, n, "upstream refused EHLO");
	s->reply_starttls = smtp_offers(p, n, "STARTTLS");
	if (!s->reply_starttls)
		return refuse(s, n, "upstream offered no STARTTLS");
	smtp_setup_enter(s, SETUP_STARTTLS);
	return smtp_verdict(SMTP_SEND_STARTTLS, n);
}

/* Bytes behind the 220 were sent before TLS and would be read as if
 * they came through it. */
static struct smtp_result setup_starttls(struct smtp *s, size_t n,
    unsigned code, size_t len)
{
	if (code != 220)
		return refuse(s, n, "upstream refused STARTTLS");
	if (len > n)
		return refuse(s, n, why_injection);
	smtp_setup_enter(s, SETUP_TLS);
	return smtp_verdict(SMTP_START_TLS, n);
}

static struct smtp_result setup_reply(struct smtp *s, const uint8_t *p,
    size_t len)
{
	int g = smtp_gather(s, p, len);
	size_t n = s->reply_len;
	unsigned code = s->reply_code;

	if (g == G_MORE)
		return smtp_verdict(SMTP_MORE, 0);
	if (g != G_DONE)
		return refuse(s, 0, g == G_BAD ? smtp_why_malformed : smtp_why_long);
	smtp_reply_reset(s);
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
		return len ? refuse(s, 0, why_injection) : smtp_verdict(SMTP_MORE, 0);
	default:
		/* Not a verdict on the upstream: leave the session as it is. */
		return smtp_answer(SMTP_REFUSE, 0, &t_tls_failed,
		    "upstream STARTTLS dialogue out of order");
	}
}

/* ---- the session ---- */

void smtp_init(struct smtp *s, enum smtp_listen listen_mode,
    bool plain_allowed, bool upstream_setup)
{
	/* Zero is where each reader starts: C_CMD, S_REPLY, SETUP_NONE. */
	memset(s, 0, sizeof(*s));
	s->listen_mode = (uint8_t)listen_mode;
	s->plain_allowed = plain_allowed;
	s->listen_tls = listen_mode == SMTP_LISTEN_IMPLICIT;
	if (upstream_setup)
		smtp_setup_enter(s, SETUP_GREETING);
	if (!upstream_setup)
		smtp_qpush(s, K_GREETING);
}

/* What the client said before TLS is forgotten: only EHLO (or HELO) starts
 * a session again. The queue is empty (STARTTLS waited for it). */
void smtp_listen_tls_up(struct smtp *s)
{
	s->listen_tls = true;
	if (s->listen_mode == SMTP_LISTEN_STARTTLS)
		s->need_ehlo = true;
	if (s->cstate == C_TLS)
		smtp_client_enter(s, C_CMD);
}

/* The caller delivers the greeting read before TLS: none is queued. */
void smtp_upstream_tls_up(struct smtp *s)
{
	if (s->setup != SETUP_TLS)
		return;
	smtp_setup_enter(s, SETUP_NONE);
	smtp_server_enter(s, S_REPLY);
	smtp_reply_reset(s);
	s->qhead = 0;
	s->qlen = 0;
}

size_t smtp_pending(const struct smtp *s)
{
	return s->qlen;
}
