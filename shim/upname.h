/*
 * upname: the addresses of one upstream host, looked up on the worker's
 * loop (dns.c) and kept for their TTL, so a record that changes reaches
 * new sessions without a reload, and the loop never waits for DNS. A
 * numeric upstream needs no lookup. When a refresh fails, the last good
 * answer is used for at most UPNAME_STALE_S more seconds (and the log
 * says so); after that, and when there never was one, sessions are
 * refused until the name resolves again.
 *
 * Sessions that arrive while a lookup runs wait on it together: one
 * lookup per name, however many sessions ask.
 */
#ifndef MAILSHIM_UPNAME_H
#define MAILSHIM_UPNAME_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dns.h"

#define UPNAME_MAX 8             /* addresses kept (IPv6 first, then IPv4;
                                  * each family has half when both have more) */
#define UPNAME_STALE_S 3600      /* a stale answer is used this long at most */
#define UPNAME_TTL_MIN 5
#define UPNAME_TTL_MAX 86400

struct upname_wait;
typedef void upname_cb(struct upname_wait *w, bool ok);

/* A session waiting for the addresses; embedded in the session. */
struct upname_wait {
	struct upname_wait *prev, *next;
	struct upname *owner;
	upname_cb *cb;
	bool queued;
};

struct upname {
	struct ev_loop *loop;
	struct dns *dns;
	char *host;                  /* NULL: numeric, never looked up */
	uint16_t port;
	struct sockaddr_storage addr[UPNAME_MAX];
	uint8_t naddr;
	bool secure;                 /* every address record DNSSEC-secure */
	bool have;                   /* an answer was ever had */
	uint8_t last;                /* enum dns_status of the last lookup's failure
	                              * (DNS_SECURE: none) */
	char canon[256];             /* the name after CNAMEs (no final dot) */
	double expires, stale_until; /* ev_now() times */
	struct dns_query *q[2];      /* AAAA, A */
	uint8_t got;                 /* answers in of the pending pair */
	bool ok[2], sec[2];
	struct sockaddr_storage tmp[2][UPNAME_MAX];  /* AAAA's, A's */
	uint8_t ntmp[2];
	uint32_t ttl;                /* the lowest of the answers' */
	struct upname_wait *waiting;
	char why[160];               /* why the last lookup failed */
};

/* host as written in the configuration; numeric hosts are taken as is. */
int upname_init(struct upname *u, struct ev_loop *loop, struct dns *dns,
    const char *host, uint16_t port);
void upname_free(struct upname *u);

enum { UPNAME_READY, UPNAME_WAIT, UPNAME_FAIL };

/*
 * Addresses for a new session: UPNAME_READY (u->addr holds
 * them), UPNAME_WAIT (w is queued; its callback comes once, from the
 * loop) or UPNAME_FAIL (no usable answer; u->why says why).
 */
int upname_get(struct upname *u, struct upname_wait *w);

/* The session ends before its callback: take it off the queue. */
void upname_cancel(struct upname_wait *w);

#endif
