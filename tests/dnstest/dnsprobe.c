/*
 * dnsprobe: drives shim/dns.c on a libev loop, for tests/integration/
 * test_dns.py. Issues every lookup of its command line at once, prints one
 * line per answer, then a summary line.
 *
 * usage: dnsprobe [-c CONFDIR] [-r RESOLVER]... [-a TRUST_ANCHOR]
 *                 [-t TIMEOUT_MS] [-k TICK_MS] [-w LINGER_MS] [-R AT_MS]
 *                 QUERY...
 *   -c       read dns_resolver, dnssec_trust_anchor, timeout_dns from a
 *            configuration directory (flags given as well override it)
 *   -k       a repeating timer of TICK_MS; the summary says how often it
 *            fired and the longest gap between two ticks (a blocked loop
 *            shows as a long gap)
 *   -w       keep the loop running LINGER_MS after the last answer, so a
 *            callback of a cancelled lookup would still be seen
 *   -R       once every answer is in, at AT_MS after the start, ask every
 *            plain QUERY again on the same context (wave=2): a long-lived
 *            resolver seeing records change; "wave1" is printed first
 *   QUERY    NAME/TYPE (TYPE: A AAAA CNAME MX TXT TLSA or a number),
 *            prefixed with ! to cancel it right after starting it, or ^ to
 *            cancel it from inside the first other answer's callback
 *
 * Output, key=value:
 *   answer name= type= wave= status= nxdomain= nodata= rcode= ttl= canon= n=
 *          rr=HEX,HEX|- addrs=IP,IP|- ms= why="..." error="..."
 *   cancel name= type=
 *   done answers= cancelled= late= ticks= maxgap_ms= ms=
 * Exit status: 0; 2 usage or setup error; 3 a cancelled lookup's callback ran.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ev.h>

#include "config.h"
#include "dns.h"
#include "log.h"

enum mode { M_WAIT, M_CANCEL_NOW, M_CANCEL_IN_CB };

struct slot {
	char *name;
	int type;
	enum mode mode;
	struct dns_query *q;
	int done, cancelled;
	double t0;
};

static struct slot *slots;
static size_t nslots, waiting, answers, ncancelled, late;
static struct ev_loop *loop;
static struct dns *dns;
static ev_timer tick, linger, again;
static unsigned long ticks;
static double last_tick, max_gap, linger_s, again_s, start;
static int cancelled_in_cb, wave = 1;

static const struct { const char *name; int type; } types[] = {
	{ "A", DNS_TYPE_A }, { "AAAA", DNS_TYPE_AAAA },
	{ "CNAME", DNS_TYPE_CNAME }, { "MX", DNS_TYPE_MX },
	{ "TXT", DNS_TYPE_TXT }, { "TLSA", DNS_TYPE_TLSA },
};

static const char *type_name(int t, char *buf, size_t len)
{
	for (size_t i = 0; i < sizeof types / sizeof *types; i++)
		if (types[i].type == t)
			return types[i].name;
	snprintf(buf, len, "%d", t);
	return buf;
}

static int parse_type(const char *s)
{
	char *end;
	long v;

	for (size_t i = 0; i < sizeof types / sizeof *types; i++)
		if (!strcasecmp(types[i].name, s))
			return types[i].type;
	v = strtol(s, &end, 10);
	return *s && !*end && v >= 0 && v <= 65535 ? (int)v : -1;
}

static void print_answer(const struct slot *s, const struct dns_answer *a)
{
	char tbuf[16], ip[INET6_ADDRSTRLEN];
	struct sockaddr_storage ss[64];
	size_t naddr = dns_addrs(a, 25, ss, 64);

	printf("answer name=%s type=%s wave=%d status=%s nxdomain=%d nodata=%d "
	    "rcode=%d ttl=%u canon=%s n=%zu rr=", a->name, type_name(a->rrtype,
	    tbuf, sizeof tbuf), wave, dns_status_name(a->status), a->nxdomain, a->nodata,
	    a->rcode, a->ttl, a->canon, a->nrr);
	for (size_t i = 0; i < a->nrr; i++) {
		if (i)
			putchar(',');
		for (size_t j = 0; j < a->rr[i].len; j++)
			printf("%02x", a->rr[i].data[j]);
	}
	printf("%s addrs=", a->nrr ? "" : "-");
	for (size_t i = 0; i < naddr; i++) {
		const void *p = ss[i].ss_family == AF_INET ?
		    (const void *)&((struct sockaddr_in *)&ss[i])->sin_addr :
		    (const void *)&((struct sockaddr_in6 *)&ss[i])->sin6_addr;
		printf("%s%s", i ? "," : "", inet_ntop(ss[i].ss_family, p, ip,
		    sizeof ip));
	}
	printf("%s ms=%.0f why=\"%s\" error=\"%s\"\n", naddr ? "" : "-",
	    (ev_now(loop) - s->t0) * 1000, dns_why_bogus(a),
	    a->error ? a->error : "");
	fflush(stdout);
}

static void maybe_finish(void)
{
	if (waiting > 0)
		return;
	if (wave == 1 && again_s > 0) {
		double at = start + again_s - ev_now(loop);
		printf("wave1\n");
		fflush(stdout);
		ev_timer_set(&again, at > 0 ? at : 0., 0.);
		ev_timer_start(loop, &again);
		wave = 2;
		return;
	}
	if (ev_is_active(&again))
		return;
	if (linger_s > 0 && !ev_is_active(&linger))
		ev_timer_start(loop, &linger);
	else if (linger_s <= 0)
		ev_break(loop, EVBREAK_ALL);
}

static void cancel_slot(struct slot *s)
{
	char tbuf[16];

	dns_cancel(s->q);
	s->cancelled = 1;
	ncancelled++;
	printf("cancel name=%s type=%s\n", s->name, type_name(s->type, tbuf,
	    sizeof tbuf));
}

static void on_answer(const struct dns_answer *a, void *arg)
{
	struct slot *s = arg;

	ev_now_update(loop);
	if (s->cancelled || s->done) {
		printf("late name=%s\n", s->name);
		late++;
		return;
	}
	s->done = 1;
	answers++;
	waiting--;
	print_answer(s, a);
	dns_cancel(s->q);   /* its own handle, inside its callback: a no-op */
	s->q = NULL;
	if (!cancelled_in_cb) {
		cancelled_in_cb = 1;
		for (size_t i = 0; i < nslots; i++)
			if (slots[i].mode == M_CANCEL_IN_CB && !slots[i].done &&
			    !slots[i].cancelled)
				cancel_slot(&slots[i]);
	}
	maybe_finish();
}

static void on_tick(struct ev_loop *l, ev_timer *w, int revents)
{
	double now = ev_time();

	(void)l;
	(void)w;
	(void)revents;
	if (ticks && now - last_tick > max_gap)
		max_gap = now - last_tick;
	last_tick = now;
	ticks++;
}

/* Wave 2: the plain lookups once more, on the same context. */
static void on_again(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	for (size_t i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];
		if (s->mode != M_WAIT)
			continue;
		s->done = 0;
		s->t0 = ev_now(l);
		if (!(s->q = dns_lookup(dns, s->name, s->type, on_answer, s)))
			abort();
		waiting++;
	}
	maybe_finish();
}

static void on_linger(struct ev_loop *l, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	ev_break(l, EVBREAK_ALL);
}

static int usage(void)
{
	fprintf(stderr, "usage: dnsprobe [-c CONFDIR] [-r RESOLVER]... "
	    "[-a TRUST_ANCHOR] [-t TIMEOUT_MS] [-k TICK_MS] [-w LINGER_MS] "
	    "[-R AT_MS] [!|^]NAME/TYPE...\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct config *loaded = NULL, cfg = { .timeout_dns_ms = 10000,
	    .dnssec_trust_anchor = "/usr/share/dns/root.key" };
	char **resolvers = calloc((size_t)argc, sizeof *resolvers);
	size_t nres = 0;
	const char *anchor = NULL;
	long timeout = -1, tick_ms = 0;
	char err[512];
	struct dns *d = NULL;
	int c, rc = 2;

	log_setup(LOG_STDERR, LEVEL_DEBUG);
	while ((c = getopt(argc, argv, "c:r:a:t:k:w:R:")) != -1) {
		switch (c) {
		case 'c':
			if (!(loaded = config_load(optarg, stderr)))
				goto out;
			cfg = *loaded;
			break;
		case 'r': resolvers[nres++] = optarg; break;
		case 'a': anchor = optarg; break;
		case 't': timeout = atol(optarg); break;
		case 'k': tick_ms = atol(optarg); break;
		case 'w': linger_s = atol(optarg) / 1000.0; break;
		case 'R': again_s = atol(optarg) / 1000.0; break;
		default: usage(); goto out;
		}
	}
	if (optind >= argc) {
		usage();
		goto out;
	}
	if (nres) {
		cfg.dns_resolvers = resolvers;
		cfg.ndns_resolvers = nres;
	}
	if (anchor)
		cfg.dnssec_trust_anchor = (char *)anchor;
	if (timeout > 0)
		cfg.timeout_dns_ms = (uint32_t)timeout;

	nslots = (size_t)(argc - optind);
	slots = calloc(nslots, sizeof *slots);
	for (size_t i = 0; i < nslots; i++) {
		char *q = argv[optind + i], *slash;
		struct slot *s = &slots[i];
		if (*q == '!' || *q == '^')
			s->mode = *q++ == '!' ? M_CANCEL_NOW : M_CANCEL_IN_CB;
		if (!(slash = strrchr(q, '/')) || (s->type = parse_type(slash + 1)) < 0) {
			usage();
			goto out;
		}
		*slash = '\0';
		s->name = q;
	}

	loop = ev_default_loop(0);
	if (!(d = dns = dns_new(loop, &cfg, err, sizeof err))) {
		fprintf(stderr, "dns_new: %s\n", err);
		printf("setup error=\"%s\"\n", err);
		goto out;
	}
	if (tick_ms > 0) {
		ev_timer_init(&tick, on_tick, tick_ms / 1000.0, tick_ms / 1000.0);
		ev_timer_start(loop, &tick);
	}
	ev_timer_init(&linger, on_linger, linger_s, 0.);
	ev_timer_init(&again, on_again, 0., 0.);

	start = ev_now(loop);
	for (size_t i = 0; i < nslots; i++) {
		struct slot *s = &slots[i];
		s->t0 = ev_now(loop);
		if (!(s->q = dns_lookup(d, s->name, s->type, on_answer, s))) {
			fprintf(stderr, "dns_lookup %s: out of memory\n", s->name);
			goto out;
		}
		if (s->mode == M_CANCEL_NOW)
			cancel_slot(s);
		else if (s->mode == M_WAIT)
			waiting++;
	}
	/* ^ lookups with nothing else to wait for are cancelled at once. */
	if (waiting == 0)
		for (size_t i = 0; i < nslots; i++)
			if (slots[i].mode == M_CANCEL_IN_CB)
				cancel_slot(&slots[i]);
	if (waiting > 0 || linger_s > 0 || again_s > 0) {
		maybe_finish();
		ev_run(loop, 0);
	}

	ev_now_update(loop);
	printf("done answers=%zu cancelled=%zu late=%zu pending=%zu ticks=%lu "
	    "maxgap_ms=%.0f ms=%.0f\n", answers, ncancelled, late,
	    dns_pending(d), ticks, max_gap * 1000, (ev_now(loop) - start) * 1000);
	rc = late ? 3 : 0;
out:
	dns_free(d);
	if (loop) {
		ev_timer_stop(loop, &tick);
		ev_loop_destroy(loop);
	}
	config_free(loaded);
	free(slots);
	free(resolvers);
	return rc;
}
