/*
 * metricsd: the supervisor's HTTP listener (`metrics = ADDR:PORT`):
 * GET /metrics (Prometheus text, every worker summed) and GET /healthz
 * (200 while serving, 503 while stopping). It runs in the supervisor's
 * poll() loop, far from the workers: a scraper, slow or hostile, can hold
 * at most METRICSD_CONNS small connections for at most METRICSD_TIMEOUT_S
 * each (a new one takes the oldest one's place), and never a worker's
 * descriptor or time. One request per
 * connection (Connection: close); anything odd gets 400 and a close.
 */
#ifndef MAILSHIM_METRICSD_H
#define MAILSHIM_METRICSD_H

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "config.h"
#include "http.h"
#include "metrics.h"

#define METRICSD_CONNS 16
#define METRICSD_TIMEOUT_S 5

struct metricsd_conn {
	int fd;                       /* -1: free */
	time_t deadline;
	size_t inlen, outlen, outoff;
	char *out;
	char in[HTTP_HEAD_MAX];
};

struct metricsd {
	int lfd;                      /* -1: no listener */
	struct metrics *m;
	unsigned nworkers;
	bool stopping;
	struct metricsd_conn c[METRICSD_CONNS];
};

/* No listener (yet): every descriptor -1, so metricsd_close() is safe. */
void metricsd_init(struct metricsd *d);

/* Bind and listen on a; -1 with err filled on failure. */
int metricsd_open(struct metricsd *d, const struct sockaddr_text *a,
    struct metrics *m, unsigned nworkers, char *err, size_t errlen);

/* The descriptors to poll now (at most 1 + METRICSD_CONNS). */
int metricsd_pollfds(const struct metricsd *d, struct pollfd *p);

/* After poll(): serve what is ready, drop what timed out. */
void metricsd_serve(struct metricsd *d, const struct pollfd *p, int n);

/* Close everything (also in a forked worker, which must not keep them). */
void metricsd_close(struct metricsd *d);

#endif
