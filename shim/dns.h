/*
 * dns: DNSSEC-validated lookups on a worker's event loop, for DANE
 * (RFC 7672). libunbound validates every answer itself, from the one trust
 * anchor of the configuration (dnssec_trust_anchor); the resolvers it asks
 * (dns_resolver, or the nameservers of /etc/resolv.conf) are forwarders
 * whose AD bit means nothing. No built-in local zone (test., localhost.,
 * the private reverse zones...) answers in the resolvers' place. Nothing
 * here blocks the loop: answers arrive through an ev_io, each lookup is
 * bounded by timeout_dns.
 *
 * One struct dns per worker process, made after fork() (libunbound runs a
 * resolver thread of its own per context):
 *
 *	static void on_tlsa(const struct dns_answer *a, void *arg)
 *	{
 *		struct sess *s = arg;
 *		s->tlsa_q = NULL;            // the handle died with the answer
 *		if (a->status == DNS_SECURE && !a->nxdomain && !a->nodata)
 *			for (size_t i = 0; i < a->nrr; i++)
 *				sess_add_tlsa(s, a->rr[i].data, a->rr[i].len);
 *		else if (a->status == DNS_BOGUS)
 *			log_msg(LEVEL_WARN, "TLSA %s bogus: %s", a->name,
 *			    dns_why_bogus(a));
 *		sess_tlsa_done(s, a->status);
 *	}
 *
 *	char err[256];
 *	struct dns *d = dns_new(loop, cfg, err, sizeof err);
 *	if (!d) { log_msg(LEVEL_ERROR, "dns: %s", err); ... }
 *	s->tlsa_q = dns_lookup(d, "_25._tcp.mx.example.org", DNS_TYPE_TLSA,
 *	    on_tlsa, s);                     // NULL: out of memory only
 *	...
 *	if (s->tlsa_q) dns_cancel(s->tlsa_q); // session ends first: no callback
 *	...
 *	dns_free(d);                          // cancels what is still pending
 */
#ifndef MAILSHIM_DNS_H
#define MAILSHIM_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

struct ev_loop;
struct dns;
struct dns_query;

/* Record types the shim asks for. Any other type number works too. */
enum {
	DNS_TYPE_A = 1,
	DNS_TYPE_CNAME = 5,
	DNS_TYPE_MX = 15,
	DNS_TYPE_TXT = 16,
	DNS_TYPE_AAAA = 28,
	DNS_TYPE_TLSA = 52,
};

enum dns_status {
	DNS_SECURE,    /* validated from the trust anchor */
	DNS_INSECURE,  /* provably unsigned, or outside the anchor's tree */
	DNS_BOGUS,     /* should be signed and is not, or signatures fail */
	DNS_FAIL,      /* SERVFAIL, REFUSED, other rcode, or a library error */
	DNS_TIMEOUT,   /* no answer within timeout_dns */
};

/* One record's rdata, in wire format (for TLSA: usage, selector, mtype,
 * then the data; for A: 4 bytes; for MX: preference then the name). */
struct dns_rr {
	const uint8_t *data;
	size_t len;
};

/*
 * What a callback is handed. Valid only during the callback: copy what
 * outlives it. An NXDOMAIN or NODATA answer is a valid DNS_SECURE or
 * DNS_INSECURE answer that says "no records" (nrr == 0). Records, flags,
 * ttl and canon come with DNS_SECURE and DNS_INSECURE only: any other
 * status has nrr == 0, ttl 0, no flags and canon = name (a bogus
 * answer's records are forged or broken; they are never handed out).
 */
struct dns_answer {
	enum dns_status status;
	const char *name;         /* as asked */
	int rrtype;               /* as asked */
	int rcode;                /* the DNS rcode; -1 for a library error or timeout */
	int nxdomain;             /* the name does not exist */
	int nodata;               /* the name exists, without records of rrtype */
	uint32_t ttl;             /* seconds the answer may be kept */
	const char *canon;        /* the name after CNAME expansion, with a
	                           * final dot: the name asked (dotted) when no
	                           * records came */
	const struct dns_rr *rr;  /* nrr records of rrtype, any order */
	size_t nrr;
	const char *why_bogus;    /* libunbound's reason, or NULL */
	const char *error;        /* library error / "timeout", or NULL */
};

typedef void dns_cb(const struct dns_answer *answer, void *arg);

/*
 * A resolver context on loop, from cfg's dns_resolvers (none: the
 * nameservers of /etc/resolv.conf), dnssec_trust_anchor (the only trust
 * anchor; an unreadable or malformed file fails here) and timeout_dns_ms.
 * NULL on failure, with the reason in err. cfg may be freed afterwards.
 */
struct dns *dns_new(struct ev_loop *loop, const struct config *cfg,
    char *err, size_t errlen);

/*
 * The same without DNSSEC validation, for upstreams under no DANE policy:
 * private names in unsigned zones (or in /etc/hosts, which it reads) must
 * resolve as getaddrinfo() would resolve them. Its answers are never
 * DNS_SECURE.
 */
struct dns *dns_new_plain(struct ev_loop *loop, const struct config *cfg,
    char *err, size_t errlen);

/* Cancel every pending lookup (no callback is called) and free d.
 * NULL is a no-op. Never from inside a dns callback. */
void dns_free(struct dns *d);

/*
 * Look name up (absolute or not: a final dot is optional) for rrtype in
 * class IN. The callback is called exactly once, always later from the
 * loop, never from inside dns_lookup, unless the query is cancelled
 * first; failures to start (a bad name, a library error) come as a
 * DNS_FAIL answer. Returns NULL only when out of memory (then no callback).
 * The handle is valid until the callback returns or dns_cancel().
 */
struct dns_query *dns_lookup(struct dns *d, const char *name, int rrtype,
    dns_cb *cb, void *arg);

/* After it the callback is never called. Safe from inside any dns
 * callback, including the query's own (then a no-op). NULL is a no-op. */
void dns_cancel(struct dns_query *q);

/* Lookups started and not yet answered or cancelled. */
size_t dns_pending(const struct dns *d);

/*
 * The A or AAAA records of answer as socket addresses with port (host
 * order), at most max of them written to out; returns how many. Other
 * types, or records of the wrong size, give none.
 */
size_t dns_addrs(const struct dns_answer *a, uint16_t port,
    struct sockaddr_storage *out, size_t max);

/* Why a DNS_BOGUS answer failed validation; "" when there is no reason. */
const char *dns_why_bogus(const struct dns_answer *a);

/* "secure", "insecure", "bogus", "fail", "timeout": for log lines. */
const char *dns_status_name(enum dns_status s);

#endif
