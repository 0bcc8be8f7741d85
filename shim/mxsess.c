/* mxsess: the outbound relay's session (mxsess.h). */
#include "mxsess_int.h"

void mx_set_timer(struct mxsess *s, uint32_t ms)
{
	ev_timer_stop(s->w->loop, &s->timer);
	ev_timer_set(&s->timer, ms / 1000.0, 0.);
	ev_timer_start(s->w->loop, &s->timer);
}

/* Client activity pushes timeout_idle back (at most once a second: the
 * timer heap is not touched for every read of a body). */
static void touch(struct mxsess *s)
{
	ev_tstamp now = ev_now(s->w->loop);

	if (now - s->touched < 1.0)
		return;
	s->touched = now;
	mx_set_timer(s, s->svc->svc->timeout_idle_ms);
}

int mx_reply(struct mxsess *s, const char *r, size_t n)
{
	if (pump_insert(&s->cout, r, n) < 0)
		return -1;
	return 0;
}

int mx_say(struct mxsess *s, const char *r)
{
	return mx_reply(s, r, strlen(r));
}

/* The RCPT's answer is in: the client may go on. */
int mx_answered(struct mxsess *s)
{
	s->phase = PH_CMD;
	mx_set_timer(s, s->svc->svc->timeout_idle_ms);
	return 1;
}

static void sess_close(struct mxsess *s, enum reason why, const char *detail);

/* Commands out of the client's bytes, one at a time: a command that
 * waits for the MX holds the ones pipelined behind it. */
static int client_parse(struct mxsess *s)
{
	int progress = 0, r;

	while (s->cl_state == CL_READY && s->phase == PH_CMD && pump_unseen(&s->cin) > 0 &&
	    pump_room(&s->cout) >= 1024) {
		const char *p = (const char *)s->cin.b->data + s->cin.b->off + s->cin.b->fwd;
		size_t len = pump_unseen(&s->cin);
		const char *nl = memchr(p, '\n', len);

		if (s->skip > 0) {      /* the chunk of a refused BDAT */
			len = len < s->skip ? len : (size_t)s->skip;
			buf_cut(s->cin.b, len);
			s->skip -= len;
			touch(s);
			progress = 1;
			continue;
		}
		if (nl == NULL) {
			if (len >= SMTP_LINE_MAX)
				return mx_close_after(s, "500 5.5.2 Line too long\r\n");
			break;
		}
		len = (size_t)(nl - p) + 1;
		if (len > SMTP_LINE_MAX) {
			return mx_close_after(s, "500 5.5.2 Line too long\r\n");
		}
		r = mx_command(s, p, len);
		if (r == -2) {
			sess_close(s, R_CL_INJECTION, NULL);
			return GONE;
		}
		if (r < 0 && s->magic == MX_MAGIC) {
			sess_close(s, R_NO_MEMORY, NULL);
			return GONE;
		}
		if (s->cin.b != NULL)
			buf_cut(s->cin.b, len);
		/* A command the shim answered itself is activity too. */
		if (s->phase == PH_CMD && s->cl_state == CL_READY)
			touch(s);
		progress = 1;
	}
	return progress;
}

/* The body goes to the MX as it is, up to and with its CRLF.CRLF. */
static int body_scan(struct mxsess *s)
{
	const char *why = NULL;
	size_t n = 0;
	int r;

	if (s->cl_state != CL_READY || s->phase != PH_BODY || pump_unseen(&s->cin) == 0)
		return 0;
	r = route_body_scan(&s->body, s->cin.b->data + s->cin.b->off + s->cin.b->fwd,
	    pump_unseen(&s->cin), &n, &why);
	if (r == ROUTE_BODY_BAD) {
		/* The MX never sees an end: it drops the partial message. What
		 * the client sent from there on is neither body nor commands. */
		s->tx_why = R_CL_SMTP;
		snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
		mx_up_close(s, false);
		mx_tx_end(s);
		buf_cut(s->cin.b, pump_unseen(&s->cin));
		s->phase = PH_WAIT;
		return mx_close_after(s, "554 5.5.2 Bare CR or LF around end-of-data refused\r\n");
	}
	if (s->discard)
		buf_cut(s->cin.b, n);
	else
		s->cin.b->fwd += (uint32_t)n;
	s->body_bytes += n;
	if (n > 0 && r != ROUTE_BODY_END)
		touch(s);
	if (r == ROUTE_BODY_END && s->discard) {
		if (mx_body_dropped(s) < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return GONE;
		}
		return 1;
	}
	if (r == ROUTE_BODY_END) {
		s->phase = PH_WAIT;
		mx_set_timer(s, s->svc->svc->timeout_reply_ms);
	}
	return n > 0;
}

/* ---- the session ---- */

static void sess_close(struct mxsess *s, enum reason why, const char *detail)
{
	struct worker *w = s->w;

	if (s->tx) {
		if (s->tx_why == R_NONE && !s->delivered)
			s->tx_why = why;
		mx_tx_end(s);
	} else if (s->ntx == 0 || why != R_NONE) {
		mx_log_tx(s, why, detail);
	}
	mx_up_close(s, false);
	verify_session_free(&s->verify);
	ep_close(&s->cl, w->loop);
	pump_free(&s->cin);
	pump_free(&s->cout);
	ev_timer_stop(w->loop, &s->timer);
	ev_idle_stop(w->loop, &s->again);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->mx_live = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	if (w->active != NULL)
		metrics_gauge(w->active, -1);
	if (--s->svc->gen->refs == 0 && s->svc->gen->retired)
		generation_free(s->svc->gen);
	s->magic = 0;
	free(s);
	w->nconns--;
	if (w->on_conn_done != NULL)
		w->on_conn_done(w);
}

static int greet(struct mxsess *s)
{
	char name[300], out[400];
	int n;

	mx_helo_name(s, name, sizeof(name));
	s->greeted = true;
	/* Never an open relay: the sending MTA is known by its address. */
	if (!config_cidrs_match(&s->svc->svc->relay_from, &s->peer.sa)) {
		n = snprintf(out, sizeof(out), "554 5.7.1 %s relaying denied\r\n", name);
		mx_log_tx(s, R_RELAY_DENIED, NULL);
		(void)mx_reply(s, out, (size_t)n);
		return mx_close_after(s, NULL);
	}
	n = snprintf(out, sizeof(out), "220 %s ESMTP mailshim\r\n", name);
	mx_set_timer(s, s->svc->svc->timeout_idle_ms);
	return mx_reply(s, out, (size_t)n) < 0 ? -1 : 1;
}

static int client_hs(struct mxsess *s)
{
	struct fail f;
	int r = hs_step(&s->cl, false, s->svc->svc->listen_min_version, &f);

	if (r == 0)
		return 0;
	if (r < 0) {
		sess_close(s, f.why, f.detail);
		return GONE;
	}
	s->cl_ver = tls_version(s->cl.ssl);
	s->cl_cipher = tls_cipher(s->cl.ssl);
	s->cl_state = CL_READY;
	/* What the client said before TLS is forgotten (RFC 3207 4.2). */
	s->helo = false;
	if (!s->greeted) {
		if (greet(s) < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return GONE;
		}
		return 1;
	}
	mx_set_timer(s, s->svc->svc->timeout_idle_ms);
	return 1;
}

static int client_io(struct mxsess *s)
{
	int progress = 0, r;

	switch (s->cl_state) {
	case CL_HS:
		return client_hs(s);
	case CL_STARTTLS:
		r = pump_write(&s->cout, &s->cl);
		if (r == PUMP_ERROR) {
			sess_close(s, R_CL_LOST, NULL);
			return GONE;
		}
		if (pump_approved(&s->cout) > 0)
			return r > 0;
		pump_free(&s->cin);
		if (ep_tls(&s->cl, tls_new_listen(&s->svc->tls)) < 0) {
			sess_close(s, R_CL_TLS_START, NULL);
			return GONE;
		}
		hs_watch(&s->cl);
		s->cl_state = CL_HS;
		s->cl.rd_wait = s->cl.wr_wait = 0;
		mx_set_timer(s, s->svc->svc->timeout_handshake_ms);
		return 1;
	case CL_LINGER: {
		uint8_t sink[4096];
		ssize_t n = ep_read(&s->cl, sink, sizeof(sink));
		if (n == EP_AGAIN)
			return 0;
		if (n <= 0) {
			sess_close(s, R_NONE, NULL);
			return GONE;
		}
		return 1;
	}
	default:
		break;
	}
	if (s->cl_state == CL_READY && pump_can_read(&s->cin)) {
		r = pump_read(&s->cin, &s->cl);
		if (r == PUMP_ERROR || r == PUMP_NOMEM) {
			sess_close(s, r == PUMP_NOMEM ? R_NO_BUFFER : R_CL_LOST,
			    s->cl.err ? strerror(s->cl.err) : NULL);
			return GONE;
		}
		progress |= r > 0;
	}
	if ((r = body_scan(s)) < 0)
		return r;
	progress |= r;
	if ((r = client_parse(s)) < 0)
		return r;
	progress |= r;
	r = pump_write(&s->cout, &s->cl);
	if (r == PUMP_ERROR) {
		sess_close(s, R_CL_LOST, s->cl.err ? strerror(s->cl.err) : NULL);
		return GONE;
	}
	progress |= r > 0;
	if (s->cl_state == CL_CLOSING && pump_approved(&s->cout) == 0) {
		if (ep_shutdown(&s->cl, true) == EP_AGAIN)
			return progress;
		s->cl_state = CL_LINGER;
		s->cl.rd_wait = 0;
		mx_set_timer(s, LINGER_MS);
		return 1;
	}
	/* The client left: what it had said is all there is. */
	if (s->cl_state == CL_READY && s->cin.eof && s->phase == PH_CMD &&
	    pump_unseen(&s->cin) == 0 && pump_approved(&s->cout) == 0) {
		sess_close(s, R_NONE, NULL);
		return GONE;
	}
	if (s->cl_state == CL_READY && s->cin.eof && s->phase == PH_BODY) {
		sess_close(s, R_CL_LOST, "client left during DATA");
		return GONE;
	}
	return progress;
}

static int cl_events(struct mxsess *s)
{
	struct endpoint *e = &s->cl;

	switch (s->cl_state) {
	case CL_HS:
		return ep_want(e, false, true);
	case CL_STARTTLS:
	case CL_CLOSING:
		return ep_want(e, false, true);
	case CL_LINGER:
		return ep_want(e, true, false);
	default:
		return ep_want(e, pump_can_read(&s->cin), pump_approved(&s->cout) > 0);
	}
}

static int up_events(struct mxsess *s)
{
	struct endpoint *e = &s->up;

	switch (s->up_state) {
	case U_NONE:
	case U_DNS:
		return 0;
	case U_CONNECT:
	case U_HS:
		return ep_want(e, false, true);
	default:
		return ep_want(e, pump_can_read(&s->uin),
		    pump_approved(&s->uout) > 0 || pump_approved(&s->cin) > 0);
	}
}

void mx_step(struct mxsess *s)
{
	int i, r = 1;

	for (i = 0; i < TURNS && r > 0; i++) {
		int a = client_io(s), b;
		if (a == GONE)
			return;
		b = mx_up_io(s);
		if (b < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
		r = a | b;
	}
	if (r > 0 || ep_pending(&s->cl) || (s->up.fd >= 0 && ep_pending(&s->up)))
		ev_idle_start(s->w->loop, &s->again);
	pump_trim(&s->cin);
	pump_trim(&s->cout);
	pump_trim(&s->uin);
	pump_trim(&s->uout);
	ep_watch(&s->cl, s->w->loop, cl_events(s));
	if (s->up.fd >= 0)
		ep_watch(&s->up, s->w->loop, up_events(s));
}

/* A DNS answer came in and ran its step outside mx_step: a step that ran
 * out of memory (-1) ends the session, as it would inside. */
void mx_resume(struct mxsess *s, int r)
{
	if (r < 0) {
		sess_close(s, R_NO_MEMORY, NULL);
		return;
	}
	mx_step(s);
}

static void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)io - offsetof(struct mxsess, cl.io));

	(void)loop;
	assert(s->magic == MX_MAGIC);
	ep_ready(&s->cl, revents);
	mx_step(s);
}

void mx_up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)io - offsetof(struct mxsess, up.io));

	(void)loop;
	assert(s->magic == MX_MAGIC);
	ep_ready(&s->up, revents);
	mx_step(s);
}

static void again_cb(struct ev_loop *loop, ev_idle *idle, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)idle - offsetof(struct mxsess, again));

	(void)revents;
	assert(s->magic == MX_MAGIC);
	ev_idle_stop(loop, idle);
	mx_step(s);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)t - offsetof(struct mxsess, timer));
	int r;

	(void)loop;
	(void)revents;
	assert(s->magic == MX_MAGIC);
	if (s->cl_state != CL_READY) {
		sess_close(s, s->cl_state == CL_HS ? R_CL_HANDSHAKE_TIMEOUT : R_NONE, NULL);
		return;
	}
	if (s->phase == PH_WAIT) {
		r = mx_up_broke(s, s->up_state == U_CONNECT ? R_UP_CONNECT_TIMEOUT :
		    s->up_state >= U_GREET && s->up_state <= U_EHLO2 ? R_UP_HANDSHAKE_TIMEOUT :
		    R_REPLY_TIMEOUT, "timeout");
		if (r < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
		mx_step(s);
		return;
	}
	if (mx_close_after(s, "421 4.4.2 Idle timeout, closing\r\n") > 0) {
		if (s->tx)
			s->tx_why = R_IDLE_TIMEOUT;
		mx_tx_end(s);
		mx_step(s);
	}
}

void mxsess_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen)
{
	const struct service *sv = svc->svc;
	struct mxsess *s = calloc(1, sizeof(*s));
	int r;

	if (s == NULL) {
		log_msg(LEVEL_WARN, "out of memory: dropping a client of service %s", sv->name);
		close(fd);
		return;
	}
	s->magic = MX_MAGIC;
	s->id = w->next_id++;
	svc->gen->refs++;
	s->w = w;
	s->svc = svc;
	s->start = ev_now(w->loop);
	s->cl_ver = s->cl_cipher = s->up_ver = s->up_auth = "none";
	memcpy(&s->peer, peer, peerlen < sizeof(s->peer) ? peerlen : sizeof(s->peer));
	s->plain_allowed = config_plain_allowed(sv, peer);
	ep_init(&s->cl, fd);
	ev_init(&s->cl.io, cl_io_cb);
	ep_init(&s->up, -1);
	ev_init(&s->timer, timer_cb);
	ev_idle_init(&s->again, again_cb);
	s->next = w->mx_live;
	if (w->mx_live != NULL)
		w->mx_live->prev = s;
	w->mx_live = s;
	w->nconns++;
	if (w->active != NULL)
		metrics_gauge(w->active, 1);
	if (sv->listen_tls == MODE_IMPLICIT) {
		if (ep_tls(&s->cl, tls_new_listen(&svc->tls)) < 0) {
			sess_close(s, R_CL_TLS_START, NULL);
			return;
		}
		hs_watch(&s->cl);
		s->cl_state = CL_HS;
		mx_set_timer(s, sv->timeout_handshake_ms);
	} else {
		s->cl_state = CL_READY;
		r = greet(s);
		if (r < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
	}
	mx_step(s);
}

void mxsess_close_all(struct worker *w)
{
	while (w->mx_live != NULL)
		sess_close(w->mx_live, R_SHUTDOWN, NULL);
}
