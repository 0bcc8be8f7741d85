/*
 * conn: one relayed session (conn.h): its enter functions, its
 * deadlines, its start, and the one way out (conn_close), which every
 * path takes with a row of the reasons table.
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

#include "mxsess.h"

const char NO_REPLY[] = "";

static const char *const phase_names[] = { "open", "relay", "final" };
static const char *const cl_names[] = { "proxy", "handshake", "ready", "starttls" };
static const char *const up_names[] = { "none", "connecting", "client-wait", "setup",
	"handshake", "ready", "gone", "resolving" };

/* Every change of phase and of each hop's state goes through these, so
 * log_level = debug traces a session's life. */
void phase_enter(struct conn *c, enum phase ph)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x phase %s -> %s", c->id,
		    phase_names[c->phase], phase_names[ph]);
	c->phase = (uint8_t)ph;
}

void cl_enter(struct conn *c, enum cl_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x client %s -> %s", c->id,
		    cl_names[c->cl_state], cl_names[st]);
	c->cl_state = (uint8_t)st;
	c->cl.rd_wait = c->cl.wr_wait = 0;
}

void up_enter(struct conn *c, enum up_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x upstream %s -> %s", c->id,
		    up_names[c->up_state], up_names[st]);
	c->up_state = (uint8_t)st;
	c->up.rd_wait = c->up.wr_wait = 0;
}

/* The phase's deadline, at a time still to come. */
void set_deadline_at(struct conn *c, ev_tstamp at)
{
	c->deadline = at;
	c->timer.repeat = at - ev_now(c->w->loop);
	ev_timer_again(c->w->loop, &c->timer);
}

void set_deadline(struct conn *c, uint32_t ms)
{
	set_deadline_at(c, ev_now(c->w->loop) + ms / 1000.0);
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

int close_fail(struct conn *c, const struct fail *f)
{
	return conn_close(c, f->why, f->detail);
}

/*
 * The session cannot go on: drop the upstream, tell the client (after its
 * own handshake on implicit listeners) and close once that is out.
 */
int conn_fail(struct conn *c, const struct fail *f)
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

int fail_now(struct conn *c, enum reason why, const char *detail)
{
	struct fail f;

	fail_set(&f, why, detail);
	return conn_fail(c, &f);
}

int close_now(struct conn *c, enum reason why, const char *detail)
{
	return conn_close(c, why, detail);
}

/* An SMTP verdict that ends the session carries its own reply (or none). */
int fail_smtp(struct conn *c, enum reason why, const struct smtp_result *r)
{
	struct fail f;

	fail_set(&f, why, r->reason);
	f.reply = r->reply != NULL ? r->reply : NO_REPLY;
	return conn_fail(c, &f);
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
