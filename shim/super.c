/*
 * super: the supervisor: a worker per slot, started again when it dies;
 * SIGHUP reloads, SIGTERM and SIGINT stop; the metrics listener; the
 * session ticket key's rotation. A worker's child exits in spawn().
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "metricsd.h"
#include "runtime.h"
#include "tls.h"

#define TICKET_ROTATE (12 * 3600)     /* a new session ticket key this often */

/* Counters of every worker, in memory shared with them (metrics.h). */
struct metrics *shm;

struct super {
	struct runtime *rt;
	pid_t pids[MAX_WORKERS];      /* the slots, on rt->gen */
	time_t born[MAX_WORKERS];
	pid_t *old;                   /* retired workers still finishing */
	size_t nold, capold;
	sigset_t set, mask;           /* the signals waited for; the mask before */
	unsigned stops;               /* SIGTERM/SIGINT received */
	bool stopping;
	int sfd;                      /* signalfd of set */
	struct metricsd md;           /* /metrics and /healthz; lfd -1: none */
	pid_t proc[METRICS_PROCS];    /* which process has which active gauge */
};

static pid_t spawn(struct super *sv, unsigned idx)
{
	unsigned slot = 0;
	pid_t pid;

	/* All slots live (many reloads with long-draining old workers): the
	 * new worker counts no active gauge rather than share another's. */
	while (slot < METRICS_PROCS && sv->proc[slot] != 0)
		slot++;
	pid = fork();
	if (pid == 0) {
		int rc;
		/* The supervisor's own descriptors are none of a worker's. */
		close(sv->sfd);
		metricsd_close(&sv->md);
		if (shm != NULL) {
			worker_metrics.mw = &shm->w[idx];
			worker_metrics.active = NULL;
			if (slot < METRICS_PROCS) {
				__atomic_store_n(&shm->active[slot], 0, __ATOMIC_RELAXED);
				worker_metrics.active = &shm->active[slot];
			}
		}
		rc = run_worker(sv->rt, idx, &sv->mask);
		runtime_free(sv->rt);
		exit(rc);
	}
	if (pid < 0)
		log_msg(LEVEL_ERROR, "cannot start worker %u: %s", idx, strerror(errno));
	else if (slot < METRICS_PROCS)
		sv->proc[slot] = pid;
	else if (shm != NULL)
		log_msg(LEVEL_WARN, "worker %u: %u processes live, its sessions are not in "
		    "mailshim_active_sessions", idx, METRICS_PROCS);
	return pid;
}

static void retire_later(struct super *sv, pid_t pid)
{
	if (sv->nold == sv->capold) {
		size_t cap = sv->capold ? sv->capold * 2 : 16;
		pid_t *n = realloc(sv->old, cap * sizeof(*n));
		if (n == NULL) {
			/* Not tracked any more: it still drains and exits. */
			kill(pid, SIG_RETIRE);
			return;
		}
		sv->old = n;
		sv->capold = cap;
	}
	sv->old[sv->nold++] = pid;
	kill(pid, SIG_RETIRE);
}

/* Log a load's messages, one line each. */
static void log_lines(const char *prefix, char *text)
{
	char *line, *save = NULL;

	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		log_msg(LEVEL_ERROR, "%s%s", prefix, line);
}

/*
 * SIGHUP. All or nothing: a new generation is used only if it loads
 * entirely and a worker starts on it in every slot; otherwise the workers
 * on the old one go on as if nothing happened.
 */
static void reload(struct super *sv)
{
	struct runtime *rt = sv->rt;
	char *text = NULL;
	size_t len = 0;
	FILE *err = open_memstream(&text, &len);
	struct generation *g, *old = rt->gen;
	pid_t fresh[MAX_WORKERS];
	unsigned k;

	if (err == NULL) {
		log_msg(LEVEL_ERROR, "reload refused: out of memory; the running configuration stays");
		return;
	}
	g = generation_load(rt->dir, err);
	fclose(err);
	log_lines("reload: ", text);
	free(text);
	if (g != NULL && remap_listeners(rt, g) < 0) {
		log_msg(LEVEL_ERROR, "reload: the listen addresses changed; that needs a restart");
		generation_free(g);
		g = NULL;
	}
	if (g == NULL) {
		log_msg(LEVEL_ERROR, "reload refused: the running configuration stays");
		if (shm != NULL)
			metrics_add(&shm->reloads_failed, 1);
		return;
	}
	if (worker_count(g->cfg) != rt->nworkers)
		log_msg(LEVEL_WARN, "reload: workers changed; %u stay until a restart", rt->nworkers);
	rt->gen = g;
	for (k = 0; k < rt->nworkers; k++) {
		fresh[k] = spawn(sv, k);
		if (fresh[k] > 0)
			continue;
		/* No half switch: the new ones go, the old ones stay. */
		while (k-- > 0)
			retire_later(sv, fresh[k]);
		rt->gen = old;
		remap_listeners(rt, old);
		generation_free(g);
		log_msg(LEVEL_ERROR, "reload refused: cannot start its workers; the running "
		    "configuration stays");
		if (shm != NULL)
			metrics_add(&shm->reloads_failed, 1);
		return;
	}
	for (k = 0; k < rt->nworkers; k++) {
		if (sv->pids[k] > 0)
			retire_later(sv, sv->pids[k]);
		sv->pids[k] = fresh[k];
		sv->born[k] = time(NULL);
	}
	if ((g->cfg->metrics == NULL) != (old->cfg->metrics == NULL) || (g->cfg->metrics &&
	    strcmp(g->cfg->metrics, old->cfg->metrics) != 0))
		log_msg(LEVEL_WARN, "reload: metrics changed; the listener stays as it is until a restart");
	generation_free(old);
	if (shm != NULL) {
		metrics_add(&shm->reloads_ok, 1);
		metrics_add(&shm->generation, 1);
	}
	log_setup(g->cfg->log, g->cfg->log_level);
	log_msg(LEVEL_INFO, "configuration reloaded: %zu services, %u workers started on it",
	    g->nsvcs, rt->nworkers);
}

/* Stopping: the supervisor's copies go too, so new clients are refused
 * at once rather than left in a backlog nobody accepts from. */
static void close_listeners(struct runtime *rt)
{
	size_t k, i;

	for (k = 0; k < rt->nworkers; k++)
		for (i = 0; i < rt->sets[k].n; i++) {
			close(rt->sets[k].l[i].fd);
			rt->sets[k].l[i].fd = -1;
		}
}

static void signal_all(struct super *sv, int sig)
{
	size_t i;

	for (i = 0; i < sv->rt->nworkers; i++)
		if (sv->pids[i] > 0)
			kill(sv->pids[i], sig);
	for (i = 0; i < sv->nold; i++)
		kill(sv->old[i], sig);
}

static void reap(struct super *sv)
{
	pid_t pid;
	size_t i;
	int status;

	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		/* Its sessions are gone with it, whatever it counted. */
		for (i = 0; i < METRICS_PROCS; i++) {
			if (sv->proc[i] != pid)
				continue;
			sv->proc[i] = 0;
			if (shm != NULL)
				__atomic_store_n(&shm->active[i], 0, __ATOMIC_RELAXED);
		}
		for (i = 0; i < sv->nold; i++) {
			if (sv->old[i] == pid) {
				sv->old[i] = sv->old[--sv->nold];
				break;
			}
		}
		for (i = 0; i < sv->rt->nworkers; i++) {
			if (sv->pids[i] != pid)
				continue;
			sv->pids[i] = 0;
			if (sv->stopping)
				continue;
			if (WIFSIGNALED(status))
				log_msg(LEVEL_ERROR, "worker %zu (pid %d) killed by signal %d; restarting",
				    i, (int)pid, WTERMSIG(status));
			else
				log_msg(LEVEL_ERROR, "worker %zu (pid %d) exited with status %d; restarting",
				    i, (int)pid, WEXITSTATUS(status));
		}
	}
}

static unsigned alive(const struct super *sv)
{
	unsigned i, n = (unsigned)sv->nold;

	for (i = 0; i < sv->rt->nworkers; i++)
		n += sv->pids[i] > 0;
	return n;
}

/* One signal the supervisor was sent. */
static void on_signal(struct super *sv, int sig)
{
	if (sig == SIGTERM || sig == SIGINT) {
		/* The first drains, a second closes the live sessions. */
		signal_all(sv, sv->stops++ == 0 ? SIGTERM : SIG_CLOSE);
		if (!sv->stopping)
			close_listeners(sv->rt);
		sv->stopping = true;
		/* /healthz says so while the workers drain. */
		sv->md.stopping = true;
		if (shm != NULL)
			__atomic_store_n(&shm->stopping, 1, __ATOMIC_RELAXED);
	} else if (sig == SIGHUP && !sv->stopping) {
		reload(sv);
	}
}

/* Wait up to a second for signals or the metrics listener, and serve them. */
static void wait_events(struct super *sv)
{
	struct pollfd p[2 + METRICSD_CONNS];
	struct signalfd_siginfo si;
	int n;

	p[0] = (struct pollfd){ .fd = sv->sfd, .events = POLLIN };
	n = 1 + metricsd_pollfds(&sv->md, p + 1);
	if (poll(p, (nfds_t)n, 1000) < 0)
		return;
	while (read(sv->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		on_signal(sv, (int)si.ssi_signo);
	metricsd_serve(&sv->md, p + 1, n - 1);
}

int supervise(struct runtime *rt, const struct config *cfg)
{
	struct super sv;
	time_t rotated = time(NULL);
	char err[300];
	unsigned i;

	memset(&sv, 0, sizeof(sv));
	sv.rt = rt;
	metricsd_init(&sv.md);
	sigemptyset(&sv.set);
	sigaddset(&sv.set, SIGTERM);
	sigaddset(&sv.set, SIGINT);
	sigaddset(&sv.set, SIGHUP);
	sigaddset(&sv.set, SIGCHLD);
	sigaddset(&sv.set, SIG_RETIRE);
	sigaddset(&sv.set, SIG_CLOSE);
	sigprocmask(SIG_BLOCK, &sv.set, &sv.mask);
	sv.sfd = signalfd(-1, &sv.set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sv.sfd < 0) {
		log_msg(LEVEL_ERROR, "cannot wait for signals: %s", strerror(errno));
		return 1;
	}
	if (cfg->metrics != NULL) {
		if (metricsd_open(&sv.md, &cfg->metrics_addr, shm, rt->nworkers, err,
		    sizeof(err)) < 0) {
			log_msg(LEVEL_ERROR, "%s", err);
			close(sv.sfd);
			return 1;
		}
		log_msg(LEVEL_INFO, "metrics on http://%s/metrics", cfg->metrics);
	}
	for (i = 0; i < rt->nworkers; i++) {
		sv.pids[i] = spawn(&sv, i);
		sv.born[i] = time(NULL);
	}
	while (alive(&sv) > 0 || !sv.stopping) {
		wait_events(&sv);
		reap(&sv);
		/* Restart dead workers, at most one start per second each. */
		for (i = 0; i < rt->nworkers && !sv.stopping; i++) {
			if (sv.pids[i] == 0 && time(NULL) > sv.born[i]) {
				sv.pids[i] = spawn(&sv, i);
				sv.born[i] = time(NULL);
			}
		}
		if (time(NULL) - rotated >= TICKET_ROTATE) {
			tls_tickets_rotate();
			rotated = time(NULL);
		}
	}
	free(sv.old);
	metricsd_close(&sv.md);
	close(sv.sfd);
	log_msg(LEVEL_INFO, "mailshim stopped");
	return 0;
}
