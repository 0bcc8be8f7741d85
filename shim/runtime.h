/*
 * runtime: what main.c, generation.c, worker.c and super.c share and
 * nothing else sees: the configuration in force and every worker slot's
 * listeners (struct runtime), the signals from the supervisor to its
 * workers, the counters in shared memory, and the calls between them.
 */
#ifndef MAILSHIM_RUNTIME_H
#define MAILSHIM_RUNTIME_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define MAX_WORKERS 64
#define SIG_RETIRE SIGUSR1            /* supervisor to worker: drain, exit */
#define SIG_CLOSE SIGUSR2             /* supervisor to worker: close all, exit */

struct config;
struct generation;
struct listen_set;
struct metrics;
struct metrics_worker;

struct runtime {
	struct generation *gen;       /* the configuration in force */
	struct listen_set *sets;      /* one per worker slot */
	unsigned nworkers;
	const char *dir;
};

/* Not -t: the load will be run. Set by main, read by generation_load;
 * defined in generation.c. */
extern bool serving;

/* Counters of every worker, in memory shared with them (metrics.h); NULL
 * for -t. Mapped by main; defined in super.c. */
extern struct metrics *shm;

/* A new worker's own slot and gauge, set between fork() and its start
 * (spawn, super.c); defined in worker.c. */
struct worker_metrics {
	struct metrics_worker *mw;
	int64_t *active;
};
extern struct worker_metrics worker_metrics;

/* A configuration load built for serving; NULL, with "FILE:LINE: message"
 * lines on err, if anything is wrong. */
struct generation *generation_load(const char *dir, FILE *err);

/* Free rt's generation and its listener sets. */
void runtime_free(struct runtime *rt);

/* Point every listener at its service in g; -1 (nothing changed) unless g
 * listens on exactly the same addresses. */
int remap_listeners(struct runtime *rt, struct generation *g);

/* The number of worker slots cfg asks for (1 to MAX_WORKERS). */
unsigned worker_count(const struct config *cfg);

/* Bind every listen address of rt->gen once per worker slot. */
int bind_all(struct runtime *rt);

/* worker.c: the worker of slot idx, in the child after fork(), every
 * signal blocked (mask: the one to restore). Its exit status. */
int run_worker(struct runtime *rt, unsigned idx, const sigset_t *mask);

/* super.c: start the workers and supervise them until they have all
 * stopped. The exit status. */
int supervise(struct runtime *rt, const struct config *cfg);

#endif
