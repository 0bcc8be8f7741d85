/*
 * conn_int.h: what the files of one relayed session share (conn.h is the
 * public side): struct conn, its states, and the functions by which one
 * part hands the session to another. conn.c owns the enter functions,
 * the deadlines and the one way out; conn_open.c the OPEN phase (the
 * listen hop's TLS, the upstream's lookup, connect, PROXY header,
 * STARTTLS dialogue and handshake); conn_relay.c the RELAY and FINAL
 * phases; conn_events.c the event callbacks, the timer and the turn
 * loop; conn_log.c the session's log line and counters.
 */
#ifndef MAILSHIM_CONN_INT_H
#define MAILSHIM_CONN_INT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "endpoint.h"
#include "handshake.h"
#include "log.h"
#include "metrics.h"
#include "proxyin.h"
#include "reason.h"
#include "relay.h"
#include "uplookup.h"
#include "upsetup.h"
#include "verify.h"

#define CONN_MAGIC 0x6d73636eu
#define GONE (-1)             /* the session was closed and freed */
#define TURNS 16              /* turns per wake-up before others get theirs */

/* After the last reply: how long to read and drop what the client still
 * sends, so the close is a FIN and not a reset that could destroy the
 * reply on its way (ms). */
#define LINGER_MS 2000

/* Use the row's reply (NULL) or none at all (NO_REPLY). */
extern const char NO_REPLY[];

enum cl_state { CL_PROXY, CL_HANDSHAKE, CL_READY, CL_STARTTLS };
enum up_state { UP_NONE, UP_CONNECTING, UP_CLIENT_WAIT, UP_SETUP, UP_HANDSHAKE, UP_READY,
	UP_GONE, UP_RESOLVING };
enum phase { PH_OPEN, PH_RELAY, PH_FINAL };

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
	uint32_t outq_seen;           /* the upstream's send queue at the last look */
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

/* conn.c: every change of phase and of each hop's state goes through
 * these (traced at log_level = debug). */
void phase_enter(struct conn *c, enum phase ph);
void cl_enter(struct conn *c, enum cl_state st);
void up_enter(struct conn *c, enum up_state st);
/* The phase's deadline: at a time still to come, or ms from now. */
void set_deadline_at(struct conn *c, ev_tstamp at);
void set_deadline(struct conn *c, uint32_t ms);

/* Relay progress: push the idle deadline without touching the timer heap. */
static inline void touch(struct conn *c)
{
	c->deadline = ev_now(c->w->loop) + c->svc->svc->timeout_idle_ms / 1000.0;
}

/*
 * The upstream owes a reply from now on (or sent bytes, which restarts
 * the wait): timeout_reply bounds the wait, not timeout_idle. The timer
 * is moved only when the reply's deadline comes before its next expiry.
 */
static inline void owe(struct conn *c)
{
	struct ev_loop *loop = c->w->loop;
	double reply = c->svc->svc->timeout_reply_ms / 1000.0;

	c->owed_since = ev_now(loop);
	if (reply < ev_timer_remaining(loop, &c->timer)) {
		c->timer.repeat = reply;
		ev_timer_again(loop, &c->timer);
	}
}

/*
 * conn.c: the ways a session ends. Each returns what a turn returns:
 * GONE once the session is closed and freed, 1 when it goes on (FINAL:
 * the last reply is on its way).
 */
int close_now(struct conn *c, enum reason why, const char *detail);
int close_fail(struct conn *c, const struct fail *f);
int conn_fail(struct conn *c, const struct fail *f);
int fail_now(struct conn *c, enum reason why, const char *detail);
int fail_smtp(struct conn *c, enum reason why, const struct smtp_result *r);

/* conn_log.c */
void log_session(struct conn *c, enum reason why, const char *detail);
void count_handshake(struct conn *c, enum metrics_hop hop, SSL *ssl);
void count_session(struct conn *c, enum reason why);

/*
 * conn_open.c, conn_relay.c: a turn does what the session's state allows
 * now; it returns GONE, 0 (nothing moved: wait for an event) or 1.
 */
int client_handshake(struct conn *c);
int client_starttls(struct conn *c);
int client_known(struct conn *c);
int upstream_connected(struct conn *c);
int upstream_retry(struct conn *c, enum reason why, const char *detail);
int connect_probe(struct conn *c, int *err);
int open_turn(struct conn *c);
int relay_turn(struct conn *c);
int final_turn(struct conn *c);

/* conn_events.c */
void conn_step(struct conn *c);
void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents);
void up_io_cb(struct ev_loop *loop, ev_io *io, int revents);
void timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

#endif
