/* mxhop: the MX hop of an outbound relay session: connect, STARTTLS and
 * the handshake, the MX's replies, its socket's turns (mxsess_int.h); the
 * choice of host is mxroute.c's. */
#include "mxsess_int.h"

static const char *const up_names[] = { "none", "dns", "connect", "greet", "ehlo",
	"starttls", "handshake", "ehlo-tls", "mail", "rcpt", "ready", "data", "dot" };

void mx_up_enter(struct mxsess *s, enum up_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x mx %s -> %s", s->id, up_names[s->up_state],
		    up_names[st]);
	s->up_state = (uint8_t)st;
	s->up.rd_wait = s->up.wr_wait = 0;
}

/* The MX session ends: QUIT when it is at a command boundary. Never in
 * the body (DATA sent, its end not answered): QUIT would be body text,
 * ahead of body bytes not yet out; closing drops the message. */
void mx_up_close(struct mxsess *s, bool quit)
{
	dns_cancel(s->q);
	s->q = NULL;
	if (s->up.fd >= 0) {
		if (quit && s->up_state >= U_GREET && s->up_state != U_HS &&
		    s->up_state != U_DATA && s->up_state != U_DOT &&
		    pump_approved(&s->uout) == 0) {
			(void)ep_write(&s->up, "QUIT\r\n", 6);
			(void)ep_shutdown(&s->up, false);
		}
		ep_close(&s->up, s->w->loop);
	}
	ep_init(&s->up, -1);
	pump_free(&s->uin);
	pump_free(&s->uout);
	s->uin.eof = s->uout.eof = false;
	/* Body bytes not yet out have nowhere to go. */
	if (s->cin.b != NULL && s->cin.b->fwd > 0)
		buf_written(s->cin.b, s->cin.b->fwd);
	/* The verify session (TLSA records) belongs to the host, not to one
	 * of its addresses: it lives until the next host's lookup. */
	s->tls_up = false;
	mx_up_enter(s, U_NONE);
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

/* A wait for the MX. While a first RCPT looks for its MX host, no wait
 * goes past the deadline of the whole search (MX_SEARCH_MS). */
void mx_up_timer(struct mxsess *s, uint32_t ms)
{
	if (!s->bound && s->phase == PH_WAIT) {
		double left = (s->search_end - ev_now(s->w->loop)) * 1000.0;
		if (left < ms)
			ms = left > 1.0 ? (uint32_t)left : 1;
	}
	mx_set_timer(s, ms);
}

int mx_send_up(struct mxsess *s, const char *p, size_t n, enum up_state next)
{
	const struct service *svc = s->svc->svc;

	if (pump_insert(&s->uout, p, n) < 0)
		return -1;
	mx_up_enter(s, next);
	/* EHLO and STARTTLS are the STARTTLS dialogue: timeout_handshake. */
	mx_up_timer(s, next == U_EHLO1 || next == U_STARTTLS || next == U_EHLO2 ?
	    svc->timeout_handshake_ms : svc->timeout_reply_ms);
	return 1;
}

int mx_addr_connect(struct mxsess *s)
{
	const struct sockaddr_storage *a;
	int fd, one = 1;

	if (s->iaddr >= s->naddr) {
		s->imx++;
		return mx_host_next(s);
	}
	a = &s->addr[s->iaddr++];
	mx_addr_text((const struct sockaddr *)a, s->up_text, sizeof(s->up_text));
	fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return mx_host_fail(s, R_UP_SOCKET, strerror(errno));
	ep_init(&s->up, fd);
	ev_init(&s->up.io, mx_up_io_cb);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	mx_up_enter(s, U_CONNECT);
	mx_up_timer(s, s->svc->svc->timeout_connect_ms);
	if (connect(fd, (const struct sockaddr *)a, a->ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) < 0) {
		if (errno != EINPROGRESS) {
			mx_note(s, R_UP_CONNECT, strerror(errno));
			mx_up_close(s, false);
			return mx_addr_connect(s);
		}
		s->up.wr_wait = EV_WRITE;
	}
	return 1;
}

static int tls_start(struct mxsess *s)
{
	if (ep_tls(&s->up, tls_new_upstream(&s->svc->tls, s->host)) < 0 ||
	    verify_attach(s->up.ssl, &s->verify) < 0)
		return mx_host_fail(s, R_UP_TLS_START, NULL);
	hs_watch(&s->up);
	mx_up_enter(s, U_HS);
	mx_up_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

static int connected(struct mxsess *s)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (s->up.wr_wait)
		return 0;
	if (getsockopt(s->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		mx_note(s, R_UP_CONNECT, strerror(err));
		mx_up_close(s, false);
		return mx_addr_connect(s);
	}
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT)
		return tls_start(s);
	mx_up_enter(s, U_GREET);
	mx_up_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

/* The policy check said yes during the handshake (verify.c). */
static int handshake(struct mxsess *s)
{
	struct fail f;
	int r = hs_step(&s->up, true, s->svc->svc->upstream_min_version, &f);

	if (r == 0)
		return 0;
	if (r < 0) {
		if (s->verify.fail != VF_OK)
			return mx_host_fail(s, (enum reason)verify_reason_row(&s->verify),
			    s->verify.detail);
		return mx_host_fail(s, f.why, f.detail);
	}
	s->up_ver = tls_version(s->up.ssl);
	s->up_auth = verify_auth_name((enum verify_auth)s->verify.auth);
	s->tls_up = true;
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT) {
		mx_up_enter(s, U_GREET);
		mx_up_timer(s, s->svc->svc->timeout_handshake_ms);
		return 1;
	}
	return mx_send_up(s, s->svc->ehlo, s->svc->ehlo_len, U_EHLO2);
}

/* The MX's final EHLO reply: replay MAIL FROM as it allows. */
static int mail_replay(struct mxsess *s, const char *p, size_t n)
{
	char line[ROUTE_NAME_MAX * 2 + 80];
	const char *refuse;

	route_ehlo(p, n, &s->ext);
	refuse = route_mail_line(&s->mail, &s->ext, line, sizeof(line));
	if (refuse != NULL)
		return mx_rcpt_final(s, refuse, strlen(refuse), R_MX_UNSUPPORTED, refuse);
	return mx_send_up(s, line, strlen(line), U_MAIL);
}


/* The MX said no (its words in the log); the client hears its reply. */
static void tx_refused(struct mxsess *s, const char *why)
{
	s->tx_why = R_MX_REFUSED;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
}

/* One whole reply of the MX, by what it answers. */
static int up_reply(struct mxsess *s, int code, const char *p, size_t n)
{
	char why[120];

	snprintf(why, sizeof(why), "%.*s", (int)(n > 100 ? 100 : n - 2), p);
	switch (s->up_state) {
	case U_GREET:
		if (code != 220)
			return mx_host_fail(s, R_MX_GREETING, why);
		return mx_send_up(s, s->svc->ehlo, s->svc->ehlo_len,
		    s->tls_up ? U_EHLO2 : U_EHLO1);
	case U_EHLO1:
		if (code / 100 != 2)
			return mx_host_fail(s, R_UP_NO_STARTTLS, why);
		route_ehlo(p, n, &s->ext);
		if (!s->ext.starttls)
			return mx_host_fail(s, R_UP_NO_STARTTLS, "MX offered no STARTTLS");
		return mx_send_up(s, LIT("STARTTLS\r\n"), U_STARTTLS);
	case U_STARTTLS:
		if (code != 220)
			return mx_host_fail(s, R_UP_NO_STARTTLS, why);
		/* Bytes after the 220 and before TLS: an injection. */
		if (pump_unseen(&s->uin) > 0)
			return mx_host_fail(s, R_UP_INJECTION, NULL);
		pump_free(&s->uin);
		return tls_start(s);
	case U_EHLO2:
		if (code / 100 != 2)
			return mx_host_fail(s, R_MX_GREETING, why);
		return mail_replay(s, p, n);
	case U_MAIL:
		if (code / 100 != 2)
			return mx_rcpt_final(s, p, n, R_MX_REFUSED, why);
		return mx_send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	case U_RCPT:
		if (mx_reply(s, p, n) < 0)
			return -1;
		if (code / 100 == 2) {
			s->bound = true;
			s->nrcpt++;
		} else if (!s->bound) {
			tx_refused(s, why);
			mx_up_close(s, true);
			return mx_answered(s);
		}
		mx_up_enter(s, U_READY);
		return mx_answered(s);
	case U_DATA:
		/* Neither go-ahead nor refusal: the MX does not follow. */
		if (code != 354 && code / 100 != 4 && code / 100 != 5) {
			s->up_lost = true;
			s->tx_why = R_UP_SMTP;
			snprintf(s->tx_detail, sizeof(s->tx_detail), "MX answered DATA with %s", why);
			mx_up_close(s, false);
			if (mx_say(s, "451 4.5.0 The MX host gave no go-ahead for DATA\r\n") < 0)
				return -1;
			return mx_answered(s);
		}
		if (mx_reply(s, p, n) < 0)
			return -1;
		if (code != 354) {
			tx_refused(s, why);
			mx_up_enter(s, U_READY);
			return mx_answered(s);
		}
		route_body_init(&s->body);
		s->phase = PH_BODY;
		mx_up_enter(s, U_DOT);
		mx_set_timer(s, s->svc->svc->timeout_idle_ms);
		return 1;
	case U_DOT:
		/* Before the end of data was sent: the MX does not follow. */
		if (s->phase == PH_BODY)
			return mx_up_broke(s, R_UP_SMTP, "MX replied before the end of data");
		if (mx_reply(s, p, n) < 0)
			return -1;
		s->delivered = code / 100 == 2;
		if (!s->delivered)
			tx_refused(s, why);
		mx_up_enter(s, U_READY);
		mx_tx_end(s);
		return mx_answered(s);
	default:
		/* Unasked (a 421 before closing): the MX is gone. */
		s->up_lost = true;
		mx_up_close(s, false);
		return 1;
	}
}

/* The MX hop broke (reset, close, timeout). */
int mx_up_broke(struct mxsess *s, enum reason why, const char *detail)
{
	/* The search for the first RCPT's MX host ran out of time: the
	 * sender gets its answer before it gives up waiting for one. */
	if (!s->bound && s->phase == PH_WAIT && s->up_state != U_NONE &&
	    ev_now(s->w->loop) >= s->search_end - 0.01)
		return mx_rcpt_final(s, LIT("451 4.4.1 No MX host of the domain answered in "
		    "time\r\n"), why, "the search for an MX host timed out");
	switch (s->up_state) {
	case U_CONNECT:
		mx_note(s, why, detail);
		mx_up_close(s, false);
		return mx_addr_connect(s);
	case U_GREET: case U_EHLO1: case U_STARTTLS: case U_HS: case U_EHLO2: case U_MAIL:
		return mx_host_fail(s, why, detail);
	case U_DNS:
		return mx_rcpt_final(s, LIT("451 4.4.3 DNS lookup timed out\r\n"), R_MX_LOOKUP,
		    "timeout");
	case U_DOT:
		s->tx_why = why;
		snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", detail ? detail : "");
		mx_up_close(s, false);
		return mx_body_lost(s);
	case U_RCPT: case U_DATA:
		/* Only a bound transaction loses its MX: a first RCPT that
		 * broke leaves the next recipient free to bind elsewhere. */
		if (s->bound)
			s->up_lost = true;
		s->tx_why = why;
		mx_up_close(s, false);
		if (mx_say(s, "451 4.4.2 The MX host closed the connection or timed out\r\n") < 0)
			return -1;
		return mx_answered(s);
	default:
		s->up_lost = true;
		mx_up_close(s, false);
		return 1;
	}
}

int mx_up_io(struct mxsess *s)
{
	uint8_t rbuf[SMTP_REPLY_MAX];
	int progress = 0, r, code;
	long n;

	if (s->up.fd < 0)
		return 0;
	if (s->up_state == U_CONNECT)
		return connected(s);
	if (s->up_state == U_HS)
		return handshake(s);
	r = pump_write(&s->uout, &s->up);
	if (r == PUMP_ERROR)
		return mx_up_broke(s, R_UP_LOST, strerror(s->up.err));
	progress |= r > 0;
	if (pump_approved(&s->uout) == 0) {
		r = pump_write(&s->cin, &s->up);
		if (r == PUMP_ERROR)
			return mx_up_broke(s, R_UP_LOST, strerror(s->up.err));
		progress |= r > 0;
	}
	r = pump_read(&s->uin, &s->up);
	if (r == PUMP_ERROR || r == PUMP_NOMEM)
		return mx_up_broke(s, R_UP_LOST, s->up.err ? strerror(s->up.err) : NULL);
	progress |= r > 0;
	while (s->up.fd >= 0 && pump_unseen(&s->uin) > 0) {
		n = route_reply(s->uin.b->data + s->uin.b->off + s->uin.b->fwd,
		    pump_unseen(&s->uin), sizeof(rbuf), &code);
		if (n < 0)
			return mx_up_broke(s, R_UP_SMTP, "MX sent a broken reply");
		if (n == 0)
			break;
		memcpy(rbuf, s->uin.b->data + s->uin.b->off + s->uin.b->fwd, (size_t)n);
		buf_cut(s->uin.b, (size_t)n);
		if ((r = up_reply(s, code, (const char *)rbuf, (size_t)n)) < 0)
			return r;
		progress = 1;
	}
	if (s->up.fd >= 0 && s->uin.eof)
		return mx_up_broke(s, R_UP_LOST, "MX closed the connection");
	return progress;
}
