/*
 * generation: one configuration load built for serving (TLS contexts,
 * ticket keys, the EHLO line, each service's counters), and the listening
 * sockets of every worker slot, bound once and pointed at each new load's
 * services.
 */
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "runtime.h"
#include "tls.h"

bool serving;                         /* not -t: the load will be run */

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

/*
 * Everything a configuration needs before serving: the parsed files, TLS
 * contexts, upstream addresses, the EHLO line. Problems go to err as
 * "FILE:LINE: message"; NULL if there was any.
 */
struct generation *generation_load(const char *dir, FILE *err)
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

void runtime_free(struct runtime *rt)
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
int remap_listeners(struct runtime *rt, struct generation *g)
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

/* workers = auto: the CPUs this process may run on (a cpuset, taskset,
 * systemd's CPUAffinity=), not every CPU of the machine. */
static long usable_cpus(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	return sysconf(_SC_NPROCESSORS_ONLN);
}

unsigned worker_count(const struct config *cfg)
{
	long n = cfg->workers ? (long)cfg->workers : usable_cpus();

	if (n < 1)
		n = 1;
	return n > MAX_WORKERS ? MAX_WORKERS : (unsigned)n;
}

int bind_all(struct runtime *rt)
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
