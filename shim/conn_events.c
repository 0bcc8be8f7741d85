/*
 * conn_events: a session's socket events and timer. A wake-up runs the
 * session's turns (at most TURNS, then others get theirs), then arms each
 * socket for exactly what the session waits for now.
 */
#include "conn_int.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static struct conn *conn_of_timer(ev_timer *t)
{
	struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));

	assert(c->magic == CONN_MAGIC);
	return c;
}

static int conn_turn(struct conn *c)
{
	switch (c->phase) {
	case PH_OPEN:
		return open_turn(c);
	case PH_RELAY:
		return relay_turn(c);
	default:
		return final_turn(c);
	}
}

/* ---- events ---- */

/*
 * What the client's socket waits for. A write event is asked for only
 * when it can make progress: bytes to deliver, or an end to pass on that
 * nothing holds back. A half-closed session whose last bytes wait for a
 * reply waits on the upstream's read event, never spins on writability.
 */
static int cl_events(struct conn *c)
{
	struct endpoint *e = &c->cl;

	if (c->cl_state == CL_PROXY)
		return ep_want(e, true, false);
	if (c->cl_state == CL_HANDSHAKE)
		return ep_want(e, false, true);
	switch (c->phase) {
	case PH_OPEN:
		return 0;
	case PH_FINAL:
		return e->shut ? ep_want(e, true, false) : ep_want(e, false, true);
	default:
		break;
	}
	if (c->cl_state == CL_STARTTLS)
		return ep_want(e, false, pump_approved(&c->u2c) > 0);
	return ep_want(e, pump_can_read(&c->c2u), pump_wants_write(&c->u2c, e, true));
}

static int up_events(struct conn *c)
{
	struct endpoint *e = &c->up;

	switch (c->up_state) {
	case UP_CONNECTING:
		if (c->up_unwatched && c->cl_state == CL_HANDSHAKE)
			return 0;
		return ep_want(e, false, true);
	case UP_HANDSHAKE:
		return ep_want(e, false, true);
	case UP_SETUP:
		return ep_want(e, true, pump_approved(&c->c2u) > 0);
	case UP_READY:
		if (c->phase != PH_RELAY)
			return 0;
		return ep_want(e, pump_can_read(&c->u2c),
		    pump_wants_write(&c->c2u, e, c->c2u_more));
	default:
		return 0;
	}
}

/* Arm each socket for exactly what the session waits for now. */
static void conn_arm(struct conn *c)
{
	ep_watch(&c->cl, c->w->loop, cl_events(c));
	if (c->up.fd >= 0)
		ep_watch(&c->up, c->w->loop, up_events(c));
}

static void again_add(struct conn *c)
{
	if (c->in_again)
		return;
	c->in_again = true;
	c->next_again = c->w->again;
	c->w->again = c;
	ev_idle_start(c->w->loop, &c->w->again_w);
}

void conn_step(struct conn *c)
{
	int i, r = 1;

	for (i = 0; i < TURNS && r > 0; i++) {
		r = conn_turn(c);
		if (r < 0)
			return;
	}
	if (r > 0)
		again_add(c);
	/* An idle session holds no relay buffer. */
	pump_trim(&c->c2u);
	pump_trim(&c->u2c);
	conn_arm(c);
}

void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, cl.io));

	(void)loop;
	assert(c->magic == CONN_MAGIC);
	ep_ready(&c->cl, revents);
	conn_step(c);
}

void up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, up.io));

	(void)loop;
	assert(c->magic == CONN_MAGIC);
	ep_ready(&c->up, revents);
	conn_step(c);
}

/* The upstream owes a reply: its wait is bounded by timeout_reply. */
static bool reply_owed(const struct conn *c)
{
	return c->phase == PH_RELAY && c->cl_state == CL_READY &&
	    c->up_state == UP_READY && smtp_pending(&c->smtp) > 0;
}

static ev_tstamp due(const struct conn *c)
{
	if (reply_owed(c))
		return c->owed_since + c->svc->svc->timeout_reply_ms / 1000.0;
	return c->deadline;
}

/*
 * The timer came while the client's handshake runs beside an unwatched
 * connect: a connect that is done gives the client what is left of its
 * timeout_handshake, counted from the connect's start as when watched.
 */
static int unwatched_timeout(struct conn *c)
{
	ev_tstamp until = c->connect_start + c->svc->svc->timeout_handshake_ms / 1000.0;
	int err, r = connect_probe(c, &err);

	if (r < 0)
		return upstream_retry(c, R_UP_CONNECT, strerror(err));
	if (r == 0 || until <= ev_now(c->w->loop))
		return close_now(c, R_CL_HANDSHAKE_TIMEOUT, NULL);
	if (upstream_connected(c) < 0)
		return GONE;
	if (c->phase == PH_OPEN)
		set_deadline_at(c, until);
	return 1;
}

static int conn_timeout(struct conn *c)
{
	switch (c->phase) {
	case PH_OPEN:
		if (c->cl_state == CL_PROXY)
			return close_now(c, R_PROXY_TIMEOUT, NULL);
		if (c->up_unwatched && c->cl_state == CL_HANDSHAKE &&
		    c->up_state == UP_CONNECTING)
			return unwatched_timeout(c);
		if (c->cl_state != CL_READY)
			return close_now(c, R_CL_HANDSHAKE_TIMEOUT, NULL);
		if (c->up_state == UP_CONNECTING)
			return upstream_retry(c, R_UP_CONNECT_TIMEOUT, NULL);
		if (c->up_state == UP_RESOLVING)
			return fail_now(c, R_UP_RESOLVE, "DNS lookup timeout");
		return fail_now(c, R_UP_HANDSHAKE_TIMEOUT, NULL);
	case PH_RELAY:
		if (c->cl_state != CL_READY)
			return close_now(c, R_CL_HANDSHAKE_TIMEOUT, NULL);
		/* Replies go out whole (smtp_server.c): a half-read one has sent
		 * nothing yet, so the client can still be told. */
		if (reply_owed(c))
			return fail_now(c, R_REPLY_TIMEOUT, NULL);
		return close_now(c, R_IDLE_TIMEOUT, NULL);
	default:
		return close_now(c, c->why, c->detail);
	}
}

/*
 * A reply's time is up while the upstream may still be reading what it
 * was sent (a large body through full socket buffers): bytes that left
 * the socket's send queue since the last look are progress, and the wait
 * starts again. A queue that does not move is a stalled upstream, timed
 * out at the next expiry. One ioctl, only when the timer fires.
 */
static bool up_still_reading(struct conn *c)
{
	int q;

	if (ioctl(c->up.fd, SIOCOUTQ, &q) < 0 || q <= 0 || (uint32_t)q == c->outq_seen)
		return false;
	c->outq_seen = (uint32_t)q;
	c->owed_since = ev_now(c->w->loop);
	return true;
}

void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct conn *c = conn_of_timer(t);
	ev_tstamp left = due(c) - ev_now(loop);

	(void)revents;
	if (left <= 0.001 && reply_owed(c) && up_still_reading(c))
		left = due(c) - ev_now(loop);
	if (left > 0.001) {
		t->repeat = left;
		ev_timer_again(loop, t);
		return;
	}
	if (conn_timeout(c) > 0)
		conn_step(c);
}

static void again_cb(struct ev_loop *loop, ev_idle *idle, int revents)
{
	struct worker *w = (struct worker *)((char *)idle - offsetof(struct worker, again_w));
	struct conn *c = w->again, *next;

	(void)revents;
	w->again = NULL;
	ev_idle_stop(loop, idle);
	for (; c != NULL; c = next) {
		next = c->next_again;
		c->in_again = false;
		conn_step(c);
	}
}

void conn_worker_init(struct worker *w)
{
	ev_idle_init(&w->again_w, again_cb);
	log_attach(w->loop);
}
