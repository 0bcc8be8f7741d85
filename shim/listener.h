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
};

/* Bind and listen on one address; -1 with a message in err on failure. */
int listener_bind(const struct sockaddr_text *a, char *err, size_t errlen);

/* Start accepting on every listener of the set, in worker w. */
void listener_start(struct listen_set *set, struct worker *w);

/* Stop accepting and close the sockets (shutdown). */
void listener_stop(struct listen_set *set);

#endif
