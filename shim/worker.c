/*
 * worker: one worker process on one generation: its resolvers and
 * upstream names, the change of user, one event loop, and the drain on
 * SIGTERM, SIGINT or a reload (SIG_RETIRE) for at most shutdown_grace.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "conn.h"
#include "dns.h"
#include "listener.h"
#include "log.h"
#include "runtime.h"
#include "upname.h"

/* A new worker's own slot and gauge, set between fork() and its start. */
struct worker_metrics worker_metrics;

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
int run_worker(struct runtime *rt, unsigned idx, const sigset_t *mask)
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
