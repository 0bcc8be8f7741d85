#include "conn.h"

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

#include "endpoint.h"
#include "handshake.h"
#include "log.h"
#include "metrics.h"
#include "mxsess.h"
#include "proxy.h"
#include "proxyin.h"
#include "reason.h"
#include "relay.h"
#include "uplookup.h"
#include "verify.h"
#include "upsetup.h"
#include "upxclient.h"

#define CONN_MAGIC 0x6d73636eu
#define GONE (-1)             /* the session was closed and freed */
#define TURNS 16              /* turns per wake-up before others get theirs */

/* After the last reply: how long to read and drop what the client still
 * sends, so the close is a FIN and not a reset that could destroy the
 * reply on its way (ms). */
#define LINGER_MS 2000

/* Use the row's reply (NULL) or none at all (NO_REPLY). */
static const char NO_REPLY[] = "";

enum cl_state { CL_PROXY, CL_HANDSHAKE, CL_READY, CL_STARTTLS };
enum up_state { UP_NONE, UP_CONNECTING, UP_CLIENT_WAIT, UP_SETUP, UP_HANDSHAKE, UP_READY,
	UP_GONE, UP_RESOLVING };
enum phase { PH_OPEN, PH_RELAY, PH_FINAL };

static const char *const phase_names[] = { "open", "relay", "final" };
static const char *const cl_names[] = { "proxy", "handshake", "ready", "starttls" };
static const char *const up_names[] = { "none", "connecting", "client-wait", "setup",
	"handshake", "ready", "gone", "resolving" };
static const char *const result_names[] = { "ok", "refused", "error" };

struct conn {
	uint32_t magic;
	uint32_t id;
	uint8_t phase, cl_state, up_state;
	bool in_again;
	bool c2u_more;                /* the client's last bytes: half a line */
	bool up_unwatched;            /* UP_CONNECTING: looked at after the client's handshake */
	enum reason why;              /* why the session is ending (FINAL) */
	struct worker *w;
	struct svc_rt *svc;
	struct conn *prev, *next;     /* worker's list of live sessions */
	struct conn *next_again;
	struct endpoint cl, up;
	struct pump c2u, u2c;
	ev_timer timer;
	ev_tstamp start;
	ev_tstamp deadline;           /* the phase's deadline; in RELAY, idle */
	ev_tstamp owed_since;         /* RELAY: a reply is owed since then */
	ev_tstamp connect_start;      /* the upstream connect in progress began */
	char *detail;                 /* words of the reason's own (FINAL) */
	struct proxyin *pin;          /* CL_PROXY: the header being read */
	struct upsetup setup;         /* UP_SETUP: the STARTTLS dialogue */
	struct uplookup ul;           /* addresses and TLSA records */
	struct verify_session verify; /* how the upstream is authenticated */
	char up_text[64];             /* the address in use, for the log */
	ev_tstamp hs_start[MH_COUNT]; /* when each hop's handshake began */
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

/* Every change of phase and of each hop's state goes through these, so
 * log_level = debug traces a session's life. */
static void phase_enter(struct conn *c, enum phase ph)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x phase %s -> %s", c->id,
		    phase_names[c->phase], phase_names[ph]);
	c->phase = (uint8_t)ph;
}

static void cl_enter(struct conn *c, enum cl_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x client %s -> %s", c->id,
		    cl_names[c->cl_state], cl_names[st]);
	c->cl_state = (uint8_t)st;
	c->cl.rd_wait = c->cl.wr_wait = 0;
}

static void up_enter(struct conn *c, enum up_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x upstream %s -> %s", c->id,
		    up_names[c->up_state], up_names[st]);
	c->up_state = (uint8_t)st;
	c->up.rd_wait = c->up.wr_wait = 0;
}

/* The phase's deadline, at a time still to come. */
static void set_deadline_at(struct conn *c, ev_tstamp at)
{
	c->deadline = at;
	c->timer.repeat = at - ev_now(c->w->loop);
	ev_timer_again(c->w->loop, &c->timer);
}

static void set_deadline(struct conn *c, uint32_t ms)
{
	set_deadline_at(c, ev_now(c->w->loop) + ms / 1000.0);
}

/* Relay progress: push the idle deadline without touching the timer heap. */
static void touch(struct conn *c)
{
	c->deadline = ev_now(c->w->loop) + c->svc->svc->timeout_idle_ms / 1000.0;
}

/*
 * The upstream owes a reply from now on (or sent bytes, which restarts
 * the wait): timeout_reply bounds the wait, not timeout_idle. The timer
 * is moved only when the reply's deadline comes before its next expiry.
 */
static void owe(struct conn *c)
{
	struct ev_loop *loop = c->w->loop;
	double reply = c->svc->svc->timeout_reply_ms / 1000.0;

	c->owed_since = ev_now(loop);
	if (reply < ev_timer_remaining(loop, &c->timer)) {
		c->timer.repeat = reply;
		ev_timer_again(loop, &c->timer);
	}
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

/* Log words are quoted: a double quote inside would end them early. */
static void unquote(char *s)
{
	for (; *s != '\0'; s++)
		if (*s == '"' || *s == '\\' || *s == '\n' || *s == '\r')
			*s = '\'';
}

static void log_session(struct conn *c, enum reason why, const char *detail)
{
	char line[1400], client[64], words[400] = "", code[64] = "";
	char subject[256], cert[300] = "";
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	int n;

	peer_text(c, client, sizeof(client));
	if (why != R_NONE) {
		reason_format(why, detail, words, sizeof(words));
		unquote(words);
	}
	if (rpt != NULL)
		snprintf(code, sizeof(code), " reason_code=%s", rpt);
	/* Only a listener that asks for client certificates verifies them. */
	if (c->cl.ssl != NULL && c->svc->svc->listen_client_ca != NULL &&
	    strcmp(c->cl_ver, "none") != 0 &&
	    tls_peer_subject(c->cl.ssl, subject, sizeof(subject)) != NULL) {
		unquote(subject);
		snprintf(cert, sizeof(cert), " client_cert=\"%s\"", subject);
	}
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s "
	    "upstream=%s upstream_tls=%s upstream_auth=%s bytes_in=%llu "
	    "bytes_out=%llu ms=%lld%s result=%s%s%s%s%s",
	    c->id, c->svc->svc->name, client, c->cl_ver, c->cl_cipher,
	    c->up_text, c->up_ver, c->up_auth,
	    (unsigned long long)c->c2u.in, (unsigned long long)c->u2c.out,
	    (long long)((ev_now(c->w->loop) - c->start) * 1000.0), cert,
	    result_names[res], why != R_NONE ? " reason=\"" : "", words,
	    why != R_NONE ? "\"" : "", code);
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

/* A hop's handshake is done: count it by version and cipher, and time it. */
static void count_handshake(struct conn *c, enum metrics_hop hop, SSL *ssl)
{
	struct metrics_worker *mw = c->w->mw;

	if (mw == NULL)
		return;
	metrics_add(&mw->handshakes[hop][metrics_version_index(tls_version(ssl))]
	    [metrics_cipher_index(tls_cipher(ssl))], 1);
	metrics_observe_hs(&mw->handshake[hop],
	    (uint64_t)((ev_now(c->w->loop) - c->hs_start[hop]) * 1e6));
}

static void count_session(struct conn *c, enum reason why)
{
	struct metrics_worker *mw = c->w->mw;
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	struct metrics_svc *ms;

	if (c->w->active != NULL)
		metrics_gauge(c->w->active, -1);
	if (mw == NULL || c->svc->mslot < 0)
		return;
	ms = &mw->svc[c->svc->mslot];
	metrics_add(&ms->sessions[res == RES_OK ? MR_OK : res == RES_REFUSED ? MR_REFUSED :
	    MR_ERROR], 1);
	metrics_add(&ms->bytes_in, c->c2u.in);
	metrics_add(&ms->bytes_out, c->u2c.out);
	metrics_observe_session(&mw->session, (uint64_t)((ev_now(c->w->loop) - c->start) * 1e6));
	if (res == RES_REFUSED && rpt != NULL)
		metrics_add(&mw->refusals[metrics_code_index(rpt)], 1);
	if (strcmp(c->up_auth, "none") != 0)
		metrics_add(&mw->auth[metrics_auth_index(c->up_auth)], 1);
}

/* The one way out: log, release everything, let the listener resume. */
static int conn_close(struct conn *c, enum reason why, const char *detail)
{
	struct worker *w = c->w;

	log_session(c, why, detail);
	count_session(c, why);
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
	upsetup_free(&c->setup);
	uplookup_free(&c->ul);
	verify_session_free(&c->verify);
	if (c->pin != NULL) {
		proxyin_free(c->pin);
		free(c->pin);
	}
	free(c->detail);
	if (--c->svc->gen->refs == 0 && c->svc->gen->retired)
		generation_free(c->svc->gen);
	c->magic = 0;
	free(c);
	w->nconns--;
	if (w->on_conn_done != NULL)
		w->on_conn_done(w);
	return GONE;
}

static int close_fail(struct conn *c, const struct fail *f)
{
	return conn_close(c, f->why, f->detail);
}

/*
 * The session cannot go on: drop the upstream, tell the client (after its
 * own handshake on implicit listeners) and close once that is out.
 */
static int conn_fail(struct conn *c, const struct fail *f)
{
	struct pump *p = &c->u2c;
	const char *reply = f->reply != NULL ? f->reply : reason_reply(f->why);

	if (c->cl_state == CL_STARTTLS || (c->phase == PH_RELAY && c->cl_state != CL_READY))
		return close_fail(c, f);
	ep_close(&c->up, c->w->loop);
	up_enter(c, UP_GONE);
	if (pump_unseen(p) > 0)
		buf_cut(p->b, pump_unseen(p));
	if (reply != NULL && *reply != '\0' && pump_insert(p, reply, strlen(reply)) < 0)
		return close_fail(c, f);
	c->why = f->why;
	free(c->detail);
	c->detail = f->detail[0] != '\0' ? strdup(f->detail) : NULL;
	phase_enter(c, PH_FINAL);
	set_deadline(c, c->svc->svc->timeout_handshake_ms);
	return 1;
}

static int fail_now(struct conn *c, enum reason why, const char *detail)
{
	struct fail f;

	fail_set(&f, why, detail);
	return conn_fail(c, &f);
}

static int close_now(struct conn *c, enum reason why, const char *detail)
{
	return conn_close(c, why, detail);
}

/* An SMTP verdict that ends the session carries its own reply (or none). */
static int fail_smtp(struct conn *c, enum reason why, const struct smtp_result *r)
{
	struct fail f;

	fail_set(&f, why, r->reason);
	f.reply = r->reply != NULL ? r->reply : NO_REPLY;
	return conn_fail(c, &f);
}

/* ---- the listen hop ---- */

static int client_handshake(struct conn *c)
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
static int client_starttls(struct conn *c)
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
static int upstream_retry(struct conn *c, enum reason why, const char *detail)
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
static int connect_probe(struct conn *c, int *err)
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
static int upstream_connected(struct conn *c)
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

static void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents);

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
static int client_known(struct conn *c)
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

/* ---- the relay ---- */

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
		return close_now(c, R_UP_LOST, err_text(&c->up));
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
			return lost(c, &c->c2u, &c->up, R_UP_LOST);
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
		return fail_now(c, R_UP_GONE, NULL);
	if (c->cl_state == CL_READY) {
		progress |= pump_finish(&c->c2u, &c->up, c->c2u_more,
		    c->u2c.eof && c->cl.shut);
		progress |= pump_finish(&c->u2c, &c->cl, true,
		    c->c2u.eof && c->up.shut);
	}
	if (c->c2u.eof && c->u2c.eof && c->up.shut && c->cl.shut)
		return close_now(c, R_NONE, NULL);
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
static int final_turn(struct conn *c)
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

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct conn *c = conn_of_timer(t);
	ev_tstamp left = due(c) - ev_now(loop);

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
	log_attach(w->loop);
}

static enum smtp_listen listen_mode(enum hop_mode m)
{
	return m == MODE_PLAIN ? SMTP_LISTEN_PLAIN :
	    m == MODE_STARTTLS ? SMTP_LISTEN_STARTTLS : SMTP_LISTEN_IMPLICIT;
}

/*
 * A PROXY header is believed only from proxy_from: anyone else is refused
 * before a byte of theirs is read as one.
 */
static int proxy_start(struct conn *c)
{
	const struct service *s = c->svc->svc;

	if (!config_proxy_trusted(s, &c->peer.sa))
		return close_now(c, R_PROXY_UNTRUSTED, NULL);
	c->pin = calloc(1, sizeof(*c->pin));
	if (c->pin == NULL)
		return close_now(c, R_NO_MEMORY, NULL);
	set_deadline(c, s->timeout_handshake_ms);
	return 1;
}

void conn_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen)
{
	const struct service *s = svc->svc;
	struct conn *c;

	if (s->upstream_mx) {
		mxsess_start(w, svc, fd, peer, peerlen);
		return;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
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
	snprintf(c->up_text, sizeof(c->up_text), "%s", svc->up_text);
	memcpy(&c->peer, peer, peerlen < sizeof(c->peer) ? peerlen : sizeof(c->peer));
	ep_init(&c->cl, fd);
	ev_init(&c->cl.io, cl_io_cb);
	ep_init(&c->up, -1);
	ev_init(&c->timer, timer_cb);
	smtp_init(&c->smtp, listen_mode(s->listen_tls), config_plain_allowed(s, peer),
	    s->upstream_tls == MODE_STARTTLS);
	if (s->upstream_xclient)
		smtp_xclient_on(&c->smtp);
	c->next = w->live;
	if (w->live != NULL)
		w->live->prev = c;
	w->live = c;
	w->nconns++;
	if (w->active != NULL)
		metrics_gauge(w->active, 1);
	/* calloc: the client starts in CL_PROXY (reading a header or not). */
	if ((s->proxy_protocol ? proxy_start(c) : client_known(c)) < 0)
		return;
	conn_step(c);
}

void conn_close_all(struct worker *w)
{
	while (w->live != NULL)
		conn_close(w->live, R_SHUTDOWN, NULL);
	mxsess_close_all(w);
}

void generation_free(struct generation *g)
{
	size_t i;

	if (g == NULL)
		return;
	for (i = 0; i < g->nsvcs; i++)
		tls_free(&g->svcs[i].tls);
	tls_tickets_free(g->tickets);   /* after the contexts that use them */
	free(g->svcs);
	config_free(g->cfg);
	free(g);
}
