#include "conn.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endpoint.h"
#include "log.h"
#include "proxy.h"
#include "relay.h"

#define CONN_MAGIC 0x6d73636eu
#define GONE (-1)             /* the session was closed and freed */
#define TURNS 16              /* turns per wake-up before others get theirs */

/* Replies of the shim's own when a session cannot go on. */
static const char reply_unavailable[] =
    "421 4.4.1 Upstream mail server unavailable, try again later\r\n";
static const char reply_timeout[] =
    "421 4.4.2 Upstream mail server timed out, try again later\r\n";
static const char reply_tls_failed[] =
    "421 4.7.0 TLS to the upstream failed, try again later\r\n";
static const char reply_internal[] =
    "421 4.3.0 Temporary failure, try again later\r\n";
static const char reply_no_fds[] =
    "421 4.3.2 System resources exhausted, try again later\r\n";
static const char reply_upstream_gone[] =
    "421 4.4.2 Upstream mail server closed the connection\r\n";

/* After the last reply: how long to read and drop what the client still
 * sends, so the close is a FIN and not a reset that could destroy the
 * reply on its way (ms). */
#define LINGER_MS 2000

enum cl_state { CL_HANDSHAKE, CL_READY, CL_STARTTLS, CL_PROXY };
enum up_state { UP_CONNECTING, UP_SETUP, UP_HANDSHAKE, UP_READY, UP_GONE };
enum phase { PH_OPEN, PH_RELAY, PH_FINAL };
enum result { RES_OK, RES_REFUSED, RES_ERROR };

static const char *const phase_names[] = { "open", "relay", "final" };
static const char *const result_names[] = { "ok", "refused", "error" };

struct conn {
	uint32_t magic;
	uint32_t id;
	uint8_t phase, cl_state, up_state, result;
	bool in_again;
	bool c2u_more;                /* the client's last bytes: half a line */
	struct worker *w;
	struct svc_rt *svc;
	struct conn *prev, *next;     /* worker's list of live sessions */
	struct conn *next_again;
	struct endpoint cl, up;
	struct pump c2u, u2c;
	ev_timer timer;
	ev_tstamp start, deadline;
	char *reason;                 /* why the session is ending (FINAL) */
	char *greeting;               /* upstream banner held during STARTTLS */
	uint8_t *proxy;               /* PROXY header read so far (CL_PROXY) */
	uint16_t proxy_len;
	uint32_t greeting_len;
	const char *cl_ver, *cl_cipher, *up_ver, *up_auth;
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} peer;
	struct smtp smtp;
};

static void conn_step(struct conn *c);

static struct conn *conn_of_timer(ev_timer *t)
{
	struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));

	assert(c->magic == CONN_MAGIC);
	return c;
}

static void enter(struct conn *c, enum phase ph)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x phase %s -> %s", c->id,
		    phase_names[c->phase], phase_names[ph]);
	c->phase = (uint8_t)ph;
}

static void set_deadline(struct conn *c, uint32_t ms)
{
	c->deadline = ev_now(c->w->loop) + ms / 1000.0;
	c->timer.repeat = ms / 1000.0;
	ev_timer_again(c->w->loop, &c->timer);
}

/* Relay progress: push the idle deadline without touching the timer heap. */
static void touch(struct conn *c)
{
	c->deadline = ev_now(c->w->loop) + c->svc->svc->timeout_idle_ms / 1000.0;
}

static void peer_text(const struct conn *c, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (c->peer.sa.sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &c->peer.in6.sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(c->peer.in6.sin6_port));
	} else {
		inet_ntop(AF_INET, &c->peer.in.sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(c->peer.in.sin_port));
	}
}

static void log_session(struct conn *c, enum result res, const char *reason)
{
	char line[1024], client[64];
	int n;

	peer_text(c, client, sizeof(client));
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s "
	    "upstream=%s upstream_tls=%s upstream_auth=%s bytes_in=%llu "
	    "bytes_out=%llu ms=%lld result=%s%s%s%s",
	    c->id, c->svc->svc->name, client, c->cl_ver, c->cl_cipher,
	    c->svc->up_text, c->up_ver, c->up_auth,
	    (unsigned long long)c->c2u.in, (unsigned long long)c->u2c.out,
	    (long long)((ev_now(c->w->loop) - c->start) * 1000.0),
	    result_names[res], reason ? " reason=\"" : "", reason ? reason : "",
	    reason ? "\"" : "");
	if (n > 0)
		log_line(LEVEL_INFO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void again_remove(struct conn *c)
{
	struct conn **pp;

	for (pp = &c->w->again; *pp != NULL; pp = &(*pp)->next_again) {
		if (*pp == c) {
			*pp = c->next_again;
			break;
		}
	}
	c->in_again = false;
}

/* The one way out: log, release everything, let the listener resume. */
static int conn_close(struct conn *c, enum result res, const char *reason)
{
	struct worker *w = c->w;

	log_session(c, res, reason);
	ep_close(&c->cl, w->loop);
	ep_close(&c->up, w->loop);
	pump_free(&c->c2u);
	pump_free(&c->u2c);
	ev_timer_stop(w->loop, &c->timer);
	if (c->in_again)
		again_remove(c);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		w->live = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	free(c->greeting);
	free(c->reason);
	free(c->proxy);
	if (--c->svc->gen->refs == 0 && c->svc->gen->retired)
		generation_free(c->svc->gen);
	c->magic = 0;
	free(c);
	w->nconns--;
	if (w->on_conn_done != NULL)
		w->on_conn_done(w);
	return GONE;
}

/*
 * The upstream hop failed or broke the policy: drop it, tell the client
 * (after its own handshake on implicit listeners) and close.
 */
static int conn_fail(struct conn *c, enum result res, const char *reason,
    const char *reply)
{
	struct pump *p = &c->u2c;

	if (c->cl_state == CL_STARTTLS || (c->phase == PH_RELAY && c->cl_state != CL_READY))
		return conn_close(c, res, reason);
	ep_close(&c->up, c->w->loop);
	c->up_state = UP_GONE;
	if (pump_unseen(p) > 0)
		buf_cut(p->b, pump_unseen(p));
	if (reply != NULL && pump_insert(p, reply, strlen(reply)) < 0)
		return conn_close(c, res, reason);
	c->result = (uint8_t)res;
	free(c->reason);
	c->reason = reason ? strdup(reason) : NULL;
	enter(c, PH_FINAL);
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	return 1;
}

static int client_handshake(struct conn *c)
{
	char why[200], reason[240];
	int r;

	if (c->cl.wr_wait)
		return 0;
	r = ep_handshake(&c->cl);
	if (r == EP_AGAIN)
		return 0;
	if (r == EP_ERROR) {
		snprintf(reason, sizeof(reason), "client %s",
		    tls_handshake_error(c->cl.ssl, why, sizeof(why)));
		return conn_close(c, RES_ERROR, reason);
	}
	c->cl_state = CL_READY;
	c->cl_ver = tls_version(c->cl.ssl);
	c->cl_cipher = tls_cipher(c->cl.ssl);
	c->cl.rd_wait = c->cl.wr_wait = 0;
	if (c->phase == PH_RELAY) {
		smtp_listen_tls_up(&c->smtp);
		touch(c);
	}
	return 1;
}

/* The 220 to STARTTLS has gone out: the listen hop turns to TLS. */
static int client_starttls(struct conn *c)
{
	if (pump_approved(&c->u2c) > 0)
		return 0;
	c->cl.ssl = tls_new_listen(&c->svc->tls, c->cl.fd);
	if (c->cl.ssl == NULL)
		return conn_close(c, RES_ERROR, "cannot start TLS with the client");
	c->cl_state = CL_HANDSHAKE;
	c->cl.rd_wait = c->cl.wr_wait = 0;
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	return 1;
}

static int upstream_tls_start(struct conn *c)
{
	c->up.ssl = tls_new_upstream(&c->svc->tls, c->up.fd);
	if (c->up.ssl == NULL)
		return conn_fail(c, RES_ERROR, "cannot start TLS with the upstream", reply_internal);
	c->up_state = UP_HANDSHAKE;
	c->up.rd_wait = c->up.wr_wait = 0;
	return 1;
}

/*
 * Announce the real client to the upstream before anything else, TLS
 * included. A header this small always fits a fresh socket's buffer.
 */
static int send_proxy(struct conn *c)
{
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	uint8_t hdr[128];
	size_t n;

	if (getsockname(c->cl.fd, (struct sockaddr *)&local, &len) < 0)
		return -1;
	n = proxy_build(c->svc->svc->upstream_proxy_protocol == PROXY_V2 ? 2 : 1,
	    &c->peer.sa, (struct sockaddr *)&local, hdr, sizeof(hdr));
	if (n == 0 || send(c->up.fd, hdr, n, MSG_NOSIGNAL) != (ssize_t)n)
		return -1;
	return 0;
}

static int upstream_connected(struct conn *c)
{
	char reason[200];
	int err = 0;
	socklen_t len = sizeof(err);

	if (c->up.wr_wait)
		return 0;
	if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		snprintf(reason, sizeof(reason), "upstream connect failed: %s", strerror(err));
		return conn_fail(c, RES_ERROR, reason, reply_unavailable);
	}
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	if (c->svc->svc->upstream_proxy_protocol != PROXY_NO && send_proxy(c) < 0)
		return conn_fail(c, RES_ERROR, "cannot send the PROXY header upstream", reply_unavailable);
	switch (c->svc->svc->upstream_tls) {
	case MODE_PLAIN:
		c->up_state = UP_READY;
		return 1;
	case MODE_IMPLICIT:
		return upstream_tls_start(c);
	default:
		c->up_state = UP_SETUP;
		c->up.rd_wait = 0;
		return 1;
	}
}

static int upstream_handshake(struct conn *c)
{
	const char *why, *auth;
	char buf[200], reason[240];
	int r;

	if (c->up.wr_wait)
		return 0;
	r = ep_handshake(&c->up);
	if (r == EP_AGAIN)
		return 0;
	if (r == EP_ERROR) {
		snprintf(reason, sizeof(reason), "upstream %s",
		    tls_handshake_error(c->up.ssl, buf, sizeof(buf)));
		return conn_fail(c, RES_REFUSED, reason, reply_tls_failed);
	}
	why = tls_check_upstream(c->up.ssl, c->svc->svc, &auth);
	if (why != NULL)
		return conn_fail(c, RES_REFUSED, why, reply_tls_failed);
	c->up_ver = tls_version(c->up.ssl);
	c->up_auth = auth;
	c->up_state = UP_READY;
	c->up.rd_wait = c->up.wr_wait = 0;
	if (c->svc->svc->upstream_tls == MODE_STARTTLS)
		smtp_upstream_tls_up(&c->smtp);
	return 1;
}

static uint8_t *unseen_at(struct pump *p)
{
	return p->b->data + p->b->off + p->b->fwd;
}

/* One verdict of the upstream STARTTLS dialogue. */
static int setup_verdict(struct conn *c, struct smtp_result r)
{
	static const char starttls[] = "STARTTLS\r\n";
	struct pump *p = &c->u2c;

	switch (r.v) {
	case SMTP_SEND_EHLO:
		free(c->greeting);
		c->greeting = malloc(r.n);
		if (c->greeting == NULL)
			return conn_fail(c, RES_ERROR, "out of memory", reply_internal);
		memcpy(c->greeting, unseen_at(p), r.n);
		c->greeting_len = (uint32_t)r.n;
		buf_cut(p->b, r.n);
		return pump_insert(&c->c2u, c->svc->ehlo, c->svc->ehlo_len) < 0 ?
		    conn_fail(c, RES_ERROR, "out of memory", reply_internal) : 1;
	case SMTP_SEND_STARTTLS:
		buf_cut(p->b, r.n);
		return pump_insert(&c->c2u, starttls, sizeof(starttls) - 1) < 0 ?
		    conn_fail(c, RES_ERROR, "out of memory", reply_internal) : 1;
	case SMTP_START_TLS:
		buf_cut(p->b, r.n);
		if (pump_unseen(p) > 0 || pump_approved(&c->c2u) > 0)
			return conn_fail(c, RES_REFUSED,
			    "upstream sent data after its STARTTLS 220 (injection)", reply_tls_failed);
		pump_free(p);
		return upstream_tls_start(c);
	case SMTP_REFUSE:
		return conn_fail(c, RES_REFUSED, r.reason, reply_tls_failed);
	case SMTP_CLOSE:
		return conn_fail(c, RES_ERROR, r.reason, reply_unavailable);
	default:
		return 0;
	}
}

/* Upstream STARTTLS: greeting, EHLO, STARTTLS, 220; then the handshake. */
static int upstream_setup(struct conn *c)
{
	int progress = 0, r;

	r = pump_write(&c->c2u, &c->up);
	if (r == PUMP_ERROR)
		return conn_fail(c, RES_ERROR, "upstream connection lost during STARTTLS", reply_unavailable);
	progress |= r > 0;
	r = pump_read(&c->u2c, &c->up);
	if (r == PUMP_NOMEM)
		return conn_fail(c, RES_ERROR, "out of memory for a relay buffer", reply_internal);
	if (r == PUMP_ERROR)
		return conn_fail(c, RES_ERROR, "upstream connection lost during STARTTLS", reply_unavailable);
	progress |= r > 0;
	while (c->up_state == UP_SETUP && pump_unseen(&c->u2c) > 0) {
		struct smtp_result v = smtp_setup(&c->smtp, unseen_at(&c->u2c),
		    pump_unseen(&c->u2c));
		if (v.v == SMTP_MORE)
			break;
		r = setup_verdict(c, v);
		if (r <= 0 || c->phase != PH_OPEN)
			return r;
		progress = 1;
	}
	if (c->up_state == UP_SETUP && c->u2c.eof)
		return conn_fail(c, RES_ERROR, "upstream closed the connection during STARTTLS", reply_unavailable);
	if (c->up_state == UP_SETUP && pump_approved(&c->c2u) > 0) {
		r = pump_write(&c->c2u, &c->up);
		if (r == PUMP_ERROR)
			return conn_fail(c, RES_ERROR, "upstream connection lost during STARTTLS", reply_unavailable);
	}
	return progress;
}

static int upstream_turn(struct conn *c)
{
	switch (c->up_state) {
	case UP_CONNECTING:
		return upstream_connected(c);
	case UP_SETUP:
		return upstream_setup(c);
	case UP_HANDSHAKE:
		return upstream_handshake(c);
	default:
		return 0;
	}
}

static int relay_enter(struct conn *c)
{
	enter(c, PH_RELAY);
	set_deadline(c, c->svc->svc->timeout_idle_ms);
	if (c->greeting != NULL) {
		/* The banner was read before TLS; the client gets it now. */
		if (pump_insert(&c->u2c, c->greeting, c->greeting_len) < 0)
			return conn_fail(c, RES_ERROR, "out of memory", reply_internal);
		free(c->greeting);
		c->greeting = NULL;
	}
	return 1;
}

static int upstream_connect(struct conn *c);

/* The client's side is known: start TLS with it (implicit) and connect. */
static int client_known(struct conn *c)
{
	const struct service *s = c->svc->svc;

	c->cl_state = CL_READY;
	c->cl.rd_wait = c->cl.wr_wait = 0;
	if (s->listen_tls == MODE_IMPLICIT) {
		c->cl.ssl = tls_new_listen(&c->svc->tls, c->cl.fd);
		if (c->cl.ssl == NULL)
			return conn_close(c, RES_ERROR, "cannot start TLS with the client");
		c->cl_state = CL_HANDSHAKE;
	}
	set_deadline(c, s->timeout_connect_ms);
	return upstream_connect(c);
}

/*
 * A PROXY header from a load balancer comes first. Peek, then take exactly
 * the header's bytes, so what follows (a TLS ClientHello, say) stays in
 * the socket for whoever reads next. While the header is incomplete every
 * byte seen belongs to it, so those are taken too (no busy loop on a peek).
 */
static int proxy_turn(struct conn *c)
{
	struct proxy_info pi;
	ssize_t n;
	int r;

	if (c->cl.rd_wait)
		return 0;
	if (c->proxy == NULL && (c->proxy = malloc(PROXY_MAX)) == NULL)
		return conn_close(c, RES_ERROR, "out of memory");
	n = recv(c->cl.fd, c->proxy + c->proxy_len, PROXY_MAX - c->proxy_len, MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
		c->cl.rd_wait = EV_READ;
		return 0;
	}
	if (n <= 0)
		return conn_close(c, RES_ERROR, "client left before its PROXY header");
	r = proxy_parse(c->proxy, c->proxy_len + (size_t)n, &pi);
	if (r < 0)
		return conn_close(c, RES_REFUSED, "bad PROXY header");
	if (r > 0)
		n = r - c->proxy_len;
	if (recv(c->cl.fd, c->proxy + c->proxy_len, (size_t)n, 0) != n)
		return conn_close(c, RES_ERROR, "client connection lost");
	c->proxy_len += (uint16_t)n;
	if (r == 0)
		return 1;
	free(c->proxy);
	c->proxy = NULL;
	if (!pi.local) {
		memcpy(&c->peer, &pi.src, pi.len < sizeof(c->peer) ? pi.len : sizeof(c->peer));
		c->smtp.plain_allowed = config_plain_allowed(c->svc->svc, &c->peer.sa);
	}
	return client_known(c);
}

static int open_turn(struct conn *c)
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

/* One SMTP verdict on the client's bytes. */
static int client_verdict(struct conn *c, struct smtp_result r)
{
	struct pump *p = &c->c2u;

	switch (r.v) {
	case SMTP_PASS:
		p->b->fwd += (uint32_t)r.n;
		return 1;
	case SMTP_REPLY:
		buf_cut(p->b, r.n);
		if (r.reply_len > 0 && pump_insert(&c->u2c, r.reply, r.reply_len) < 0)
			return conn_fail(c, RES_ERROR, "out of memory", reply_internal);
		return 1;
	case SMTP_STARTTLS:
		buf_cut(p->b, r.n);
		if (pump_unseen(p) > 0)
			return conn_close(c, RES_REFUSED,
			    "client sent data after STARTTLS (command injection)");
		if (pump_insert(&c->u2c, r.reply, r.reply_len) < 0)
			return conn_fail(c, RES_ERROR, "out of memory", reply_internal);
		c->cl_state = CL_STARTTLS;
		return 1;
	case SMTP_CLOSE:
		return conn_fail(c, RES_REFUSED, r.reason, r.reply);
	default:
		c->c2u_more = r.v == SMTP_MORE;
		return 0;
	}
}

/* Hand the client's new bytes to the SMTP layer. */
static int client_parse(struct conn *c)
{
	struct pump *p = &c->c2u;
	int progress = 0, r;

	while (c->cl_state == CL_READY && pump_unseen(p) > 0) {
		/* Room for a reply of the shim's own, which keeps its place. */
		if (pump_room(&c->u2c) < 128)
			break;
		c->c2u_more = false;
		r = client_verdict(c, smtp_client(&c->smtp, unseen_at(p), pump_unseen(p)));
		if (r <= 0 || c->phase != PH_RELAY)
			return r;
		progress = 1;
	}
	return progress;
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
			break;
		case SMTP_REPLY:
			buf_cut(p->b, r.n);
			if (buf_insert(p->b, r.reply, r.reply_len) < 0)
				return conn_fail(c, RES_ERROR, "EHLO reply too long", reply_internal);
			break;
		case SMTP_CLOSE:
			return conn_fail(c, RES_ERROR, r.reason, r.reply);
		default:
			return progress;
		}
		progress = 1;
	}
	return progress;
}

/* A direction whose source ended: once drained, pass the end on. */
static int half_close(struct pump *p, struct endpoint *dst, bool partial)
{
	int r;

	if (!p->eof || dst->shut || pump_approved(p) > 0)
		return 0;
	if (pump_unseen(p) > 0) {
		if (!partial)
			return 0;
		buf_cut(p->b, pump_unseen(p));
	}
	r = ep_shutdown(dst);
	if (r == EP_AGAIN)
		return 0;
	return 1;
}

/*
 * A read failed (often a reset after the peer closed). If everything the
 * other side had to say was delivered and it has gone, the session is
 * complete; otherwise it broke.
 */
static int lost(struct conn *c, const struct pump *toward, const struct endpoint *peer,
    const char *reason)
{
	if (toward->eof && peer->shut)
		return conn_close(c, RES_OK, NULL);
	return conn_close(c, RES_ERROR, reason);
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
 * Only bytes that get somewhere count as activity for timeout_idle: a
 * client dribbling a command line that never ends (slowloris) moves
 * nothing, and is closed when the idle time is up.
 */
static int relay_io(struct conn *c)
{
	int progress = 0, moved = 0, r;

	if (c->cl_state == CL_READY && pump_can_read(&c->c2u)) {
		r = pump_read(&c->c2u, &c->cl);
		if (r == PUMP_NOMEM)
			return conn_fail(c, RES_ERROR, "out of memory for a relay buffer", reply_internal);
		if (r == PUMP_ERROR)
			return lost(c, &c->u2c, &c->cl, "client connection lost");
		if (r > 0 && c->c2u.in == (uint64_t)r && speaks_tls(c))
			return conn_close(c, RES_ERROR, "client sent a TLS handshake to a plaintext port");
		progress |= r > 0;
	}
	if ((r = client_parse(c)) < 0 || c->phase != PH_RELAY)
		return r;
	progress |= r;
	r = pump_write(&c->c2u, &c->up);
	if (r == PUMP_ERROR)
		return conn_close(c, RES_ERROR, "upstream connection lost");
	moved |= r > 0;
	if (pump_can_read(&c->u2c)) {
		r = pump_read(&c->u2c, &c->up);
		if (r == PUMP_NOMEM)
			return conn_close(c, RES_ERROR, "out of memory for a relay buffer");
		if (r == PUMP_ERROR)
			return lost(c, &c->c2u, &c->up, "upstream connection lost");
		moved |= r > 0;
	}
	if ((r = server_parse(c)) < 0 || c->phase != PH_RELAY)
		return r;
	progress |= r;
	if (c->cl_state != CL_HANDSHAKE) {
		r = pump_write(&c->u2c, &c->cl);
		if (r == PUMP_ERROR)
			return conn_close(c, RES_ERROR, "client connection lost");
		moved |= r > 0;
	}
	if (moved)
		touch(c);
	return progress | moved;
}

static int relay_turn(struct conn *c)
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
		return conn_fail(c, RES_ERROR, "upstream closed the connection before replying",
		    reply_upstream_gone);
	if (c->cl_state == CL_READY) {
		progress |= half_close(&c->c2u, &c->up, c->c2u_more);
		progress |= half_close(&c->u2c, &c->cl, true);
	}
	if (c->c2u.eof && c->u2c.eof && c->up.shut && c->cl.shut)
		return conn_close(c, RES_OK, NULL);
	return progress;
}

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
			return conn_close(c, (enum result)c->result, c->reason);
	}
	return 0;
}

/* The last reply goes out, then the session ends as decided. */
static int final_turn(struct conn *c)
{
	int r;

	if (c->cl_state == CL_HANDSHAKE)
		return client_handshake(c);
	if (c->cl.shut)
		return linger(c);
	r = pump_write(&c->u2c, &c->cl);
	if (r == PUMP_ERROR)
		return conn_close(c, (enum result)c->result, c->reason);
	if (pump_approved(&c->u2c) > 0)
		return r > 0;
	r = ep_shutdown(&c->cl);
	if (r == EP_AGAIN)
		return 0;
	if (r == EP_ERROR)
		return conn_close(c, (enum result)c->result, c->reason);
	c->cl.rd_wait = 0;
	set_deadline(c, LINGER_MS < c->svc->svc->timeout_handshake_ms ?
	    LINGER_MS : c->svc->svc->timeout_handshake_ms);
	return 1;
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

static int want(struct endpoint *e, bool rd, bool wr)
{
	int ev = 0;

	if (rd)
		ev |= e->rd_wait ? e->rd_wait : EV_READ;
	if (wr)
		ev |= e->wr_wait ? e->wr_wait : EV_WRITE;
	return ev;
}

/* Arm each socket for exactly what the session waits for now. */
static void conn_arm(struct conn *c)
{
	struct ev_loop *loop = c->w->loop;
	bool cl_hs = c->cl_state == CL_HANDSHAKE;
	bool relay = c->phase == PH_RELAY;
	bool cl_io = c->cl_state == CL_READY && c->phase != PH_OPEN;
	bool up_io = relay && c->up_state == UP_READY;

	if (c->cl_state == CL_PROXY) {
		ep_watch(&c->cl, loop, EV_READ);
		return;
	}
	if (c->phase == PH_FINAL && c->cl.shut) {
		ep_watch(&c->cl, loop, want(&c->cl, true, false));
		return;
	}
	ep_watch(&c->cl, loop, cl_hs ? want(&c->cl, false, true) :
	    want(&c->cl, cl_io && relay && pump_can_read(&c->c2u),
	    (cl_io || c->cl_state == CL_STARTTLS) &&
	    (pump_approved(&c->u2c) > 0 || (c->u2c.eof && !c->cl.shut))));
	if (c->up.fd < 0)
		return;
	switch (c->up_state) {
	case UP_CONNECTING:
	case UP_HANDSHAKE:
		ep_watch(&c->up, loop, want(&c->up, false, true));
		break;
	case UP_SETUP:
		ep_watch(&c->up, loop, want(&c->up, true, pump_approved(&c->c2u) > 0));
		break;
	default:
		ep_watch(&c->up, loop, want(&c->up, up_io && pump_can_read(&c->u2c),
		    up_io && (pump_approved(&c->c2u) > 0 || (c->c2u.eof && !c->up.shut))));
	}
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

static void conn_step(struct conn *c)
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

/* An fd event clears what waited for it. */
static void ep_ready(struct endpoint *e, int revents)
{
	if (revents & EV_READ) {
		if (e->rd_wait == EV_READ)
			e->rd_wait = 0;
		if (e->wr_wait == EV_READ)
			e->wr_wait = 0;
	}
	if (revents & EV_WRITE) {
		if (e->rd_wait == EV_WRITE)
			e->rd_wait = 0;
		if (e->wr_wait == EV_WRITE)
			e->wr_wait = 0;
	}
}

static void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, cl.io));

	(void)loop;
	assert(c->magic == CONN_MAGIC);
	ep_ready(&c->cl, revents);
	conn_step(c);
}

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, up.io));

	(void)loop;
	assert(c->magic == CONN_MAGIC);
	ep_ready(&c->up, revents);
	conn_step(c);
}

static int conn_timeout(struct conn *c)
{
	switch (c->phase) {
	case PH_OPEN:
		if (c->cl_state == CL_PROXY)
			return conn_close(c, RES_ERROR, "no PROXY header in time");
		if (c->cl_state != CL_READY)
			return conn_close(c, RES_ERROR, "client TLS handshake timeout");
		if (c->up_state == UP_CONNECTING)
			return conn_fail(c, RES_ERROR, "upstream connect timeout", reply_unavailable);
		return conn_fail(c, RES_ERROR, "upstream handshake timeout", reply_timeout);
	case PH_RELAY:
		if (c->cl_state != CL_READY)
			return conn_close(c, RES_ERROR, "client TLS handshake timeout");
		return conn_close(c, RES_ERROR, "idle timeout");
	default:
		return conn_close(c, (enum result)c->result, c->reason);
	}
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct conn *c = conn_of_timer(t);
	ev_tstamp left = c->deadline - ev_now(loop);

	(void)revents;
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
}

static int upstream_connect(struct conn *c)
{
	const struct svc_rt *svc = c->svc;
	char reason[200];
	int fd, one = 1;

	fd = socket(svc->up_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		int e = errno;
		snprintf(reason, sizeof(reason), "cannot open upstream socket: %s", strerror(e));
		/* Out of descriptors is the shim's own limit, not the upstream's. */
		return conn_fail(c, RES_ERROR, reason,
		    e == EMFILE || e == ENFILE ? reply_no_fds : reply_unavailable);
	}
	ep_init(&c->up, fd);
	ev_init(&c->up.io, up_io_cb);
	/* SMTP is a dialogue of short lines: no Nagle delay on replies. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->up_state = UP_CONNECTING;
	if (connect(fd, (const struct sockaddr *)&svc->up_addr, svc->up_len) < 0) {
		if (errno != EINPROGRESS) {
			snprintf(reason, sizeof(reason), "upstream connect failed: %s", strerror(errno));
			return conn_fail(c, RES_ERROR, reason, reply_unavailable);
		}
		c->up.wr_wait = EV_WRITE;
	}
	return 1;
}

static enum smtp_listen listen_mode(enum hop_mode m)
{
	return m == MODE_PLAIN ? SMTP_LISTEN_PLAIN :
	    m == MODE_STARTTLS ? SMTP_LISTEN_STARTTLS : SMTP_LISTEN_IMPLICIT;
}

void conn_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen)
{
	const struct service *s = svc->svc;
	struct conn *c = calloc(1, sizeof(*c));
	int one = 1;

	if (c == NULL) {
		log_msg(LEVEL_WARN, "out of memory: dropping a client of service %s", s->name);
		close(fd);
		return;
	}
	c->magic = CONN_MAGIC;
	c->id = w->next_id++;
	svc->gen->refs++;
	c->w = w;
	c->svc = svc;
	c->start = ev_now(w->loop);
	c->cl_ver = c->cl_cipher = c->up_ver = c->up_auth = "none";
	memcpy(&c->peer, peer, peerlen < sizeof(c->peer) ? peerlen : sizeof(c->peer));
	ep_init(&c->cl, fd);
	ev_init(&c->cl.io, cl_io_cb);
	ep_init(&c->up, -1);
	ev_init(&c->timer, timer_cb);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	smtp_init(&c->smtp, listen_mode(s->listen_tls), config_plain_allowed(s, peer),
	    s->upstream_tls == MODE_STARTTLS);
	c->next = w->live;
	if (w->live != NULL)
		w->live->prev = c;
	w->live = c;
	w->nconns++;
	if (s->proxy_protocol) {
		c->cl_state = CL_PROXY;
		set_deadline(c, s->timeout_handshake_ms);
	} else if (client_known(c) < 0) {
		return;
	}
	conn_step(c);
}

void conn_close_all(struct worker *w)
{
	while (w->live != NULL)
		conn_close(w->live, RES_ERROR, "mailshim is shutting down");
}

void generation_free(struct generation *g)
{
	size_t i;

	if (g == NULL)
		return;
	for (i = 0; i < g->nsvcs; i++)
		tls_free(&g->svcs[i].tls);
	free(g->svcs);
	config_free(g->cfg);
	free(g);
}
