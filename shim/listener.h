/*
 * listener: the listening sockets of a worker. Each worker has its own
 * copy of every listen address (SO_REUSEPORT), bound by the main process
 * before privileges are dropped; the kernel spreads new clients over the
 * workers. Accepting pauses when file descriptors run out or the worker
 * reaches max_connections, and resumes when a session ends.
 */
#ifndef MAILSHIM_LISTENER_H
#define MAILSHIM_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"

struct worker;
struct svc_rt;

struct listener {
	ev_io io;
	int fd;
	struct svc_rt *svc;
	size_t addr;                  /* which of svc's listen addresses */
	struct listen_set *set;
};

struct listen_set {
	struct listener *l;
	size_t n;
	struct worker *w;
	bool paused;
	ev_timer retry;
	/* At max_connections a warning per refused client would flood the
	 * log under attack: at most one line a second, with the count of
	 * those refused meanwhile. */
	ev_tstamp busy_logged;        /* when the last warning went out */
	unsigned busy_quiet;          /* refused since, not logged yet */
	ev_timer busy_w;              /* logs busy_quiet when refusals stop */
};

/* Bind and listen on one address; -1 with a message in err on failure. */
int listener_bind(const struct sockaddr_text *a, char *err, size_t errlen);

/* Start accepting on every listener of the set, in worker w. */
void listener_start(struct listen_set *set, struct worker *w);

/* Stop accepting and close the sockets (shutdown). */
void listener_stop(struct listen_set *set);

#endif
