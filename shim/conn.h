/*
 * conn: one relayed session, both hops. A session is one struct owning
 * the two endpoints, the two pumps, the SMTP state and one timer; its
 * life is a small state machine per hop plus a phase:
 *
 *   OPEN   the upstream connects (and, for STARTTLS, talks EHLO/STARTTLS
 *          and hand-shakes); an implicit-TLS client hand-shakes meanwhile
 *          (a PROXY v2 header, which tells that TLS, waits for it; a
 *          plain upstream's connect is looked at only once the client's
 *          handshake is done, or when the timer comes)
 *   RELAY  bytes flow both ways through the SMTP layer; a STARTTLS from
 *          the client switches the listen hop to TLS in place
 *   FINAL  the upstream is gone (or has answered QUIT with 221); the
 *          shim's last reply (421...) or the 221 is flushed to the
 *          client, then the session closes
 *
 * The PROXY header reader (proxyin.c), the upstream STARTTLS dialogue
 * (upsetup.c) and the TLS handshake of either hop (handshake.c) own their
 * small state and return verdicts; the session acts on them. Every state
 * change goes through an enter function (traced at log_level = debug), and
 * every path out through one close function with a row of the reasons
 * table (reason.h), which writes the session's log line.
 */
#ifndef MAILSHIM_CONN_H
#define MAILSHIM_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#include "config.h"
#include "smtp.h"
#include "tls.h"

struct generation;
struct upname;
struct dns;
struct metrics_worker;

/* A service as a worker runs it: built once per configuration load. */
struct svc_rt {
	const struct service *svc;
	struct generation *gen;            /* the load it belongs to */
	struct svc_tls tls;
	struct upname *name;               /* the upstream's addresses, per worker */
	int mslot;                         /* its counters (metrics.h); -1: none */
	char up_text[64];                  /* upstream as configured, for the log */
	char ehlo[300];                    /* "EHLO helo_name\r\n" */
	uint16_t ehlo_len;
};

struct conn;
struct mxsess;
struct listen_set;

/*
 * One configuration load: the parsed configuration and the services built
 * from it (TLS contexts included). The supervisor builds each generation
 * and forks its workers on it; a worker serves that one generation all
 * its life (a reload starts new workers), so it is never retired there.
 */
struct generation {
	struct config *cfg;
	struct svc_rt *svcs;
	size_t nsvcs;
	struct tickets *tickets;           /* tls_ticket_keys; NULL: shared random */
	unsigned refs;                     /* live sessions */
	bool retired;                      /* a newer load replaced it */
};

/* Free a generation's services, TLS contexts and configuration. */
void generation_free(struct generation *g);

/* One worker process: one event loop and the sessions it runs. */
struct worker {
	struct ev_loop *loop;
	const struct config *cfg;          /* the worker's one generation */
	uint32_t nconns;                   /* live sessions */
	uint32_t next_id;
	struct conn *live;                 /* every session, for shutdown */
	struct mxsess *mx_live;            /* the outbound relay's (mxsess.c) */
	struct conn *again;                /* sessions with work left over */
	ev_idle again_w;
	void (*on_conn_done)(struct worker *w);  /* listener: resume accepting */
	struct listen_set *listeners;
	bool stopping;                     /* SIGTERM: no new sessions */
	struct dns *dns;                   /* DNSSEC-validating (DANE) */
	struct dns *dns_plain;             /* upstream names under no DANE policy */
	struct metrics_worker *mw;         /* this worker's counters, or NULL */
	int64_t *active;                   /* this process's open sessions */
	char scratch[SMTP_EHLO_MAX + 64];  /* EHLO rewrites, shared */
};

void conn_worker_init(struct worker *w);

/* A client was accepted on a listener of svc: start its session. */
void conn_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen);

/* Close every session now (shutdown): each logs result=error. */
void conn_close_all(struct worker *w);

#endif
