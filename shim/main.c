/*
 * main: command line, configuration load, listeners, workers and signals.
 * The only place that exits.
 *
 * One supervisor, whatever the number of workers. It keeps the privileges
 * it started with (root can read root-only keys), binds a copy of every
 * listener per worker slot (SO_REUSEPORT), and loads and builds each
 * configuration generation itself: parsed files, resolved upstreams, TLS
 * contexts. Workers are forked from it with one generation and never load
 * anything; they drop to `user` and serve.
 *
 * SIGHUP: the supervisor loads a new generation. If, and only if, all of
 * it is good, it forks a fresh worker per slot on it (they inherit the
 * same listening sockets, so no client is turned away meanwhile) and tells
 * the old workers to stop accepting and finish their sessions, for at most
 * their shutdown_grace. Every worker serves the same generation, or the
 * reload changes nothing and says why in the log. Workers ignore SIGHUP
 * from before they are forked. The listening sockets stay, so a change of
 * listen addresses (or of workers) needs a restart.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "conn.h"
#include "metrics.h"
#include "metricsd.h"
#include "dns.h"
#include "upname.h"
#include "listener.h"
#include "log.h"
#include "tls.h"

#define DEFAULT_DIR "/etc/mailshim/conf.d"
#define MAX_WORKERS 64
#define FD_MARGIN 32                  /* stdio, listeners, event loop, syslog */
#define TICKET_ROTATE (12 * 3600)     /* a new session ticket key this often */
#define SIG_RETIRE SIGUSR1            /* supervisor to worker: drain, exit */
#define SIG_CLOSE SIGUSR2             /* supervisor to worker: close all, exit */

static bool serving;                  /* not -t: the load will be run */
/* Counters of every worker, in memory shared with them (metrics.h). */
static struct metrics *shm;
/* A new worker's own slot and gauge, set between fork() and its start. */
static struct {
	struct metrics_worker *mw;
	int64_t *active;
} worker_metrics;

struct runtime {
	struct generation *gen;       /* the configuration in force */
	struct listen_set *sets;      /* one per worker slot */
	unsigned nworkers;
	const char *dir;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: mailshim [-c DIR] [-t] [-V]\n"
	    "  -c DIR  configuration directory (default " DEFAULT_DIR ")\n"
	    "  -t      check the configuration and exit (0: clean, 1: errors)\n"
	    "  -V      print the version and the TLS library\n");
}

/*
 * The upstream as the log names it until a session picks an address. Host
 * names are not looked up here: each worker looks them up on its loop
 * (upname.c), for their TTL, so a load never waits for DNS and a name
 * that does not resolve yet only refuses that service's sessions.
 */
static void upstream_text(struct svc_rt *rt)
{
	const struct service *s = rt->svc;

	if (s->upstream_mx) {
		snprintf(rt->up_text, sizeof(rt->up_text), "mx");
		return;
	}
	snprintf(rt->up_text, sizeof(rt->up_text), strchr(s->upstream_host, ':') ?
	    "[%s]:%s" : "%s:%s", s->upstream_host, s->upstream_port);
}

static bool numeric_host(const char *h)
{
	unsigned char a[16];

	return inet_pton(AF_INET, h, a) == 1 || inet_pton(AF_INET6, h, a) == 1;
}

static bool dane_level(const struct service *s)
{
	return s->upstream_verify == VERIFY_DANE || s->upstream_verify == VERIFY_DANE_ONLY;
}

/*
 * A worker's resolvers and its services' upstream names, after fork() (a
 * libunbound context runs a thread of its own). A validating context only
 * where a DANE policy needs it; names under no DANE policy resolve as
 * getaddrinfo() would, /etc/hosts included.
 */
static int worker_dns(struct worker *w, struct generation *g)
{
	char err[300];
	bool dane = false, names = false;
	size_t i;

	for (i = 0; i < g->nsvcs; i++) {
		const struct service *s = g->svcs[i].svc;
		/* The outbound relay validates every MX lookup, whatever the
		 * level: a bogus answer defers, an insecure one rules DANE out. */
		dane |= (dane_level(s) && s->upstream_tls != MODE_PLAIN) || s->upstream_mx;
		/* A numeric upstream needs no resolver (nor its thread). */
		names |= !dane_level(s) && !s->upstream_mx && !numeric_host(s->upstream_host);
	}
	if (dane && (w->dns = dns_new(w->loop, g->cfg, err, sizeof(err))) == NULL) {
		log_msg(LEVEL_ERROR, "DNS: %s", err);
		return -1;
	}
	if (names && (w->dns_plain = dns_new_plain(w->loop, g->cfg, err, sizeof(err))) == NULL) {
		log_msg(LEVEL_ERROR, "DNS: %s", err);
		return -1;
	}
	for (i = 0; i < g->nsvcs; i++) {
		struct svc_rt *sv = &g->svcs[i];
		const struct service *s = sv->svc;

		if (s->upstream_mx)
			continue;
		if ((sv->name = calloc(1, sizeof(*sv->name))) == NULL ||
		    upname_init(sv->name, w->loop, dane_level(s) ? w->dns : w->dns_plain,
		    s->upstream_host, (uint16_t)atoi(s->upstream_port)) < 0) {
			log_msg(LEVEL_ERROR, "out of memory");
			return -1;
		}
	}
	return 0;
}

static void worker_dns_free(struct worker *w, struct generation *g)
{
	for (size_t i = 0; i < g->nsvcs; i++) {
		if (g->svcs[i].name == NULL)
			continue;
		upname_free(g->svcs[i].name);
		free(g->svcs[i].name);
		g->svcs[i].name = NULL;
	}
	dns_free(w->dns);
	dns_free(w->dns_plain);
	w->dns = w->dns_plain = NULL;
}

/*
 * Everything a configuration needs before serving: the parsed files, TLS
 * contexts, upstream addresses, the EHLO line. Problems go to err as
 * "FILE:LINE: message"; NULL if there was any.
 */
static struct generation *generation_load(const char *dir, FILE *err)
{
	struct generation *g = calloc(1, sizeof(*g));
	char host[256];
	const char *helo;
	size_t i;
	int bad = 0;

	if (g == NULL || (g->cfg = config_load(dir, err)) == NULL) {
		free(g);
		return NULL;
	}
	helo = g->cfg->helo_name;
	if (helo == NULL) {
		if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		helo = host;
	}
	g->svcs = calloc(g->cfg->nservices, sizeof(*g->svcs));
	if (g->svcs == NULL) {
		generation_free(g);
		return NULL;
	}
	/* Read again at every load: a reload is how the operator rotates them. */
	if (g->cfg->tls_ticket_keys != NULL && (g->tickets = tls_tickets_load(g->cfg, err)) == NULL)
		bad = 1;
	for (i = 0; i < g->cfg->nservices; i++) {
		struct svc_rt *sv = &g->svcs[i];
		sv->svc = &g->cfg->services[i];
		sv->gen = g;
		sv->ehlo_len = (uint16_t)snprintf(sv->ehlo, sizeof(sv->ehlo), "EHLO %s\r\n", helo);
		g->nsvcs++;
		upstream_text(sv);
		sv->mslot = shm ? metrics_service_slot(shm, sv->svc->name) : -1;
		if (tls_init(&sv->tls, g->cfg, sv->svc, g->tickets, err) < 0)
			bad = 1;
	}
	/* Checked here, not first in a worker that could only die of it. */
	if (g->cfg->user != NULL) {
		struct passwd *pw = getpwnam(g->cfg->user);
		const char *file;
		int line;
		config_key_where(g->cfg, NULL, "user", 0, &file, &line);
		if (pw == NULL) {
			fprintf(err, "%s:%d: user %s does not exist\n", file, line, g->cfg->user);
			bad = 1;
		} else if (serving && geteuid() != 0 && pw->pw_uid != geteuid()) {
			fprintf(err, "%s:%d: user %s: mailshim is not root, it cannot become "
			    "another user\n", file, line, g->cfg->user);
			bad = 1;
		}
	}
	if (bad) {
		generation_free(g);
		return NULL;
	}
	return g;
}

static void runtime_free(struct runtime *rt)
{
	size_t i;

	generation_free(rt->gen);
	rt->gen = NULL;
	if (rt->sets != NULL) {
		for (i = 0; i < rt->nworkers; i++)
			free(rt->sets[i].l);
		free(rt->sets);
		rt->sets = NULL;
	}
}

static bool same_addr(const struct sockaddr_text *a, const struct sockaddr_text *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* The service of g listening on a (and which of its addresses it is). */
static struct svc_rt *service_at(struct generation *g, const struct sockaddr_text *a,
    size_t *idx)
{
	size_t i, j;

	for (i = 0; i < g->nsvcs; i++)
		for (j = 0; j < g->svcs[i].svc->nlisten; j++)
			if (same_addr(a, &g->svcs[i].svc->listen[j])) {
				*idx = j;
				return &g->svcs[i];
			}
	return NULL;
}

static const struct sockaddr_text *listener_addr(const struct listener *l)
{
	return &l->svc->svc->listen[l->addr];
}

/*
 * Point every listener at its service in the new load; nothing changes
 * unless the new load listens on exactly the same addresses.
 */
static int remap_listeners(struct runtime *rt, struct generation *g)
{
	size_t i, k, n = 0, idx;

	for (i = 0; i < g->nsvcs; i++)
		n += g->svcs[i].svc->nlisten;
	for (k = 0; k < rt->nworkers; k++) {
		const struct listen_set *set = &rt->sets[k];
		if (set->l == NULL || set->n == 0)
			continue;
		if (set->n != n)
			return -1;
		for (i = 0; i < set->n; i++)
			if (service_at(g, listener_addr(&set->l[i]), &idx) == NULL)
				return -1;
	}
	for (k = 0; k < rt->nworkers; k++)
		for (i = 0; i < rt->sets[k].n; i++) {
			struct listener *l = &rt->sets[k].l[i];
			l->svc = service_at(g, listener_addr(l), &idx);
			l->addr = idx;
		}
	return 0;
}

static unsigned worker_count(const struct config *cfg)
{
	long n = cfg->workers ? (long)cfg->workers : sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		n = 1;
	return n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

static int bind_all(struct runtime *rt)
{
	struct generation *g = rt->gen;
	char err[512];
	size_t i, j, k, n = 0;

	for (i = 0; i < g->nsvcs; i++)
		n += g->svcs[i].svc->nlisten;
	rt->sets = calloc(rt->nworkers, sizeof(*rt->sets));
	if (rt->sets == NULL)
		return -1;
	for (k = 0; k < rt->nworkers; k++) {
		struct listen_set *set = &rt->sets[k];
		set->l = calloc(n, sizeof(*set->l));
		if (set->l == NULL)
			return -1;
		for (i = 0; i < g->nsvcs; i++) {
			for (j = 0; j < g->svcs[i].svc->nlisten; j++) {
				struct listener *l = &set->l[set->n];
				l->svc = &g->svcs[i];
				l->addr = j;
				l->fd = listener_bind(&l->svc->svc->listen[j], err, sizeof(err));
				if (l->fd < 0) {
					log_msg(LEVEL_ERROR, "%s", err);
					return -1;
				}
				set->n++;
			}
		}
	}
	return 0;
}

static int drop_privileges(const char *user)
{
	struct passwd *pw;

	if (user == NULL)
		return 0;
	pw = getpwnam(user);
	if (pw == NULL) {
		log_msg(LEVEL_ERROR, "user %s does not exist", user);
		return -1;
	}
	if (getuid() == pw->pw_uid)
		return 0;
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_msg(LEVEL_ERROR, "cannot become user %s: %s", user, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * Descriptors: a session holds two (client and upstream). A soft limit of
 * 1024 (systemd's default) would stop a worker at about 500 sessions, so
 * the soft limit goes up to the hard one, and the sessions it allows per
 * worker are logged (or, for -t, compared with max_connections).
 */
static unsigned long long sessions_for(rlim_t fds)
{
	return fds > FD_MARGIN ? (unsigned long long)(fds - FD_MARGIN) / 2 : 0;
}

static void raise_nofile(const struct config *cfg)
{
	struct rlimit rl;
	rlim_t want;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	want = rl.rlim_max;
	if (want == RLIM_INFINITY) {
		/* The kernel's own ceiling for a process (fs.nr_open). */
		FILE *f = fopen("/proc/sys/fs/nr_open", "re");
		unsigned long long n = 0;
		if (f != NULL && fscanf(f, "%llu", &n) == 1 && n > 0)
			want = (rlim_t)n;
		else
			want = 1048576;
		if (f != NULL)
			fclose(f);
	}
	if (rl.rlim_cur < want) {
		struct rlimit nl = { want, rl.rlim_max };
		if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
			rl.rlim_cur = want;
		else
			log_msg(LEVEL_WARN, "cannot raise the file descriptor limit from %llu to %llu: %s",
			    (unsigned long long)rl.rlim_cur, (unsigned long long)want, strerror(errno));
	}
	log_msg(LEVEL_INFO, "file descriptor limit %llu: up to %llu sessions per worker "
	    "(max_connections %u)", (unsigned long long)rl.rlim_cur,
	    sessions_for(rl.rlim_cur), cfg->max_connections);
	if (sessions_for(rl.rlim_cur) < cfg->max_connections)
		log_msg(LEVEL_WARN, "max_connections = %u cannot be met: %llu file descriptors "
		    "allow %llu sessions per worker", cfg->max_connections,
		    (unsigned long long)rl.rlim_cur, sessions_for(rl.rlim_cur));
}

/* -t: a warning, not an error (the limit at run time may differ). */
static void check_nofile(const struct config *cfg, const char *dir)
{
	struct rlimit rl;
	const char *file;
	char where[1100];
	int line;
	bool set;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max == RLIM_INFINITY ||
	    sessions_for(rl.rlim_max) >= cfg->max_connections)
		return;
	/* A default stands on no line: the message names the directory. */
	set = config_key_where(cfg, NULL, "max_connections", 0, &file, &line);
	if (set)
		snprintf(where, sizeof(where), "%s:%d", file, line);
	else
		snprintf(where, sizeof(where), "%s", dir);
	fprintf(stderr, "%s: warning: max_connections = %u%s cannot be met: the hard "
	    "limit of %llu file descriptors allows %llu sessions per worker\n", where,
	    cfg->max_connections, set ? "" : " (the default)",
	    (unsigned long long)rl.rlim_max, sessions_for(rl.rlim_max));
}

/* ---- a worker: one event loop on one generation ---- */

struct worker_ctx {
	struct worker w;
	ev_signal sigterm, sigint, retire, close;
	ev_timer grace;
};

static void worker_done(struct worker *w)
{
	if (w->nconns == 0)
		ev_break(w->loop, EVBREAK_ALL);
}

static void grace_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker_ctx *ctx = (struct worker_ctx *)((char *)t - offsetof(struct worker_ctx, grace));

	(void)revents;
	log_msg(LEVEL_WARN, "grace period over: closing %u live sessions", ctx->w.nconns);
	conn_close_all(&ctx->w);
	ev_break(loop, EVBREAK_ALL);
}

/* Stop accepting at once; live sessions may finish within shutdown_grace. */
static void drain(struct worker_ctx *ctx, const char *why)
{
	struct worker *w = &ctx->w;

	if (w->stopping)
		return;
	log_msg(LEVEL_INFO, "%s: %u live sessions may finish", why, w->nconns);
	w->stopping = true;
	listener_stop(w->listeners);
	w->on_conn_done = worker_done;
	if (w->nconns == 0) {
		ev_break(w->loop, EVBREAK_ALL);
		return;
	}
	ev_timer_init(&ctx->grace, grace_cb, w->cfg->shutdown_grace_ms / 1000.0, 0.);
	ev_timer_start(w->loop, &ctx->grace);
}

/*
 * SIGTERM and SIGINT may come twice, from the supervisor and straight to
 * the process group (systemd, a terminal): here they only drain. Closing
 * the live sessions is the supervisor's word (SIG_CLOSE), given on its
 * second SIGTERM or SIGINT.
 */
static void stop_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
	(void)loop;
	(void)revents;
	drain(s->data, s->signum == SIG_RETIRE ? "a new configuration took over" : "stopping");
}

static void close_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
	struct worker_ctx *ctx = s->data;

	(void)revents;
	conn_close_all(&ctx->w);
	ev_break(loop, EVBREAK_ALL);
}

/*
 * In the child, with every signal still blocked: the watchers start
 * before the mask is restored, so no signal can find the worker without
 * its handlers (SIGHUP is ignored altogether: reloads are the
 * supervisor's).
 */
static int run_worker(struct runtime *rt, unsigned idx, const sigset_t *mask)
{
	struct worker_ctx ctx;
	struct worker *w = &ctx.w;
	struct generation *g = rt->gen;
	size_t k, i;

	signal(SIGHUP, SIG_IGN);
	memset(&ctx, 0, sizeof(ctx));
	/* Close the other slots' copies of the listeners. */
	for (k = 0; k < rt->nworkers; k++) {
		if (k == idx)
			continue;
		for (i = 0; i < rt->sets[k].n; i++)
			close(rt->sets[k].l[i].fd);
		rt->sets[k].n = 0;
	}
	if (drop_privileges(g->cfg->user) < 0)
		return 1;
	/* A worker whose supervisor is gone stops too (after the uid change,
	 * which clears this setting). */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() == 1)
		return 0;
	w->loop = ev_default_loop(EVFLAG_AUTO);
	if (w->loop == NULL) {
		log_msg(LEVEL_ERROR, "cannot create the event loop");
		return 1;
	}
	w->cfg = g->cfg;
	w->mw = worker_metrics.mw;
	w->active = worker_metrics.active;
	if (worker_dns(w, g) < 0)
		return 1;
	/* Session ids differ between workers and between restarts. */
	w->next_id = ((uint32_t)getpid() * 2654435761u) ^ ((uint32_t)idx << 28);
	conn_worker_init(w);
	listener_start(&rt->sets[idx], w);
	ev_signal_init(&ctx.sigterm, stop_cb, SIGTERM);
	ev_signal_init(&ctx.sigint, stop_cb, SIGINT);
	ev_signal_init(&ctx.retire, stop_cb, SIG_RETIRE);
	ev_signal_init(&ctx.close, close_cb, SIG_CLOSE);
	ctx.sigterm.data = ctx.sigint.data = ctx.retire.data = ctx.close.data = &ctx;
	ev_signal_start(w->loop, &ctx.sigterm);
	ev_signal_start(w->loop, &ctx.sigint);
	ev_signal_start(w->loop, &ctx.retire);
	ev_signal_start(w->loop, &ctx.close);
	sigprocmask(SIG_SETMASK, mask, NULL);
	ev_run(w->loop, 0);
	conn_close_all(w);
	if (!w->stopping)
		listener_stop(w->listeners);
	ev_timer_stop(w->loop, &ctx.grace);
	worker_dns_free(w, g);
	ev_loop_destroy(w->loop);
	log_msg(LEVEL_DEBUG, "worker %u (pid %d) stopped", idx, (int)getpid());
	return 0;
}

/* ---- the supervisor ---- */

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

	while (slot < METRICS_PROCS - 1 && sv->proc[slot] != 0)
		slot++;
	pid = fork();
	if (pid == 0) {
		int rc;
		/* The supervisor's own descriptors are none of a worker's. */
		close(sv->sfd);
		metricsd_close(&sv->md);
		if (shm != NULL) {
			__atomic_store_n(&shm->active[slot], 0, __ATOMIC_RELAXED);
			worker_metrics.mw = &shm->w[idx];
			worker_metrics.active = &shm->active[slot];
		}
		rc = run_worker(sv->rt, idx, &sv->mask);
		runtime_free(sv->rt);
		exit(rc);
	}
	if (pid < 0)
		log_msg(LEVEL_ERROR, "cannot start worker %u: %s", idx, strerror(errno));
	else
		sv->proc[slot] = pid;
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

static int supervise(struct runtime *rt, const struct config *cfg)
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

int main(int argc, char **argv)
{
	struct runtime rt;
	bool check = false;
	int opt, rc;

	memset(&rt, 0, sizeof(rt));
	rt.dir = DEFAULT_DIR;
	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			rt.dir = optarg;
			break;
		case 't':
			check = true;
			break;
		case 'V':
			printf("mailshim %s\nTLS library: %s\n", MAILSHIM_VERSION, tls_library());
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	serving = !check;
	/* Before the first context, so every context of every load uses them. */
	if (!check && tls_tickets_init() < 0) {
		fprintf(stderr, "cannot make the session ticket keys: %s\n", strerror(errno));
		return 1;
	}
	if (!check) {
		shm = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
		if (shm == MAP_FAILED) {
			fprintf(stderr, "cannot map the metrics counters: %s\n", strerror(errno));
			return 1;
		}
		shm->generation = 1;
	}
	rt.gen = generation_load(rt.dir, stderr);
	if (rt.gen == NULL) {
		fprintf(stderr, "%s: configuration has errors\n", rt.dir);
		return 1;
	}
	if (check) {
		check_nofile(rt.gen->cfg, rt.dir);
		printf("%s: configuration OK (%zu services)\n", rt.dir, rt.gen->nsvcs);
		runtime_free(&rt);
		return 0;
	}
	log_setup(rt.gen->cfg->log, rt.gen->cfg->log_level);
	raise_nofile(rt.gen->cfg);
	rt.nworkers = worker_count(rt.gen->cfg);
	if (bind_all(&rt) < 0) {
		runtime_free(&rt);
		return 1;
	}
	log_msg(LEVEL_INFO, "mailshim %s started: %zu services, %u workers, %s",
	    MAILSHIM_VERSION, rt.gen->nsvcs, rt.nworkers, tls_library());
	rc = supervise(&rt, rt.gen->cfg);
	runtime_free(&rt);
	return rc;
}
