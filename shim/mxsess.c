/* mxsess: the outbound relay's session (mxsess.h). */
#include "mxsess_int.h"

static const char *const result_names[] = { "ok", "refused", "error" };

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

void mx_addr_text(const struct sockaddr *a, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)a;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)a;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(s4->sin_port));
	}
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

static void unquote(char *p)
{
	for (; *p != '\0'; p++)
		if (*p == '"' || *p == '\\' || *p == '\n' || *p == '\r')
			*p = '\'';
}

/* One line per transaction (and one for a session that had none). */
static void log_tx(struct mxsess *s, enum reason why, const char *detail)
{
	char line[1400], client[64], words[400] = "", code[64] = "";
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	ev_tstamp from = s->tx ? s->tx_start : s->start;
	int n;

	mx_addr_text(&s->peer.sa, client, sizeof(client));
	if (why != R_NONE) {
		reason_format(why, detail, words, sizeof(words));
		unquote(words);
	}
	if (rpt != NULL)
		snprintf(code, sizeof(code), " reason_code=%s", rpt);
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s mx=%s "
	    "upstream=%s rcpts=%u upstream_tls=%s upstream_auth=%s bytes_in=%llu ms=%lld "
	    "result=%s%s%s%s%s",
	    s->id, s->svc->svc->name, client, s->cl_ver, s->cl_cipher,
	    s->host[0] ? s->host : "none", s->up_text[0] ? s->up_text : "none", s->nrcpt,
	    s->up_ver, s->up_auth, (unsigned long long)s->body_bytes,
	    (long long)((ev_now(s->w->loop) - from) * 1000.0), result_names[res],
	    why != R_NONE ? " reason=\"" : "", words, why != R_NONE ? "\"" : "", code);
	if (n > 0)
		log_line(LEVEL_INFO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	s->ntx++;
	if (s->w->mw != NULL && s->svc->mslot >= 0) {
		struct metrics_svc *ms = &s->w->mw->svc[s->svc->mslot];
		metrics_add(&ms->sessions[res == RES_OK ? MR_OK : res == RES_REFUSED ?
		    MR_REFUSED : MR_ERROR], 1);
		metrics_add(&ms->bytes_in, s->body_bytes);
		if (res == RES_REFUSED && rpt != NULL)
			metrics_add(&s->w->mw->refusals[metrics_code_index(rpt)], 1);
		if (strcmp(s->up_auth, "none") != 0)
			metrics_add(&s->w->mw->auth[metrics_auth_index(s->up_auth)], 1);
	}
}

/* ---- the transaction ---- */

void mx_tx_end(struct mxsess *s)
{
	if (!s->tx)
		return;
	if (s->delivered)
		log_tx(s, R_NONE, NULL);
	else if (s->tx_why != R_NONE)
		log_tx(s, s->tx_why, s->tx_detail);
	else if (s->tx_detail[0] != '\0')
		log_tx(s, R_UP_SMTP, s->tx_detail);
	else
		log_tx(s, R_NONE, NULL);
	mx_up_close(s, true);
	s->tx = s->bound = s->delivered = s->up_lost = false;
	s->nrcpt = 0;
	s->body_bytes = 0;
	s->tx_why = R_NONE;
	s->tx_detail[0] = '\0';
	s->host[0] = s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
}

/* ---- the client's commands ---- */

static const char r_ok[] = "250 2.0.0 Ok\r\n";

static int ehlo_reply(struct mxsess *s, const char *name, bool ehlo)
{
	char out[600];
	const struct service *svc = s->svc->svc;
	bool offer_tls = svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL;
	int n;

	if (!ehlo) {
		n = snprintf(out, sizeof(out), "250 %s\r\n", name);
		return mx_reply(s, out, (size_t)n);
	}
	/* Only what every MX can be held to: no CHUNKING (an MX without it
	 * could not take BDAT), no DSN, no AUTH (relay_from decides). */
	n = snprintf(out, sizeof(out), "250-%s\r\n250-PIPELINING\r\n250-SIZE\r\n"
	    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n%s"
	    "250 LIMITS RCPTDOMAINMAX=1\r\n", name, offer_tls ? "250-STARTTLS\r\n" : "");
	return mx_reply(s, out, (size_t)n);
}

static const char *helo_name(const struct mxsess *s, char *out, size_t len)
{
	/* svc->ehlo is "EHLO name\r\n". */
	snprintf(out, len, "%.*s", (int)(s->svc->ehlo_len > 7 ? s->svc->ehlo_len - 7 : 0),
	    s->svc->ehlo + 5);
	return out;
}

static int cmd_rcpt(struct mxsess *s, const char *line, size_t len, const char *args)
{
	char dom[ROUTE_NAME_MAX];
	const char *bad;

	if (!s->tx)
		return mx_say(s, "503 5.5.1 MAIL first\r\n");
	bad = route_rcpt_domain(args, (size_t)(line + len - args), dom, sizeof(dom));
	if (bad != NULL)
		return mx_say(s, bad);
	if (s->nrcpt >= RCPT_MAX)
		return mx_say(s, "452 4.5.3 Too many recipients\r\n");
	if (len + 2 > sizeof(s->rcpt))
		return mx_say(s, "501 5.5.4 Recipient address too long\r\n");
	/* The line as the client wrote it (CRLF ended). */
	memcpy(s->rcpt, line, len);
	s->rcpt_len = len;
	if (s->rcpt_len < 2 || s->rcpt[s->rcpt_len - 2] != '\r') {
		s->rcpt[s->rcpt_len - 1] = '\r';
		s->rcpt[s->rcpt_len++] = '\n';
	}
	if (s->bound) {
		if (strcmp(dom, s->dom) != 0)
			return mx_say(s, "452 4.5.3 One recipient domain per transaction "
			    "(RCPTDOMAINMAX=1), send the others separately\r\n");
		if (s->up_lost || s->up.fd < 0)
			return mx_say(s, "451 4.4.2 The MX host closed the connection\r\n");
		s->phase = PH_WAIT;
		return mx_send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	}
	snprintf(s->dom, sizeof(s->dom), "%s", dom);
	return mx_bind_start(s);
}

static int cmd_data(struct mxsess *s)
{
	if (!s->tx)
		return mx_say(s, "503 5.5.1 MAIL first\r\n");
	if (!s->bound || s->nrcpt == 0)
		return mx_say(s, "554 5.5.1 No valid recipients\r\n");
	if (s->up_lost || s->up.fd < 0)
		return mx_say(s, "451 4.4.2 The MX host closed the connection\r\n");
	s->phase = PH_WAIT;
	return mx_send_up(s, LIT("DATA\r\n"), U_DATA);
}

static int cmd_mail(struct mxsess *s, const char *line, size_t len, const char *args)
{
	const char *bad;

	if (!s->helo)
		return mx_say(s, "503 5.5.1 Send EHLO first\r\n");
	if (s->tx)
		return mx_say(s, "503 5.5.1 Nested MAIL command\r\n");
	bad = route_mail_parse(args, (size_t)(line + len - args), &s->mail);
	if (bad != NULL)
		return mx_say(s, bad);
	s->tx = true;
	s->tx_start = ev_now(s->w->loop);
	return mx_say(s, "250 2.1.0 Ok\r\n");
}

/* The last reply (if it fits) and a clean close; never fails. */
static int close_after(struct mxsess *s, const char *r)
{
	if (r != NULL)
		(void)mx_say(s, r);
	s->cl_state = CL_CLOSING;
	mx_set_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

static int command(struct mxsess *s, const char *line, size_t len)
{
	const struct service *svc = s->svc->svc;
	const char *args;
	enum route_verb v = route_verb(line, len, &args);
	char name[300];

	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len >= 2 ? len - 2 : 0) != NULL ||
	    (len >= 2 && line[len - 2] != '\r') || (len > 0 && (line[0] == ' ' ||
	    line[0] == '\t')))
		return mx_say(s, "500 5.5.2 Bad command line\r\n");
	if (svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL && !s->plain_allowed &&
	    v != ROUTE_V_EHLO && v != ROUTE_V_HELO && v != ROUTE_V_STARTTLS &&
	    v != ROUTE_V_NOOP && v != ROUTE_V_RSET && v != ROUTE_V_QUIT)
		return mx_say(s, "530 5.7.0 Must issue a STARTTLS command first\r\n");
	switch (v) {
	case ROUTE_V_EHLO:
	case ROUTE_V_HELO:
		if (*args == '\r' || *args == '\n' || *args == '\0')
			return mx_say(s, "501 5.5.4 A domain is needed\r\n");
		mx_tx_end(s);
		s->helo = true;
		return ehlo_reply(s, helo_name(s, name, sizeof(name)), v == ROUTE_V_EHLO);
	case ROUTE_V_STARTTLS:
		if (svc->listen_tls != MODE_STARTTLS || s->cl.ssl != NULL)
			return mx_say(s, "502 5.5.1 STARTTLS is not offered\r\n");
		if (pump_unseen(&s->cin) > len)
			return -2;        /* pipelined after STARTTLS: injection */
		mx_tx_end(s);
		s->cl_state = CL_STARTTLS;
		return mx_say(s, "220 2.0.0 Ready to start TLS\r\n");
	case ROUTE_V_MAIL:
		return cmd_mail(s, line, len, args);
	case ROUTE_V_RCPT:
		return cmd_rcpt(s, line, len, args);
	case ROUTE_V_DATA:
		return cmd_data(s);
	case ROUTE_V_RSET:
		mx_tx_end(s);
		return mx_say(s, r_ok);
	case ROUTE_V_NOOP:
		return mx_say(s, r_ok);
	case ROUTE_V_QUIT:
		mx_tx_end(s);
		return close_after(s, "221 2.0.0 Bye\r\n");
	case ROUTE_V_VRFY:
		return mx_say(s, "252 2.0.0 Send some mail, I will try my best\r\n");
	case ROUTE_V_HELP:
		return mx_say(s, "214 2.0.0 mailshim outbound relay\r\n");
	case ROUTE_V_BDAT:
		return mx_say(s, "502 5.5.1 CHUNKING is not offered\r\n");
	case ROUTE_V_AUTH:
		return mx_say(s, "502 5.5.1 AUTH is not offered\r\n");
	default:
		return mx_say(s, "500 5.5.2 Command not recognized\r\n");
	}
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

		if (nl == NULL) {
			if (len >= SMTP_LINE_MAX)
				return close_after(s, "500 5.5.2 Line too long\r\n");
			break;
		}
		len = (size_t)(nl - p) + 1;
		if (len > SMTP_LINE_MAX) {
			return close_after(s, "500 5.5.2 Line too long\r\n");
		}
		r = command(s, p, len);
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

	if (s->phase != PH_BODY || pump_unseen(&s->cin) == 0)
		return 0;
	r = route_body_scan(&s->body, s->cin.b->data + s->cin.b->off + s->cin.b->fwd,
	    pump_unseen(&s->cin), &n, &why);
	if (r == ROUTE_BODY_BAD) {
		/* The MX never sees an end: it drops the partial message. */
		s->tx_why = R_CL_SMTP;
		snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
		mx_up_close(s, false);
		mx_tx_end(s);
		return close_after(s, "554 5.5.2 Bare CR or LF around end-of-data refused\r\n");
	}
	s->cin.b->fwd += (uint32_t)n;
	s->body_bytes += n;
	if (n > 0 && r != ROUTE_BODY_END)
		touch(s);
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
		log_tx(s, why, detail);
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

	helo_name(s, name, sizeof(name));
	s->greeted = true;
	/* Never an open relay: the sending MTA is known by its address. */
	if (!config_cidrs_match(&s->svc->svc->relay_from, &s->peer.sa)) {
		n = snprintf(out, sizeof(out), "554 5.7.1 %s relaying denied\r\n", name);
		log_tx(s, R_RELAY_DENIED, NULL);
		(void)mx_reply(s, out, (size_t)n);
		return close_after(s, NULL);
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
		    s->up_state == U_HS ? R_UP_HANDSHAKE_TIMEOUT : R_REPLY_TIMEOUT, "timeout");
		if (r < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
		mx_step(s);
		return;
	}
	if (close_after(s, "421 4.4.2 Idle timeout, closing\r\n") > 0) {
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
