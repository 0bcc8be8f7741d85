/*
 * dns: libunbound on a libev loop.
 *
 * Why a threaded context (ub_ctx_async(ctx, 1)) and an ev_io on ub_fd(),
 * not ub_ctx_create_ub_event() with a libev-backed event base: Debian's
 * libunbound is built against libevent, not with the pluggable event API,
 * so the struct ub_event_base it takes is a libevent event_base; feeding
 * it anything else crashes. The thread is libunbound's own, one per
 * worker, talking to us over a pipe; ub_process() reads that pipe without
 * blocking and runs the callbacks here, in the loop's thread.
 *
 * The libev linked beside libunbound must be the core object alone (see
 * the Makefile): Debian's libev.so also exports libevent-compatible
 * event_* functions, and libunbound's thread would call those.
 */
#include "dns.h"
#include "dns_int.h"
#include "log.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <unbound.h>

#define DNS_MAGIC   0x646e7351u   /* "dnsQ" */
#define CLASS_IN    1
#define RCODE_NXDOMAIN 3
#define DNS_NAME_MAX 255          /* presentation form, RFC 1035 2.3.4 */

struct dns {
	struct ev_loop *loop;
	struct ub_ctx *ub;
	ev_io io;                    /* readable: answers are waiting */
	double timeout;              /* seconds, one lookup */
	struct dns_query *pending;   /* doubly linked */
	size_t npending;
	int thread_started;
	struct dns_query *in_cb;     /* whose callback runs right now */
};

struct dns_query {
	uint32_t magic;
	struct dns *dns;
	struct dns_query *prev, *next;
	ev_timer timer;              /* timeout_dns, or 0 s to report a start failure */
	dns_cb *cb;
	void *arg;
	int id;                      /* libunbound's async id; -1: not started */
	int rrtype;
	const char *fail;            /* why it could not start */
	char name[];
};

static void on_readable(struct ev_loop *loop, ev_io *w, int revents);

static struct dns *make(struct ev_loop *loop, const struct config *cfg,
    const char *ta, char *err, size_t errlen);

struct dns *dns_new(struct ev_loop *loop, const struct config *cfg,
    char *err, size_t errlen)
{
	/* An empty name is refused below, not taken for "no validation". */
	return make(loop, cfg, cfg->dnssec_trust_anchor ? cfg->dnssec_trust_anchor : "",
	    err, errlen);
}

struct dns *dns_new_plain(struct ev_loop *loop, const struct config *cfg,
    char *err, size_t errlen)
{
	return make(loop, cfg, NULL, err, errlen);
}

static struct dns *make(struct ev_loop *loop, const struct config *cfg,
    const char *ta, char *err, size_t errlen)
{
	struct dns *d = calloc(1, sizeof *d);

	if (!d) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	d->loop = loop;
	d->timeout = cfg->timeout_dns_ms / 1000.0;
	if (!(d->ub = ub_ctx_create())) {
		snprintf(err, errlen, "cannot create a libunbound context");
		goto err0;
	}
	if (dns_setup(d->ub, cfg, ta, err, errlen))
		goto err1;
	ev_io_init(&d->io, on_readable, ub_fd(d->ub), EV_READ);
	d->io.data = d;
	ev_io_start(loop, &d->io);
	return d;
err1:
	ub_ctx_delete(d->ub);
err0:
	free(d);
	return NULL;
}

static void unlink_query(struct dns_query *q)
{
	struct dns *d = q->dns;

	ev_timer_stop(d->loop, &q->timer);
	if (q->prev)
		q->prev->next = q->next;
	else
		d->pending = q->next;
	if (q->next)
		q->next->prev = q->prev;
	d->npending--;
	q->magic = 0;
}

static void drop(struct dns_query *q)
{
	if (q->id >= 0)
		(void)ub_cancel(q->dns->ub, q->id); /* UB_NOID: already gone */
	unlink_query(q);
	free(q);
}

void dns_free(struct dns *d)
{
	if (!d)
		return;
	while (d->pending)
		drop(d->pending);
	ev_io_stop(d->loop, &d->io);
	ub_ctx_delete(d->ub);   /* stops and joins the resolver thread */
	free(d);
}

/* The name with a final dot, in buf when one must be added. */
static const char *dotted(const char *name, char *buf, size_t len)
{
	size_t n = strlen(name);

	if (n == 0 || name[n - 1] == '.' || n + 2 > len)
		return name;
	memcpy(buf, name, n);
	buf[n] = '.';
	buf[n + 1] = '\0';
	return buf;
}

static void deliver(struct dns_query *q, struct dns_answer *a)
{
	struct dns *d = q->dns;
	char canon[DNS_NAME_MAX + 2];

	a->canon = dotted(a->canon ? a->canon : q->name, canon, sizeof canon);
	unlink_query(q);
	d->in_cb = q;
	q->cb(a, q->arg);
	d->in_cb = NULL;
	free(q);
}

static enum dns_status status_of(const struct ub_result *r)
{
	/* Bogus first: a forged answer has rcode NOERROR and data. */
	if (r->bogus)
		return DNS_BOGUS;
	if (r->rcode != 0 && r->rcode != RCODE_NXDOMAIN)
		return DNS_FAIL;
	return r->secure ? DNS_SECURE : DNS_INSECURE;
}

static void on_result(void *arg, int err, struct ub_result *r)
{
	struct dns_query *q = arg;
	struct dns_answer a;
	struct dns_rr *rr = NULL;
	size_t n = 0, i;

	if (!q || q->magic != DNS_MAGIC)
		abort();
	a = (struct dns_answer){ .name = q->name, .rrtype = q->rrtype,
	    .rcode = -1 };
	if (err || !r) {
		a.status = DNS_FAIL;
		a.error = err ? ub_strerror(err) : "no result";
		goto out;
	}
	a.status = status_of(r);
	a.rcode = r->rcode;
	a.why_bogus = r->why_bogus;
	/* Flags, records and TTL only where they can be believed. */
	if (a.status != DNS_SECURE && a.status != DNS_INSECURE)
		goto out;
	a.nxdomain = r->rcode == RCODE_NXDOMAIN;
	a.nodata = r->rcode == 0 && !r->havedata;
	a.ttl = r->ttl > 0 ? (uint32_t)r->ttl : 0;
	if (r->canonname)
		a.canon = r->canonname;
	while (r->havedata && r->data[n])
		n++;
	if (n && !(rr = calloc(n, sizeof *rr))) {
		a = (struct dns_answer){ .status = DNS_FAIL, .name = q->name,
		    .rrtype = q->rrtype, .rcode = -1, .error = "out of memory" };
		n = 0;
	}
	for (i = 0; i < n; i++)
		rr[i] = (struct dns_rr){ (const uint8_t *)r->data[i],
		    r->len[i] > 0 ? (size_t)r->len[i] : 0 };
	a.rr = rr;
	a.nrr = n;
out:
	deliver(q, &a);
	free(rr);
	ub_resolve_free(r);
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct dns *d = w->data;
	int rc;

	(void)loop;
	(void)revents;
	if (!d || d->io.data != d)
		abort();
	/* Reads every answer waiting, without blocking, and calls on_result. */
	if ((rc = ub_process(d->ub)) == 0)
		return;
	log_msg(LEVEL_ERROR, "dns: reading answers: %s", ub_strerror(rc));
	/* The resolver thread is gone: stop watching a pipe that stays
	 * readable at EOF. Pending and later lookups end in DNS_TIMEOUT. */
	if (rc == UB_PIPE)
		ev_io_stop(d->loop, &d->io);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct dns_query *q = w->data;
	struct dns_answer a;

	(void)loop;
	(void)revents;
	if (!q || q->magic != DNS_MAGIC)
		abort();
	a = (struct dns_answer){ .name = q->name, .rrtype = q->rrtype,
	    .rcode = -1 };
	if (q->fail) {
		a.status = DNS_FAIL;
		a.error = q->fail;
	} else {
		/* The resolver thread may go on asking; its answer is dropped. */
		(void)ub_cancel(q->dns->ub, q->id);
		q->id = -1;
		a.status = DNS_TIMEOUT;
		a.error = "timeout";
	}
	deliver(q, &a);
}

/* libunbound starts its thread at the first lookup; the thread inherits
 * our signal mask. Block everything around that call so signals meant
 * for the worker's loop are never delivered to the resolver thread. */
static int start(struct dns *d, struct dns_query *q)
{
	sigset_t all, old;
	int rc;

	if (d->thread_started)
		return ub_resolve_async(d->ub, q->name, q->rrtype, CLASS_IN, q,
		    on_result, &q->id);
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = ub_resolve_async(d->ub, q->name, q->rrtype, CLASS_IN, q,
	    on_result, &q->id);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	d->thread_started = rc == 0;
	return rc;
}

struct dns_query *dns_lookup(struct dns *d, const char *name, int rrtype,
    dns_cb *cb, void *arg)
{
	size_t len = strlen(name);
	struct dns_query *q = calloc(1, sizeof *q + len + 1);
	int rc;

	if (!q)
		return NULL;
	q->magic = DNS_MAGIC;
	q->dns = d;
	q->cb = cb;
	q->arg = arg;
	q->id = -1;
	q->rrtype = rrtype;
	memcpy(q->name, name, len + 1);
	if ((q->next = d->pending))
		q->next->prev = q;
	d->pending = q;
	d->npending++;

	ev_timer_init(&q->timer, on_timer, d->timeout, 0.);
	q->timer.data = q;
	if (rrtype < 0 || rrtype > 65535 || len == 0) {
		q->fail = "bad query";
	} else if ((rc = start(d, q))) {
		q->fail = ub_strerror(rc);
		q->id = -1;
	}
	if (q->fail)   /* reported from the loop, as promised */
		ev_timer_set(&q->timer, 0., 0.);
	ev_timer_start(d->loop, &q->timer);
	return q;
}

void dns_cancel(struct dns_query *q)
{
	if (!q || q == q->dns->in_cb)
		return;
	if (q->magic != DNS_MAGIC)
		abort();
	drop(q);
}

size_t dns_pending(const struct dns *d)
{
	return d->npending;
}

size_t dns_addrs(const struct dns_answer *a, uint16_t port,
    struct sockaddr_storage *out, size_t max)
{
	size_t i, n = 0;

	for (i = 0; i < a->nrr && n < max; i++) {
		memset(&out[n], 0, sizeof out[n]);
		if (a->rrtype == DNS_TYPE_A && a->rr[i].len == 4) {
			struct sockaddr_in *s = (struct sockaddr_in *)&out[n];
			s->sin_family = AF_INET;
			s->sin_port = htons(port);
			memcpy(&s->sin_addr, a->rr[i].data, 4);
			n++;
		} else if (a->rrtype == DNS_TYPE_AAAA && a->rr[i].len == 16) {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)&out[n];
			s->sin6_family = AF_INET6;
			s->sin6_port = htons(port);
			memcpy(&s->sin6_addr, a->rr[i].data, 16);
			n++;
		}
	}
	return n;
}

const char *dns_why_bogus(const struct dns_answer *a)
{
	return a->why_bogus ? a->why_bogus : "";
}

const char *dns_status_name(enum dns_status s)
{
	static const char *const names[] = {
		[DNS_SECURE] = "secure", [DNS_INSECURE] = "insecure",
		[DNS_BOGUS] = "bogus", [DNS_FAIL] = "fail",
		[DNS_TIMEOUT] = "timeout",
	};

	return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}
