/*
 * conn_open: the OPEN phase. The client's PROXY header and TLS on the
 * listen hop; the upstream's addresses (and TLSA records), connect,
 * PROXY header, STARTTLS dialogue and handshake; the relay begins when
 * both hops are ready.
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

#include "proxy.h"

/* ---- the listen hop ---- */

int client_handshake(struct conn *c)
{
	struct fail f;
	int r = hs_step(&c->cl, false, c->svc->svc->listen_min_version, &f);

	if (r <= 0)
		return r < 0 ? close_fail(c, &f) : 0;
	c->cl_ver = tls_version(c->cl.ssl);
	c->cl_cipher = tls_cipher(c->cl.ssl);
	count_handshake(c, MH_LISTEN, c->cl.ssl);
	cl_enter(c, CL_READY);
	if (c->phase == PH_RELAY) {
		smtp_listen_tls_up(&c->smtp);
		touch(c);
	}
	return 1;
}

static int client_tls_start(struct conn *c)
{
	if (ep_tls(&c->cl, tls_new_listen(&c->svc->tls)) < 0)
		return close_now(c, R_CL_TLS_START, NULL);
	hs_watch(&c->cl);
	c->hs_start[MH_LISTEN] = ev_now(c->w->loop);
	cl_enter(c, CL_HANDSHAKE);
	return 1;
}

/* The 220 to STARTTLS has gone out: the listen hop turns to TLS. */
int client_starttls(struct conn *c)
{
	if (pump_approved(&c->u2c) > 0)
		return 0;
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	return client_tls_start(c);
}

/* ---- the upstream hop ---- */

static int upstream_tls_start(struct conn *c)
{
	if (ep_tls(&c->up, tls_new_upstream(&c->svc->tls, uplookup_sni(&c->ul))) < 0 ||
	    verify_attach(c->up.ssl, &c->verify) < 0)
		return fail_now(c, R_UP_TLS_START, NULL);
	hs_watch(&c->up);
	c->hs_start[MH_UPSTREAM] = ev_now(c->w->loop);
	up_enter(c, UP_HANDSHAKE);
	return 1;
}

/*
 * Announce the real client to the upstream before anything else, TLS
 * included. A v2 header from a listen hop whose TLS is up also tells that
 * TLS (version, cipher, SNI, client certificate); on plain and STARTTLS
 * listeners it goes before any TLS, so it has none. A header this small
 * always fits a fresh socket's buffer.
 */
static int send_proxy(struct conn *c)
{
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	struct proxy_tls tls, *tp = NULL;
	uint8_t hdr[640];
	size_t n;
	int v2 = c->svc->svc->upstream_proxy_protocol == PROXY_V2;

	if (getsockname(c->cl.fd, (struct sockaddr *)&local, &len) < 0)
		return -1;
	if (v2 && c->cl.ssl != NULL && c->cl_state == CL_READY) {
		tls_proxy_info(c->cl.ssl, &tls);
		tp = &tls;
	}
	n = proxy_build(v2 ? 2 : 1, &c->peer.sa, (struct sockaddr *)&local, tp, hdr,
	    sizeof(hdr));
	if (n == 0 || send(c->up.fd, hdr, n, MSG_NOSIGNAL) != (ssize_t)n)
		return -1;
	return 0;
}

static int upstream_connect(struct conn *c);

/* This address failed: the next one, within its own timeout_connect. */
int upstream_retry(struct conn *c, enum reason why, const char *detail)
{
	if (c->ul.next >= c->ul.name->naddr)
		return fail_now(c, why, detail);
	log_msg(LEVEL_INFO, "conn=%08x upstream %s: %s; trying the next address", c->id,
	    c->up_text, detail ? detail : reason_name(why));
	ep_close(&c->up, c->w->loop);
	set_deadline(c, c->svc->svc->timeout_connect_ms);
	return upstream_connect(c);
}

/*
 * A plain upstream has nothing to do before the relay, which waits for
 * the client's handshake anyway: its connect is not watched meanwhile,
 * only looked at once that handshake is done (or the timer fires). On
 * loopback and in a LAN the connect is done long before; not watching it
 * saves a write event, its wake-up, a spurious one and two epoll_ctl
 * calls per session. An upstream TLS or STARTTLS hop starts at once and
 * runs beside the client's handshake, as before.
 */
static bool connect_may_wait(const struct conn *c)
{
	return c->cl_state == CL_HANDSHAKE && c->phase == PH_OPEN &&
	    c->svc->svc->upstream_tls == MODE_PLAIN;
}

/*
 * Look once at a connect that nobody watched: 1 done (no event to wait
 * for), 0 under way (its write event from now on), -1 failed (its error
 * in err). poll() with no timeout only asks; it never waits.
 */
int connect_probe(struct conn *c, int *err)
{
	struct pollfd p = { .fd = c->up.fd, .events = POLLOUT, .revents = 0 };
	socklen_t len = sizeof(*err);

	c->up_unwatched = false;
	*err = 0;
	if (poll(&p, 1, 0) < 0) {
		*err = errno;
		return -1;
	}
	if (p.revents == 0)
		return 0;
	if ((p.revents & POLLERR) != 0 &&
	    getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, err, &len) < 0)
		*err = errno;
	if (*err != 0)
		return -1;
	c->up.wr_wait = 0;
	return 1;
}

/* A v2 header tells the client's TLS: on an implicit listener it waits
 * for the client's handshake. */
static bool header_waits(const struct conn *c)
{
	const struct service *s = c->svc->svc;

	return s->upstream_proxy_protocol == PROXY_V2 && s->listen_tls == MODE_IMPLICIT &&
	    c->cl_state != CL_READY;
}

/*
 * The upstream's TCP connect is done: the PROXY header, then the hop's
 * own start. When the header waits for the client's handshake, so does
 * everything on this hop, which then watches nothing (UP_CLIENT_WAIT: an
 * upstream that speaks or leaves meanwhile is seen after the header) and
 * gets its own timeout_handshake once the client's is done.
 */
int upstream_connected(struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (c->up_state == UP_CLIENT_WAIT) {
		if (header_waits(c))
			return 0;
	} else {
		if (c->up_unwatched) {
			if (c->cl_state == CL_HANDSHAKE)
				return 0;
			/* The client is ready: look at the connect once. Still
			 * under way, it gets its event, within its own time. */
			if (connect_probe(c, &err) == 0) {
				c->deadline = c->connect_start +
				    c->svc->svc->timeout_connect_ms / 1000.0;
				return 0;
			}
		} else if (c->up.wr_wait) {
			return 0;
		} else if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
			err = errno;
		}
		if (err != 0)
			return upstream_retry(c, R_UP_CONNECT, strerror(err));
		if (header_waits(c)) {
			set_deadline(c, c->svc->svc->timeout_handshake_ms);
			up_enter(c, UP_CLIENT_WAIT);
			return 1;
		}
	}
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	if (c->svc->svc->upstream_proxy_protocol != PROXY_NO && send_proxy(c) < 0)
		return fail_now(c, R_UP_PROXY_SEND, NULL);
	switch (c->svc->svc->upstream_tls) {
	case MODE_PLAIN:
		up_enter(c, UP_READY);
		return 1;
	case MODE_IMPLICIT:
		return upstream_tls_start(c);
	default:
		up_enter(c, UP_SETUP);
		return 1;
	}
}

/* The one certificate check (verify.c) said yes during the handshake. */
static int upstream_checked(struct conn *c)
{
	c->up_ver = tls_version(c->up.ssl);
	c->up_auth = verify_auth_name((enum verify_auth)c->verify.auth);
	count_handshake(c, MH_UPSTREAM, c->up.ssl);
	if (c->verify.auth != AUTH_ENCRYPT && c->verify.auth != AUTH_NONE)
		smtp_upstream_authenticated(&c->smtp);
	up_enter(c, UP_READY);
	if (c->svc->svc->upstream_tls == MODE_STARTTLS)
		smtp_upstream_tls_up(&c->smtp);
	return 1;
}

/* The certificate check's own words beat the library's. */
static void verify_reason(const struct conn *c, struct fail *f)
{
	const struct verify_session *v = &c->verify;

	if (v->fail == VF_OK)
		return;
	fail_set(f, (enum reason)verify_reason_row(v), v->detail);
	/* Under DANE every refusal is DANE's (RFC 7672 2.2: 4.7.5). */
	if (v->tlsa == TLSA_FOUND || v->fail == VF_DANE_REQUIRED)
		f->reply = reason_reply(R_UP_TLSA_INVALID);
}

static int upstream_handshake(struct conn *c)
{
	struct fail f;
	int r = hs_step(&c->up, true, c->svc->svc->upstream_min_version, &f);

	if (r < 0)
		verify_reason(c, &f);
	if (r <= 0)
		return r < 0 ? conn_fail(c, &f) : 0;
	return upstream_checked(c);
}

static int upstream_setup(struct conn *c)
{
	struct upsetup_io io = { &c->up, &c->c2u, &c->u2c, &c->smtp,
		c->svc->ehlo, c->svc->ehlo_len };
	struct fail f;

	switch (upsetup_turn(&c->setup, &io, &f)) {
	case UPSETUP_FAIL:
		return conn_fail(c, &f);
	case UPSETUP_TLS:
		return upstream_tls_start(c);
	case UPSETUP_MOVED:
		return 1;
	default:
		return 0;
	}
}

static int upstream_turn(struct conn *c)
{
	switch (c->up_state) {
	case UP_CONNECTING:
	case UP_CLIENT_WAIT:
		return upstream_connected(c);
	case UP_SETUP:
		return upstream_setup(c);
	case UP_HANDSHAKE:
		return upstream_handshake(c);
	default:
		return 0;
	}
}

static void addr_text(const struct sockaddr_storage *a, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (a->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)a;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(s4->sin_port));
	}
}

/* The upstream's next address: connect, without waiting for it here. */
static int upstream_connect(struct conn *c)
{
	const struct sockaddr_storage *a = uplookup_next(&c->ul);
	int fd, one = 1;

	c->up_unwatched = false;
	if (a == NULL)
		return fail_now(c, R_UP_CONNECT, "no address left to try");
	addr_text(a, c->up_text, sizeof(c->up_text));
	fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int e = errno;
		/* Out of descriptors is the shim's own limit, not the upstream's. */
		return fail_now(c, e == EMFILE || e == ENFILE ? R_NO_FDS : R_UP_SOCKET,
		    strerror(e));
	}
	ep_init(&c->up, fd);
	ev_init(&c->up.io, up_io_cb);
	/* SMTP is a dialogue of short lines: no Nagle delay on replies. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	up_enter(c, UP_CONNECTING);
	c->connect_start = ev_now(c->w->loop);
	if (connect(fd, (const struct sockaddr *)a, a->ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) < 0) {
		if (errno != EINPROGRESS)
			return upstream_retry(c, R_UP_CONNECT, strerror(errno));
		c->up.wr_wait = EV_WRITE;
		c->up_unwatched = connect_may_wait(c);
		/* Unwatched, the connect cannot move the client's deadline on:
		 * the timer comes at the first of the two. */
		if (c->up_unwatched && c->svc->svc->timeout_handshake_ms <
		    c->svc->svc->timeout_connect_ms)
			set_deadline(c, c->svc->svc->timeout_handshake_ms);
	}
	return 1;
}

static int relay_enter(struct conn *c)
{
	uint32_t len;
	char *greeting = upsetup_take_greeting(&c->setup, &len);

	phase_enter(c, PH_RELAY);
	set_deadline(c, c->svc->svc->timeout_idle_ms);
	/* A plain upstream owes its greeting from now on. */
	owe(c);
	if (greeting != NULL) {
		/* The banner was read before TLS; the client gets it now. */
		int r = pump_insert(&c->u2c, greeting, len);
		free(greeting);
		if (r < 0)
			return fail_now(c, R_NO_MEMORY, NULL);
	}
	return 1;
}

/* DNS answered for this session (its addresses, or its TLSA records). */
static void ul_wake(struct uplookup *ul)
{
	struct conn *c = (struct conn *)(void *)((char *)ul - offsetof(struct conn, ul));
	struct fail f;

	assert(c->magic == CONN_MAGIC);
	if (c->up_state == UP_RESOLVING) {
		set_deadline(c, c->svc->svc->timeout_connect_ms);
		if ((uplookup_resume(ul, &f) == UPLOOKUP_FAIL ? conn_fail(c, &f) :
		    upstream_connect(c)) < 0)
			return;
	} else if (c->up.wr_wait == EP_WAIT_VERIFY) {
		/* The handshake waits for this answer: go on with it. */
		c->up.wr_wait = 0;
	}
	conn_step(c);
}

/* Addresses first (and TLSA records under DANE, alongside). */
static int upstream_resolve(struct conn *c)
{
	const struct service *s = c->svc->svc;
	struct fail f;

	verify_session_init(&c->verify, s);
	c->ul.svc = s;
	c->ul.name = c->svc->name;
	c->ul.dns = c->w->dns;
	c->ul.v = &c->verify;
	c->ul.wake = ul_wake;
	switch (uplookup_start(&c->ul, &f)) {
	case UPLOOKUP_READY:
		return upstream_connect(c);
	case UPLOOKUP_WAIT:
		up_enter(c, UP_RESOLVING);
		/* timeout_dns bounds each lookup; this only backs it up. */
		set_deadline(c, c->w->cfg->timeout_dns_ms + s->timeout_connect_ms);
		return 0;
	default:
		return conn_fail(c, &f);
	}
}

/* The client's side is known: start TLS with it (implicit) and connect. */
int client_known(struct conn *c)
{
	const struct service *s = c->svc->svc;

	if (s->listen_tls != MODE_IMPLICIT)
		cl_enter(c, CL_READY);
	else if (client_tls_start(c) < 0)
		return GONE;
	set_deadline(c, s->timeout_connect_ms);
	return upstream_resolve(c);
}

/* A PROXY header from a load balancer comes first. */
static int proxy_turn(struct conn *c)
{
	struct proxy_info pi;
	struct fail f;
	int r;

	if (c->cl.rd_wait)
		return 0;
	r = proxyin_read(c->pin, c->cl.fd, &pi, &f);
	if (r == PROXYIN_AGAIN) {
		c->cl.rd_wait = EV_READ;
		return 0;
	}
	free(c->pin);
	c->pin = NULL;
	if (r == PROXYIN_FAIL)
		return close_fail(c, &f);
	if (!pi.local) {
		memcpy(&c->peer, &pi.src, pi.len < sizeof(c->peer) ? pi.len : sizeof(c->peer));
		c->smtp.plain_allowed = config_plain_allowed(c->svc->svc, &c->peer.sa);
	}
	return client_known(c);
}

int open_turn(struct conn *c)
{
	int progress = 0, r;

	if (c->cl_state == CL_PROXY)
		return proxy_turn(c);
	if (c->cl_state == CL_HANDSHAKE) {
		r = client_handshake(c);
		if (r < 0)
			return r;
		progress |= r;
	}
	r = upstream_turn(c);
	if (r < 0 || c->phase != PH_OPEN)
		return r;
	progress |= r;
	if (c->cl_state == CL_READY && c->up_state == UP_READY)
		return relay_enter(c);
	return progress;
}
