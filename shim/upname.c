/* upname: an upstream host's addresses, kept for their TTL (upname.h). */
#include "upname.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "log.h"

static bool numeric(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons(port);
		return true;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons(port);
		return true;
	}
	return false;
}

int upname_init(struct upname *u, struct ev_loop *loop, struct dns *dns,
    const char *host, uint16_t port)
{
	memset(u, 0, sizeof(*u));
	u->loop = loop;
	u->dns = dns;
	u->port = port;
	snprintf(u->canon, sizeof(u->canon), "%s", host);
	if (numeric(host, port, &u->addr[0])) {
		u->naddr = 1;
		u->have = true;
		return 0;
	}
	u->host = strdup(host);
	return u->host ? 0 : -1;
}

static void wake(struct upname *u, bool ok)
{
	struct upname_wait *w;

	/* Each callback may cancel others or start new waits: pop one by one. */
	while ((w = u->waiting) != NULL) {
		u->waiting = w->next;
		if (u->waiting)
			u->waiting->prev = NULL;
		w->queued = false;
		w->prev = w->next = NULL;
		w->cb(w, ok);
	}
}

void upname_free(struct upname *u)
{
	for (int i = 0; i < 2; i++)
		dns_cancel(u->q[i]);
	u->q[0] = u->q[1] = NULL;
	wake(u, false);
	free(u->host);
	u->host = NULL;
}

static uint32_t clamp_ttl(uint32_t t)
{
	return t < UPNAME_TTL_MIN ? UPNAME_TTL_MIN : t > UPNAME_TTL_MAX ?
	    UPNAME_TTL_MAX : t;
}

/* IPv6 first, then IPv4; when both families have more than their half
 * of the list, each keeps its half, so neither is ever crowded out by the
 * other (whichever answer came first). */
static void merge(struct upname *u)
{
	unsigned n6 = u->ntmp[0], n4 = u->ntmp[1], half = UPNAME_MAX / 2;

	if (n6 + n4 > UPNAME_MAX) {
		if (n6 > half && n4 > half)
			n6 = n4 = half;
		else if (n6 > half)
			n6 = UPNAME_MAX - n4;
		else
			n4 = UPNAME_MAX - n6;
	}
	memcpy(u->addr, u->tmp[0], n6 * sizeof(u->addr[0]));
	memcpy(u->addr + n6, u->tmp[1], n4 * sizeof(u->addr[0]));
	u->naddr = (uint8_t)(n6 + n4);
}

/* Both answers are in: take them, or keep the last good ones a while. */
static void settle(struct upname *u)
{
	double now = ev_now(u->loop);
	bool ok = u->ok[0] && u->ok[1] && u->ntmp[0] + u->ntmp[1] > 0;

	if (ok) {
		merge(u);
		u->secure = u->sec[0] && u->sec[1];
		u->have = true;
		u->expires = now + clamp_ttl(u->ttl);
		u->stale_until = u->expires + UPNAME_STALE_S;
		u->why[0] = '\0';
	} else {
		if (u->why[0] == '\0')
			snprintf(u->why, sizeof(u->why), "upstream %s has no address", u->host);
		if (u->have && now < u->stale_until) {
			log_msg(LEVEL_WARN, "%s; using the last good answer until it is "
			    "%.0f s stale", u->why, u->stale_until - u->expires);
			/* Try again soon, not at every session. */
			u->expires = now + UPNAME_TTL_MIN;
			ok = true;
		} else {
			u->have = false;
			u->naddr = 0;
			log_msg(LEVEL_WARN, "%s", u->why);
		}
	}
	wake(u, ok);
}

static void on_answer(const struct dns_answer *a, void *arg)
{
	struct upname *u = arg;
	int i = a->rrtype == DNS_TYPE_AAAA ? 0 : 1;

	u->q[i] = NULL;
	u->ok[i] = a->status == DNS_SECURE || a->status == DNS_INSECURE;
	u->sec[i] = a->status == DNS_SECURE;
	if (u->ok[i]) {
		u->ntmp[i] = (uint8_t)dns_addrs(a, u->port, u->tmp[i], UPNAME_MAX);
		if (a->nrr && a->ttl < u->ttl)
			u->ttl = a->ttl;
		if (a->nrr && a->canon) {
			size_t n = strlen(a->canon);
			if (n && a->canon[n - 1] == '.')
				n--;
			if (n < sizeof(u->canon))
				snprintf(u->canon, sizeof(u->canon), "%.*s", (int)n, a->canon);
		}
	} else {
		u->last = (uint8_t)a->status;
		snprintf(u->why, sizeof(u->why), "lookup of upstream %s %s failed: %s%s%s",
		    u->host, i ? "A" : "AAAA", dns_status_name(a->status),
		    a->status == DNS_BOGUS ? ": " : "",
		    a->status == DNS_BOGUS ? dns_why_bogus(a) : "");
	}
	if (++u->got == 2)
		settle(u);
}

/* Both families at once; each answer waits in its own list until both
 * are in (merge). A TTL of 0 is a TTL: the lowest of the two stands. */
static int refresh(struct upname *u)
{
	u->got = 0;
	u->ntmp[0] = u->ntmp[1] = 0;
	u->ttl = UINT32_MAX;
	u->last = DNS_SECURE;
	u->why[0] = '\0';
	u->q[0] = dns_lookup(u->dns, u->host, DNS_TYPE_AAAA, on_answer, u);
	u->q[1] = dns_lookup(u->dns, u->host, DNS_TYPE_A, on_answer, u);
	if (u->q[0] && u->q[1])
		return 0;
	dns_cancel(u->q[0]);
	dns_cancel(u->q[1]);
	u->q[0] = u->q[1] = NULL;
	snprintf(u->why, sizeof(u->why), "out of memory for a DNS lookup");
	return -1;
}

int upname_get(struct upname *u, struct upname_wait *w)
{
	if (u->host == NULL)
		return UPNAME_READY;
	if (u->q[0] == NULL && u->q[1] == NULL) {
		if (u->have && ev_now(u->loop) < u->expires)
			return UPNAME_READY;
		if (refresh(u) < 0)
			return u->have ? UPNAME_READY : UPNAME_FAIL;
	}
	w->owner = u;
	w->prev = NULL;
	w->next = u->waiting;
	if (u->waiting)
		u->waiting->prev = w;
	u->waiting = w;
	w->queued = true;
	return UPNAME_WAIT;
}

void upname_cancel(struct upname_wait *w)
{
	if (!w->queued)
		return;
	if (w->prev)
		w->prev->next = w->next;
	else
		w->owner->waiting = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
	w->queued = false;
}
