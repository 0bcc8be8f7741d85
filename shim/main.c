/*
 * main: command line, configuration load, listeners, privilege drop,
 * workers and signals. The only place that exits.
 *
 * With one worker the process runs its event loop itself. With several,
 * it binds a copy of every listener per worker (SO_REUSEPORT), forks the
 * workers and stays as a small supervisor: it passes SIGTERM/SIGINT/SIGHUP
 * on and restarts a worker that died, each worker keeping its own sockets.
 *
 * SIGHUP reloads: each process loads the configuration and certificates
 * anew and switches to them only if everything loaded; live sessions keep
 * the load they started with until they end. The listening sockets stay
 * (binding may have needed root), so a change of listen addresses is
 * refused and needs a restart.
 */
#include <errno.h>
#include <grp.h>
#include <netdb.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "tls.h"

#define DEFAULT_DIR "/etc/mailshim/conf.d"
#define MAX_WORKERS 64
#define GRACE_SECONDS 30.0    /* SIGTERM: how long live sessions may finish */

struct runtime {
	struct generation *gen;       /* the configuration in force */
	struct listen_set *sets;      /* one per worker */
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

static int resolve_upstream(struct svc_rt *rt, char *err, size_t errlen)
{
	const struct service *s = rt->svc;
	struct addrinfo hints, *res;
	char host[NI_MAXHOST], port[NI_MAXSERV];
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(s->upstream_host, s->upstream_port, &hints, &res);
	if (r != 0) {
		snprintf(err, errlen, "cannot resolve upstream %s: %s", s->upstream, gai_strerror(r));
		return -1;
	}
	memcpy(&rt->up_addr, res->ai_addr, res->ai_addrlen);
	rt->up_len = res->ai_addrlen;
	freeaddrinfo(res);
	getnameinfo((struct sockaddr *)&rt->up_addr, rt->up_len, host, sizeof(host),
	    port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
	snprintf(rt->up_text, sizeof(rt->up_text),
	    rt->up_addr.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
	return 0;
}

/*
 * Everything a configuration needs before serving: the parsed files, TLS
 * contexts, upstream addresses, the EHLO line. Problems go to err as
 * "FILE:LINE: message"; NULL if there was any.
 */
static struct generation *generation_load(const char *dir, FILE *err)
{
	struct generation *g = calloc(1, sizeof(*g));
	char msg[512], host[256];
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
	for (i = 0; i < g->cfg->nservices; i++) {
		struct svc_rt *sv = &g->svcs[i];
		sv->svc = &g->cfg->services[i];
		sv->gen = g;
		sv->ehlo_len = (uint16_t)snprintf(sv->ehlo, sizeof(sv->ehlo), "EHLO %s\r\n", helo);
		g->nsvcs++;
		if (resolve_upstream(sv, msg, sizeof(msg)) < 0) {
			const char *file;
			int line;
			config_key_where(g->cfg, sv->svc, "upstream", 0, &file, &line);
			fprintf(err, "%s:%d: %s\n", file, line, msg);
			bad = 1;
		}
		if (tls_init(&sv->tls, g->cfg, sv->svc, err) < 0)
			bad = 1;
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

/* SIGHUP: a new load replaces the old one only if it is entirely good. */
static int reload(struct runtime *rt)
{
	char *text = NULL, *line, *save = NULL;
	size_t len = 0;
	FILE *err = open_memstream(&text, &len);
	struct generation *g, *old = rt->gen;

	if (err == NULL)
		return -1;
	g = generation_load(rt->dir, err);
	fclose(err);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		log_msg(LEVEL_ERROR, "reload: %s", line);
	free(text);
	if (g != NULL && remap_listeners(rt, g) < 0) {
		log_msg(LEVEL_ERROR, "reload: the listen addresses changed; that needs a restart");
		generation_free(g);
		g = NULL;
	}
	if (g == NULL) {
		log_msg(LEVEL_ERROR, "reload refused: the running configuration stays");
		return -1;
	}
	rt->gen = g;
	old->retired = true;
	if (old->refs == 0)
		generation_free(old);
	log_setup(g->cfg->log, g->cfg->log_level);
	log_msg(LEVEL_INFO, "configuration reloaded: %zu services", g->nsvcs);
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

/* ---- one worker: one event loop ---- */

struct worker_ctx {
	struct worker w;
	struct runtime *rt;
	ev_signal sigterm, sigint, sighup;
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

static void stop_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
	struct worker_ctx *ctx = s->data;
	struct worker *w = &ctx->w;

	(void)revents;
	if (w->stopping) {
		conn_close_all(w);
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	log_msg(LEVEL_INFO, "stopping: %u live sessions may finish", w->nconns);
	w->stopping = true;
	listener_stop(w->listeners);
	w->on_conn_done = worker_done;
	if (w->nconns == 0) {
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	ev_timer_init(&ctx->grace, grace_cb, GRACE_SECONDS, 0.);
	ev_timer_start(loop, &ctx->grace);
}

static void hup_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
	struct worker_ctx *ctx = s->data;

	(void)loop;
	(void)revents;
	if (!ctx->w.stopping && reload(ctx->rt) == 0)
		ctx->w.cfg = ctx->rt->gen->cfg;
}

static int run_worker(struct runtime *rt, unsigned idx)
{
	struct worker_ctx ctx;
	struct worker *w = &ctx.w;
	size_t k, i;

	memset(&ctx, 0, sizeof(ctx));
	ctx.rt = rt;
	w->loop = ev_default_loop(EVFLAG_AUTO);
	if (w->loop == NULL) {
		log_msg(LEVEL_ERROR, "cannot create the event loop");
		return 1;
	}
	w->cfg = rt->gen->cfg;
	/* Session ids differ between workers and between restarts. */
	w->next_id = ((uint32_t)getpid() * 2654435761u) ^ ((uint32_t)idx << 28);
	conn_worker_init(w);
	/* Close the other workers' copies of the listeners. */
	for (k = 0; k < rt->nworkers; k++) {
		if (k == idx)
			continue;
		for (i = 0; i < rt->sets[k].n; i++)
			close(rt->sets[k].l[i].fd);
		rt->sets[k].n = 0;
	}
	listener_start(&rt->sets[idx], w);
	ev_signal_init(&ctx.sigterm, stop_cb, SIGTERM);
	ev_signal_init(&ctx.sigint, stop_cb, SIGINT);
	ev_signal_init(&ctx.sighup, hup_cb, SIGHUP);
	ctx.sigterm.data = ctx.sigint.data = ctx.sighup.data = &ctx;
	ev_signal_start(w->loop, &ctx.sigterm);
	ev_signal_start(w->loop, &ctx.sigint);
	ev_signal_start(w->loop, &ctx.sighup);
	ev_run(w->loop, 0);
	conn_close_all(w);
	if (!w->stopping)
		listener_stop(w->listeners);
	ev_timer_stop(w->loop, &ctx.grace);
	ev_loop_destroy(w->loop);
	log_msg(LEVEL_INFO, "worker %u stopped", idx);
	return 0;
}

/* ---- several workers: a small supervisor ---- */

static pid_t spawn(struct runtime *rt, unsigned idx, const sigset_t *old)
{
	pid_t pid = fork();

	if (pid == 0) {
		int rc;
		sigprocmask(SIG_SETMASK, old, NULL);
		rc = run_worker(rt, idx);
		runtime_free(rt);
		exit(rc);
	}
	if (pid < 0)
		log_msg(LEVEL_ERROR, "cannot start worker %u: %s", idx, strerror(errno));
	return pid;
}

static void signal_all(const pid_t *pids, unsigned n, int sig)
{
	unsigned i;

	for (i = 0; i < n; i++)
		if (pids[i] > 0)
			kill(pids[i], sig);
}

static int supervise(struct runtime *rt)
{
	pid_t pids[MAX_WORKERS] = { 0 };
	time_t born[MAX_WORKERS] = { 0 };
	sigset_t set, old;
	unsigned i, alive = 0;
	bool stopping = false;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	for (i = 0; i < rt->nworkers; i++) {
		pids[i] = spawn(rt, i, &old);
		born[i] = time(NULL);
		alive += pids[i] > 0;
	}
	while (alive > 0) {
		struct timespec ts = { 1, 0 };
		int sig = sigtimedwait(&set, NULL, &ts), status;
		pid_t pid;

		if (sig == SIGTERM || sig == SIGINT) {
			stopping = true;
			signal_all(pids, rt->nworkers, sig);
		} else if (sig == SIGHUP) {
			/* Workers started later must start from the new load too. */
			reload(rt);
			signal_all(pids, rt->nworkers, SIGHUP);
		}
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			for (i = 0; i < rt->nworkers; i++) {
				if (pids[i] != pid)
					continue;
				pids[i] = 0;
				alive--;
				if (stopping)
					continue;
				if (WIFSIGNALED(status))
					log_msg(LEVEL_ERROR, "worker %u (pid %d) killed by signal %d; restarting",
					    i, (int)pid, WTERMSIG(status));
				else
					log_msg(LEVEL_ERROR, "worker %u (pid %d) exited with status %d; restarting",
					    i, (int)pid, WEXITSTATUS(status));
			}
		}
		/* Restart dead workers, at most one start per second each. */
		for (i = 0; i < rt->nworkers && !stopping; i++) {
			if (pids[i] == 0 && time(NULL) > born[i]) {
				pids[i] = spawn(rt, i, &old);
				born[i] = time(NULL);
				alive += pids[i] > 0;
			}
		}
	}
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
	rt.gen = generation_load(rt.dir, stderr);
	if (rt.gen == NULL) {
		fprintf(stderr, "%s: configuration has errors\n", rt.dir);
		return 1;
	}
	if (check) {
		printf("%s: configuration OK (%zu services)\n", rt.dir, rt.gen->nsvcs);
		runtime_free(&rt);
		return 0;
	}
	log_setup(rt.gen->cfg->log, rt.gen->cfg->log_level);
	rt.nworkers = worker_count(rt.gen->cfg);
	if (bind_all(&rt) < 0 || drop_privileges(rt.gen->cfg->user) < 0) {
		runtime_free(&rt);
		return 1;
	}
	log_msg(LEVEL_INFO, "mailshim %s started: %zu services, %u workers, %s",
	    MAILSHIM_VERSION, rt.gen->nsvcs, rt.nworkers, tls_library());
	rc = rt.nworkers == 1 ? run_worker(&rt, 0) : supervise(&rt);
	runtime_free(&rt);
	return rc;
}
