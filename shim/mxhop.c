/* mxhop: the MX hop of an outbound relay session (mxsess_int.h). */
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

static int host_next(struct mxsess *s);
static int addr_connect(struct mxsess *s);

/* The MX session ends: QUIT when it is at a command boundary. */
void mx_up_close(struct mxsess *s, bool quit)
{
	dns_cancel(s->q);
	s->q = NULL;
	if (s->up.fd >= 0) {
		if (quit && s->up_state >= U_GREET && s->up_state != U_HS &&
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

int mx_send_up(struct mxsess *s, const char *p, size_t n, enum up_state next)
{
	if (pump_insert(&s->uout, p, n) < 0)
		return -1;
	mx_up_enter(s, next);
	mx_set_timer(s, s->svc->svc->timeout_reply_ms);
	return 1;
}

/* Keep the most telling failure of the hosts tried for this RCPT. */
static void note(struct mxsess *s, enum reason why, const char *detail)
{
	int rank;

	switch (why) {
	case R_UP_TLSA_INVALID: case R_UP_DANE_REQUIRED: case R_UP_CERT_HOST:
	case R_UP_CERT_EXPIRED: case R_UP_CERT_UNTRUSTED: case R_UP_CERT_INVALID:
	case R_UP_TLS_FAILED: case R_UP_TLS_VERSION: case R_UP_TLS_CIPHER:
		rank = 5;
		break;
	case R_UP_NO_STARTTLS: case R_UP_INJECTION:
		rank = 4;
		break;
	case R_UP_DNSSEC_INVALID:
		rank = 3;
		break;
	case R_MX_GREETING:
		rank = 2;
		break;
	default:
		rank = 1;
	}
	log_msg(LEVEL_INFO, "conn=%08x mx %s (%s): %s%s%s; trying the next", s->id, s->host,
	    s->up_text[0] ? s->up_text : "-", reason_name(why), detail ? ": " : "",
	    detail ? detail : "");
	if (rank < s->frank)
		return;
	s->frank = rank;
	s->fwhy = why;
	snprintf(s->fdetail, sizeof(s->fdetail), "%s: %s", s->host, detail ? detail : "");
}

/* No MX host would take the RCPT: say why, honestly and temporarily. */
static int rcpt_failed(struct mxsess *s)
{
	const char *r;
	char text[400];

	switch (s->frank) {
	case 5:
		r = "451 4.7.5 No MX host of the domain passed TLS authentication";
		break;
	case 4:
		r = "451 4.7.4 No MX host of the domain offers STARTTLS";
		break;
	case 3:
		r = "451 4.4.3 DNSSEC lookup for the MX hosts failed";
		break;
	case 2:
		r = "451 4.4.0 Every MX host of the domain refused the session";
		break;
	default:
		r = "451 4.4.1 No MX host of the domain answered";
	}
	snprintf(text, sizeof(text), "%s\r\n", r);
	mx_up_close(s, false);
	s->tx_why = s->frank ? s->fwhy : R_UP_CONNECT;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", s->fdetail);
	if (mx_say(s, text) < 0)
		return -1;
	return mx_answered(s);
}

/* The answer to the RCPT comes from here, and the MX is let go. */
static int rcpt_final(struct mxsess *s, const char *r, size_t n, enum reason why,
    const char *detail)
{
	mx_up_close(s, true);
	s->tx_why = why;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", detail ? detail : "");
	if (mx_reply(s, r, n) < 0)
		return -1;
	return mx_answered(s);
}

/* This host failed: the next one. */
static int host_fail(struct mxsess *s, enum reason why, const char *detail)
{
	note(s, why, detail);
	mx_up_close(s, why != R_UP_CONNECT && why != R_UP_LOST);
	s->imx++;
	return host_next(s);
}

static void on_tlsa(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	const uint8_t *rd[64];
	size_t len[64], n = 0;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	if (a->status == DNS_BOGUS || a->status == DNS_FAIL || a->status == DNS_TIMEOUT) {
		char why[400];
		snprintf(why, sizeof(why), "TLSA lookup %s: %s", a->name,
		    dns_status_name(a->status));
		r = host_fail(s, R_UP_DNSSEC_INVALID, why);
	} else {
		if (a->status == DNS_INSECURE || a->nrr == 0) {
			verify_set_tlsa_state(&s->verify, TLSA_NONE, "no TLSA records");
		} else {
			for (size_t i = 0; i < a->nrr && n < 64; i++, n++) {
				rd[n] = a->rr[i].data;
				len[n] = a->rr[i].len;
			}
			verify_set_tlsa(&s->verify, rd, len, n, s->host);
		}
		if (s->verify.tlsa == TLSA_NONE &&
		    s->svc->svc->upstream_verify == VERIFY_DANE_ONLY)
			r = host_fail(s, R_UP_DANE_REQUIRED, "no DNSSEC-secure TLSA records");
		else
			r = addr_connect(s);
	}
	if (r >= 0)
		mx_step(s);
}

/* The host's addresses are in: TLSA where DANE applies, then connect. */
static int addrs_done(struct mxsess *s)
{
	const struct service *svc = s->svc->svc;
	char q[300];

	if (s->naddr == 0)
		return host_fail(s, R_UP_RESOLVE, "no address records");
	verify_session_free(&s->verify);
	verify_session_init(&s->verify, svc);
	s->verify.name = s->host;
	s->iaddr = 0;
	if (s->verify.tlsa == TLSA_NOT_WANTED)
		return addr_connect(s);
	/* RFC 7672 2.2: TLSA only behind a secure MX RRset and secure
	 * address records; the base name is the MX host itself. */
	if (!s->mx_secure || !s->addr_secure) {
		verify_set_tlsa_state(&s->verify, TLSA_NONE,
		    "MX or address records not DNSSEC-signed");
		if (svc->upstream_verify == VERIFY_DANE_ONLY)
			return host_fail(s, R_UP_DANE_REQUIRED, "MX or address records "
			    "not DNSSEC-signed");
		return addr_connect(s);
	}
	snprintf(q, sizeof(q), "_%u._tcp.%s", (unsigned)svc->mx_port, s->host);
	s->q = dns_lookup(s->w->dns, q, DNS_TYPE_TLSA, on_tlsa, s);
	if (s->q == NULL)
		return host_fail(s, R_NO_MEMORY, NULL);
	return 0;
}

static void on_addr(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	if (a->status == DNS_SECURE || a->status == DNS_INSECURE) {
		if (a->nrr > 0 && a->status != DNS_SECURE)
			s->addr_secure = false;
		s->naddr += dns_addrs(a, (uint16_t)s->svc->svc->mx_port, s->addr + s->naddr,
		    ADDR_MAX - s->naddr);
	} else if (a->status == DNS_BOGUS) {
		s->addr_secure = false;
		note(s, R_UP_DNSSEC_INVALID, "address records bogus");
	}
	if (s->addr_step++ == 0) {
		s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_AAAA, on_addr, s);
		r = s->q == NULL ? host_fail(s, R_NO_MEMORY, NULL) : 0;
	} else {
		r = addrs_done(s);
	}
	if (r >= 0)
		mx_step(s);
}

static int host_next(struct mxsess *s)
{
	if (s->imx >= s->nmx)
		return rcpt_failed(s);
	snprintf(s->host, sizeof(s->host), "%s", s->mx[s->imx].host);
	s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
	s->naddr = s->iaddr = 0;
	s->addr_step = 0;
	s->addr_secure = true;
	mx_up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_A, on_addr, s);
	if (s->q == NULL)
		return rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	mx_set_timer(s, s->w->cfg->timeout_dns_ms * 3);
	return 0;
}

static void on_mx(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	uint32_t rnd[ROUTE_MX_MAX] = { 0 };
	size_t n = 0;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	snprintf(s->host, sizeof(s->host), "%s", s->dom);
	if (a->status != DNS_SECURE && a->status != DNS_INSECURE) {
		char why[400];
		snprintf(why, sizeof(why), "MX lookup %s: %s", s->dom, dns_status_name(a->status));
		s->host[0] = '\0';
		r = rcpt_final(s, LIT("451 4.4.3 MX lookup for the recipient domain failed\r\n"),
		    a->status == DNS_BOGUS ? R_UP_DNSSEC_INVALID : R_MX_LOOKUP, why);
	} else if (a->nxdomain) {
		s->host[0] = '\0';
		r = rcpt_final(s, LIT("550 5.1.2 The recipient domain does not exist\r\n"),
		    R_MX_NO_DOMAIN, s->dom);
	} else {
		s->mx_secure = a->status == DNS_SECURE;
		for (size_t i = 0; i < a->nrr && n < ROUTE_MX_MAX; i++)
			if (route_mx_parse(a->rr[i].data, a->rr[i].len, &s->mx[n]))
				n++;
		if (a->nrr == 0) {
			/* RFC 5321 5.1: no MX, the domain itself (implicit MX). */
			s->mx[0].pref = 0;
			snprintf(s->mx[0].host, sizeof(s->mx[0].host), "%s", s->dom);
			n = 1;
		}
		(void)getrandom(rnd, sizeof(rnd), GRND_NONBLOCK);
		s->nmx = route_mx_order(s->mx, n, rnd);
		s->imx = 0;
		if (s->nmx == 0) {
			/* RFC 7505: a null MX, the domain takes no mail. */
			r = rcpt_final(s, LIT("556 5.1.10 The recipient domain accepts no "
			    "mail (null MX)\r\n"), R_MX_NULL, s->dom);
		} else {
			r = host_next(s);
		}
	}
	if (r >= 0)
		mx_step(s);
}

/* The first RCPT for a domain: find its MX hosts. */
int mx_bind_start(struct mxsess *s)
{
	s->phase = PH_WAIT;
	s->frank = 0;
	s->fwhy = R_NONE;
	s->fdetail[0] = '\0';
	mx_up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->dom, DNS_TYPE_MX, on_mx, s);
	if (s->q == NULL)
		return rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	mx_set_timer(s, s->w->cfg->timeout_dns_ms * 2);
	return 0;
}

static int addr_connect(struct mxsess *s)
{
	const struct sockaddr_storage *a;
	int fd, one = 1;

	if (s->iaddr >= s->naddr) {
		s->imx++;
		return host_next(s);
	}
	a = &s->addr[s->iaddr++];
	mx_addr_text((const struct sockaddr *)a, s->up_text, sizeof(s->up_text));
	fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return host_fail(s, R_UP_SOCKET, strerror(errno));
	ep_init(&s->up, fd);
	ev_init(&s->up.io, mx_up_io_cb);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	mx_up_enter(s, U_CONNECT);
	mx_set_timer(s, s->svc->svc->timeout_connect_ms);
	if (connect(fd, (const struct sockaddr *)a, a->ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) < 0) {
		if (errno != EINPROGRESS) {
			note(s, R_UP_CONNECT, strerror(errno));
			mx_up_close(s, false);
			return addr_connect(s);
		}
		s->up.wr_wait = EV_WRITE;
	}
	return 1;
}

static int tls_start(struct mxsess *s)
{
	if (ep_tls(&s->up, tls_new_upstream(&s->svc->tls, s->host)) < 0 ||
	    verify_attach(s->up.ssl, &s->verify) < 0)
		return host_fail(s, R_UP_TLS_START, NULL);
	hs_watch(&s->up);
	mx_up_enter(s, U_HS);
	mx_set_timer(s, s->svc->svc->timeout_handshake_ms);
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
		note(s, R_UP_CONNECT, strerror(err));
		mx_up_close(s, false);
		return addr_connect(s);
	}
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT)
		return tls_start(s);
	mx_up_enter(s, U_GREET);
	mx_set_timer(s, s->svc->svc->timeout_reply_ms);
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
			return host_fail(s, (enum reason)verify_reason_row(&s->verify),
			    s->verify.detail);
		return host_fail(s, f.why, f.detail);
	}
	s->up_ver = tls_version(s->up.ssl);
	s->up_auth = verify_auth_name((enum verify_auth)s->verify.auth);
	s->tls_up = true;
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT) {
		mx_up_enter(s, U_GREET);
		mx_set_timer(s, s->svc->svc->timeout_reply_ms);
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
		return rcpt_final(s, refuse, strlen(refuse), R_MX_UNSUPPORTED, refuse);
	return mx_send_up(s, line, strlen(line), U_MAIL);
}


/* One whole reply of the MX, by what it answers. */
static int up_reply(struct mxsess *s, int code, const char *p, size_t n)
{
	char why[120];

	snprintf(why, sizeof(why), "%.*s", (int)(n > 100 ? 100 : n - 2), p);
	switch (s->up_state) {
	case U_GREET:
		if (code != 220)
			return host_fail(s, R_MX_GREETING, why);
		return mx_send_up(s, s->svc->ehlo, s->svc->ehlo_len,
		    s->tls_up ? U_EHLO2 : U_EHLO1);
	case U_EHLO1:
		if (code / 100 != 2)
			return host_fail(s, R_UP_NO_STARTTLS, why);
		route_ehlo(p, n, &s->ext);
		if (!s->ext.starttls)
			return host_fail(s, R_UP_NO_STARTTLS, "MX offered no STARTTLS");
		return mx_send_up(s, LIT("STARTTLS\r\n"), U_STARTTLS);
	case U_STARTTLS:
		if (code != 220)
			return host_fail(s, R_UP_NO_STARTTLS, why);
		/* Bytes after the 220 and before TLS: an injection. */
		if (pump_unseen(&s->uin) > 0)
			return host_fail(s, R_UP_INJECTION, NULL);
		pump_free(&s->uin);
		return tls_start(s);
	case U_EHLO2:
		if (code / 100 != 2)
			return host_fail(s, R_MX_GREETING, why);
		return mail_replay(s, p, n);
	case U_MAIL:
		if (code / 100 != 2)
			return rcpt_final(s, p, n, R_NONE, NULL);
		return mx_send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	case U_RCPT:
		if (mx_reply(s, p, n) < 0)
			return -1;
		if (code / 100 == 2) {
			s->bound = true;
			s->nrcpt++;
		} else if (!s->bound) {
			mx_up_close(s, true);
			return mx_answered(s);
		}
		mx_up_enter(s, U_READY);
		return mx_answered(s);
	case U_DATA:
		if (mx_reply(s, p, n) < 0)
			return -1;
		if (code != 354) {
			mx_up_enter(s, U_READY);
			return mx_answered(s);
		}
		route_body_init(&s->body);
		s->phase = PH_BODY;
		mx_up_enter(s, U_DOT);
		mx_set_timer(s, s->svc->svc->timeout_idle_ms);
		return 1;
	case U_DOT:
		if (mx_reply(s, p, n) < 0)
			return -1;
		s->delivered = code / 100 == 2;
		if (!s->delivered)
			snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
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
	switch (s->up_state) {
	case U_CONNECT:
		note(s, why, detail);
		mx_up_close(s, false);
		return addr_connect(s);
	case U_GREET: case U_EHLO1: case U_STARTTLS: case U_HS: case U_EHLO2: case U_MAIL:
		return host_fail(s, why, detail);
	case U_DNS:
		return rcpt_final(s, LIT("451 4.4.3 DNS lookup timed out\r\n"), R_MX_LOOKUP,
		    "timeout");
	case U_RCPT: case U_DATA: case U_DOT:
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
