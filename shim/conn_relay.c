/*
 * conn_relay: the RELAY phase (the client's bytes judged by the SMTP
 * layer and forwarded, the upstream's replies judged and delivered, a
 * STARTTLS from the client switching the listen hop in place) and the
 * FINAL one (the last reply flushed, then a lingering close).
 */
#include "conn_int.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "upxclient.h"

static uint8_t *unseen_at(struct pump *p)
{
	return p->b->data + p->b->off + p->b->fwd;
}

/* One SMTP verdict on the client's bytes. */
static int client_verdict(struct conn *c, struct smtp_result r)
{
	struct pump *p = &c->c2u;
	struct fail f;

	switch (r.v) {
	case SMTP_PASS:
		p->b->fwd += (uint32_t)r.n;
		return 1;
	case SMTP_REPLY:
		buf_cut(p->b, r.n);
		if (r.reply_len > 0 && pump_insert(&c->u2c, r.reply, r.reply_len) < 0)
			return fail_now(c, R_NO_MEMORY, NULL);
		return 1;
	case SMTP_STARTTLS:
		buf_cut(p->b, r.n);
		if (pump_unseen(p) > 0)
			return close_now(c, R_CL_INJECTION, NULL);
		if (pump_insert(&c->u2c, r.reply, r.reply_len) < 0)
			return fail_now(c, R_NO_MEMORY, NULL);
		cl_enter(c, CL_STARTTLS);
		return 1;
	case SMTP_UP_EHLO:
	case SMTP_UP_XCLIENT:
		if (upxclient_send(p, &c->smtp, r.v, c->svc->ehlo, c->svc->ehlo_len,
		    &c->peer.sa, &f) < 0)
			return conn_fail(c, &f);
		return 1;
	case SMTP_CLOSE:
		return fail_smtp(c, R_CL_SMTP, &r);
	default:
		c->c2u_more = r.v == SMTP_MORE;
		return 0;
	}
}

/* Hand the client's new bytes to the SMTP layer. */
static int client_parse(struct conn *c)
{
	struct pump *p = &c->c2u;
	size_t owed = smtp_pending(&c->smtp);
	int progress = 0, r = 0;

	while (c->cl_state == CL_READY && pump_unseen(p) > 0) {
		/* Room for a reply of the shim's own, which keeps its place. */
		if (pump_room(&c->u2c) < 128)
			break;
		c->c2u_more = false;
		r = client_verdict(c, smtp_client(&c->smtp, unseen_at(p), pump_unseen(p)));
		if (r <= 0 || c->phase != PH_RELAY)
			break;
		progress = 1;
	}
	if (r < 0 || c->phase != PH_RELAY)
		return r;
	if (owed == 0 && smtp_pending(&c->smtp) > 0)
		owe(c);
	return progress;
}

/*
 * The upstream answered QUIT with 221 and closes next: the session ends
 * as it would on its FIN, without waiting a wake-up for it. The client
 * gets the 221 first: the upstream's FIN wakes the upstream's process,
 * which may take this CPU before the reply is out. Then the upstream gets
 * its close_notify (TLS) and FIN, and the client its own close_notify and
 * FIN (final_turn, which also sends what this write could not, and meets
 * again an error it met). Nothing either side sends after QUIT is
 * relayed.
 */
static int quit_done(struct conn *c)
{
	struct fail f;

	(void)pump_write(&c->u2c, &c->cl);	/* an error recurs in final_turn */
	(void)ep_shutdown(&c->up, false);
	fail_set(&f, R_NONE, NULL);
	f.reply = NO_REPLY;
	return conn_fail(c, &f);
}

/* Hand the upstream's new bytes to the SMTP layer. */
static int server_parse(struct conn *c)
{
	struct pump *p = &c->u2c;
	struct smtp_result r;
	int progress = 0;

	/* A rewritten EHLO reply may grow a little: wait for room while
	 * approved bytes drain, but never when only unexamined bytes fill the
	 * buffer (they must be examined to be refused). */
	while (c->cl_state == CL_READY && pump_unseen(p) > 0 &&
	    (pump_room(p) >= 64 || pump_approved(p) == 0)) {
		r = smtp_server(&c->smtp, unseen_at(p), pump_unseen(p), c->w->scratch);
		switch (r.v) {
		case SMTP_PASS:
			p->b->fwd += (uint32_t)r.n;
			if (smtp_quit_done(&c->smtp))
				return quit_done(c);
			break;
		case SMTP_REPLY:
			buf_cut(p->b, r.n);
			if (r.reply_len > 0 && buf_insert(p->b, r.reply, r.reply_len) < 0)
				return fail_now(c, R_UP_EHLO_TOO_LONG, NULL);
			break;
		case SMTP_REFUSE:
			return fail_smtp(c, R_UP_XCLIENT, &r);
		case SMTP_CLOSE:
			return fail_smtp(c, R_UP_SMTP, &r);
		default:
			return progress;
		}
		progress = 1;
	}
	return progress;
}

static const char *err_text(const struct endpoint *e)
{
	return e->err != 0 ? strerror(e->err) : NULL;
}

/*
 * A read failed (often a reset after the peer closed). If everything the
 * other side had to say was delivered and it has gone, the session is
 * complete; otherwise it broke.
 */
static int lost(struct conn *c, const struct pump *toward, const struct endpoint *peer,
    enum reason why)
{
	if (toward->eof && peer->shut)
		return close_now(c, R_NONE, NULL);
	return close_now(c, why, err_text(peer));
}

/* A client's first bytes are a TLS handshake record: it expected implicit
 * TLS here. No SMTP reply can reach it; say so in the log. */
static bool speaks_tls(const struct conn *c)
{
	const uint8_t *p = c->c2u.b->data + c->c2u.b->off;

	return c->cl.ssl == NULL && c->c2u.b->len - c->c2u.b->off >= 2 &&
	    p[0] == 0x16 && p[1] == 0x03;
}

/*
 * Writing to the upstream or reading from it failed: it closed or reset,
 * often right after a reply the client has not had yet (a 421 in the
 * middle of a body). What it said before going is read and relayed
 * first, and the session ends cleanly (FINAL lingers on the client, so no
 * reset loses that reply), with the shim's own 421 only where the
 * upstream's last words were no 421 (nor any reply that came now).
 */
static int up_failed(struct conn *c)
{
	size_t before = pump_approved(&c->u2c);
	struct fail f;
	int r, i;

	/* Its last bytes may be in since the last wake-up: look now. */
	if (c->up.rd_wait == EV_READ)
		c->up.rd_wait = 0;
	for (i = 0; i < 16 && !c->u2c.eof && pump_can_read(&c->u2c); i++)
		if ((r = pump_read(&c->u2c, &c->up)) <= 0)
			break;
	if ((r = server_parse(c)) < 0 || c->phase != PH_RELAY)
		return r < 0 ? r : 1;
	fail_set(&f, R_UP_LOST, err_text(&c->up));
	f.reply = pump_approved(&c->u2c) > before || smtp_upstream_closing(&c->smtp) ?
	    NO_REPLY : reason_reply(R_UP_GONE);
	return conn_fail(c, &f);
}

/* The client's bytes: read, judge, forward. */
static int relay_up(struct conn *c, int *moved)
{
	int progress = 0, r;

	if (c->cl_state == CL_READY && pump_can_read(&c->c2u)) {
		r = pump_read(&c->c2u, &c->cl);
		if (r == PUMP_NOMEM)
			return fail_now(c, R_NO_BUFFER, NULL);
		if (r == PUMP_ERROR)
			return lost(c, &c->u2c, &c->cl, R_CL_LOST);
		if (r > 0 && c->c2u.in == (uint64_t)r && speaks_tls(c))
			return close_now(c, R_CL_SPEAKS_TLS, NULL);
		progress |= r > 0;
	}
	if ((r = client_parse(c)) < 0 || c->phase != PH_RELAY)
		return r < 0 ? r : 1;
	progress |= r;
	r = pump_write(&c->c2u, &c->up);
	if (r == PUMP_ERROR)
		return up_failed(c);
	/* The wait for a reply runs from the last byte the upstream took: a
	 * body it still reads (slowly, through full buffers) is progress. */
	if (r > 0 && smtp_pending(&c->smtp) > 0)
		c->owed_since = ev_now(c->w->loop);
	*moved |= r > 0;
	return progress;
}

/* The upstream's bytes: read, judge, deliver. */
static int relay_down(struct conn *c, int *moved)
{
	int progress = 0, r;

	if (pump_can_read(&c->u2c)) {
		r = pump_read(&c->u2c, &c->up);
		if (r == PUMP_NOMEM)
			return close_now(c, R_NO_BUFFER, NULL);
		if (r == PUMP_ERROR)
			return c->c2u.eof && c->up.shut ? close_now(c, R_NONE, NULL) : up_failed(c);
		if (r > 0)
			c->owed_since = ev_now(c->w->loop);
		*moved |= r > 0;
	}
	if ((r = server_parse(c)) < 0 || c->phase != PH_RELAY)
		return r < 0 ? r : 1;
	progress |= r;
	if (c->cl_state != CL_HANDSHAKE) {
		r = pump_write(&c->u2c, &c->cl);
		if (r == PUMP_ERROR)
			return close_now(c, R_CL_LOST, err_text(&c->cl));
		*moved |= r > 0;
	}
	return progress;
}

/*
 * Only bytes that get somewhere count as activity for timeout_idle: a
 * client dribbling a command line that never ends (slowloris) moves
 * nothing, and is closed when the idle time is up.
 */
static int relay_io(struct conn *c)
{
	int moved = 0, p1, p2;

	if ((p1 = relay_up(c, &moved)) < 0 || c->phase != PH_RELAY)
		return p1;
	if ((p2 = relay_down(c, &moved)) < 0 || c->phase != PH_RELAY)
		return p2;
	if (moved)
		touch(c);
	return p1 | p2 | moved;
}

int relay_turn(struct conn *c)
{
	int progress = 0, r;

	if (c->cl_state == CL_HANDSHAKE) {
		if ((r = client_handshake(c)) < 0)
			return r;
		progress |= r;
	} else if (c->cl_state == CL_STARTTLS) {
		if ((r = client_starttls(c)) < 0)
			return r;
		progress |= r;
	}
	if ((r = relay_io(c)) < 0 || c->phase != PH_RELAY)
		return r;
	progress |= r;
	/* The upstream left while the client still waits for replies. */
	if (c->u2c.eof && c->cl_state == CL_READY && pump_approved(&c->u2c) == 0 &&
	    (pump_unseen(&c->u2c) > 0 || smtp_pending(&c->smtp) > 0))
		return fail_now(c, R_UP_GONE, NULL);
	if (c->cl_state == CL_READY) {
		progress |= pump_finish(&c->c2u, &c->up, c->c2u_more,
		    c->u2c.eof && c->cl.shut);
		progress |= pump_finish(&c->u2c, &c->cl, true,
		    c->c2u.eof && c->up.shut);
	}
	if (c->c2u.eof && c->u2c.eof && c->up.shut && c->cl.shut)
		return smtp_mid_message(&c->smtp) ? close_now(c, R_CL_LOST,
		    "the client ended its side in the middle of a message") :
		    close_now(c, R_NONE, NULL);
	return progress;
}

/* ---- the end ---- */

/* Read and drop the client's bytes until it closes too. */
static int linger(struct conn *c)
{
	uint8_t sink[4096];
	ssize_t r;
	int i;

	for (i = 0; i < 16 && c->cl.rd_wait == 0; i++) {
		r = ep_read(&c->cl, sink, sizeof(sink));
		if (r == EP_AGAIN)
			return 0;
		if (r <= 0)
			return close_now(c, c->why, c->detail);
	}
	return 0;
}

/* The last reply goes out, then the session ends as decided. */
int final_turn(struct conn *c)
{
	int r;

	if (c->cl_state == CL_HANDSHAKE)
		return client_handshake(c);
	if (c->cl.shut)
		return linger(c);
	r = pump_write(&c->u2c, &c->cl);
	if (r == PUMP_ERROR)
		return close_now(c, c->why, c->detail);
	if (pump_approved(&c->u2c) > 0 || c->cl.wr_wait != 0)
		return r > 0;
	r = ep_shutdown(&c->cl, true);
	if (r == EP_AGAIN)
		return 0;
	if (r == EP_ERROR)
		return close_now(c, c->why, c->detail);
	c->cl.rd_wait = 0;
	set_deadline(c, LINGER_MS < c->svc->svc->timeout_handshake_ms ?
	    LINGER_MS : c->svc->svc->timeout_handshake_ms);
	return 1;
}
