/*
 * main: command line, configuration load, listeners, privilege drop,
 * workers and signals. The only place that exits.
 *
 * With one worker the process runs its event loop itself. With several,
 * it binds a copy of every listener per worker (SO_REUSEPORT), forks the
 * workers and stays as a small supervisor: it passes SIGTERM/SIGINT/SIGHUP
 * on and restarts a worker that died, each worker keeping its own sockets.
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
	struct config *cfg;
	struct svc_rt *svcs;
	size_t nsvcs;
	struct listen_set *sets;      /* one per worker */
	unsigned nworkers;
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

static void runtime_free(struct runtime *rt)
{
	size_t i;

	for (i = 0; i < rt->nsvcs; i++)
		tls_free(&rt->svcs[i].tls);
	free(rt->svcs);
	if (rt->sets != NULL) {
		for (i = 0; i < rt->nworkers; i++)
			free(rt->sets[i].l);
		free(rt->sets);
	}
	config_free(rt->cfg);
}

/* Everything a configuration needs before serving: TLS, addresses, EHLO. */
static int runtime_build(struct runtime *rt, const char *dir)
{
	char err[512], host[256];
	const char *helo = rt->cfg->helo_name;
	size_t i;
	int bad = 0;

	if (helo == NULL) {
		if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		helo = host;
	}
	rt->nsvcs = rt->cfg->nservices;
	rt->svcs = calloc(rt->nsvcs, sizeof(*rt->svcs));
	if (rt->svcs == NULL)
		return -1;
	for (i = 0; i < rt->nsvcs; i++) {
		struct svc_rt *s = &rt->svcs[i];
		s->svc = &rt->cfg->services[i];
		s->ehlo_len = (uint16_t)snprintf(s->ehlo, sizeof(s->ehlo), "EHLO %s\r\n", helo);
		if (resolve_upstream(s, err, sizeof(err)) < 0 ||
		    tls_init(&s->tls, s->svc, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s:%d: service '%s': %s\n", s->svc->file,
			    s->svc->line, s->svc->name, err);
			bad = 1;
		}
	}
	(void)dir;
	return bad ? -1 : 0;
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
	char err[512];
	size_t i, j, k, n = 0;

	for (i = 0; i < rt->nsvcs; i++)
		n += rt->svcs[i].svc->nlisten;
	rt->sets = calloc(rt->nworkers, sizeof(*rt->sets));
	if (rt->sets == NULL)
		return -1;
	for (k = 0; k < rt->nworkers; k++) {
		struct listen_set *set = &rt->sets[k];
		set->l = calloc(n, sizeof(*set->l));
		if (set->l == NULL)
			return -1;
		for (i = 0; i < rt->nsvcs; i++) {
			for (j = 0; j < rt->svcs[i].svc->nlisten; j++) {
				struct listener *l = &set->l[set->n];
				l->svc = &rt->svcs[i];
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
	ev_signal sigterm, sigint, sighup;
	ev_timer grace;
};

static void worker_done(struct worker *w)
{
	if (w->stopping) {
		if (w->nconns == 0)
			ev_break(w->loop, EVBREAK_ALL);
		return;
	}
	/* Otherwise the listener decides whether to resume accepting. */
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
	(void)loop;
	(void)s;
	(void)revents;
	log_msg(LEVEL_WARN, "SIGHUP: reload is not supported in this build; restart to apply changes");
}

static int run_worker(struct runtime *rt, unsigned idx)
{
	struct worker_ctx ctx;
	struct worker *w = &ctx.w;
	size_t k;

	memset(&ctx, 0, sizeof(ctx));
	w->loop = ev_default_loop(EVFLAG_AUTO);
	if (w->loop == NULL) {
		log_msg(LEVEL_ERROR, "cannot create the event loop");
		return 1;
	}
	w->cfg = rt->cfg;
	w->svcs = rt->svcs;
	w->nsvcs = rt->nsvcs;
	/* Session ids differ between workers and between restarts. */
	w->next_id = ((uint32_t)getpid() * 2654435761u) ^ ((uint32_t)idx << 28);
	conn_worker_init(w);
	/* Close the other workers' copies of the listeners. */
	for (k = 0; k < rt->nworkers; k++)
		if (k != idx) {
			size_t i;
			for (i = 0; i < rt->sets[k].n; i++)
				close(rt->sets[k].l[i].fd);
			rt->sets[k].n = 0;
		}
	listener_start(&rt->sets[idx], w);
	ev_signal_init(&ctx.sigterm, stop_cb, SIGTERM);
	ev_signal_init(&ctx.sigint, stop_cb, SIGINT);
	ev_signal_init(&ctx.sighup, hup_cb, SIGHUP);
	ctx.sigterm.data = ctx.sigint.data = &ctx;
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
	const char *dir = DEFAULT_DIR;
	bool check = false;
	int opt, rc;

	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			dir = optarg;
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
	memset(&rt, 0, sizeof(rt));
	rt.cfg = config_load(dir, stderr);
	if (rt.cfg == NULL) {
		fprintf(stderr, "%s: configuration has errors\n", dir);
		return 1;
	}
	if (runtime_build(&rt, dir) < 0) {
		fprintf(stderr, "%s: configuration has errors\n", dir);
		runtime_free(&rt);
		return 1;
	}
	if (check) {
		printf("%s: configuration OK (%zu services)\n", dir, rt.nsvcs);
		runtime_free(&rt);
		return 0;
	}
	log_setup(rt.cfg->log, rt.cfg->log_level);
	rt.nworkers = worker_count(rt.cfg);
	if (bind_all(&rt) < 0 || drop_privileges(rt.cfg->user) < 0) {
		runtime_free(&rt);
		return 1;
	}
	log_msg(LEVEL_INFO, "mailshim %s started: %zu services, %u workers, %s",
	    MAILSHIM_VERSION, rt.nsvcs, rt.nworkers, tls_library());
	rc = rt.nworkers == 1 ? run_worker(&rt, 0) : supervise(&rt);
	runtime_free(&rt);
	return rc;
}
