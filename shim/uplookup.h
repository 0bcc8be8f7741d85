/*
 * uplookup: what one session needs from DNS to reach its upstream, found
 * on the worker's loop while the session goes on: the upstream host's
 * addresses (upname.c, shared by the sessions of a service and kept for
 * their TTL), tried in order, and, under a DANE policy, its TLSA records
 * (RFC 7672 section 2.2.3), handed to the certificate check (verify.c).
 *
 * TLSA records are looked up only when the address records were
 * DNSSEC-secure, at _PORT._tcp.NAME with NAME the host after CNAMEs, then
 * the host as configured if that has none. The lookup runs while the TCP
 * connect and the STARTTLS dialogue go on; a handshake that reaches the
 * certificate first waits for it. Like the other parts of a session it
 * returns verdicts and calls the session back (wake) when an answer comes
 * in; it knows nothing of the session.
 */
#ifndef MAILSHIM_UPLOOKUP_H
#define MAILSHIM_UPLOOKUP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "dns.h"
#include "reason.h"
#include "upname.h"
#include "verify.h"

struct uplookup;
typedef void uplookup_wake(struct uplookup *ul);

struct uplookup {
	const struct service *svc;
	struct upname *name;          /* the service's, in this worker */
	struct dns *dns;              /* validating: TLSA lookups */
	struct verify_session *v;     /* where the TLSA outcome goes */
	uplookup_wake *wake;
	struct upname_wait wait;
	struct dns_query *tlsa;
	uint8_t next;                 /* the next address to try */
	bool dane;                    /* upstream_verify dane or dane-only */
	bool orig_tried;              /* TLSA at the configured name asked too */
	char *base;                   /* the TLSA base name in use (DANE only) */
};

enum { UPLOOKUP_READY, UPLOOKUP_WAIT, UPLOOKUP_FAIL };

/*
 * Addresses for the session: UPLOOKUP_READY (take them with
 * uplookup_next), UPLOOKUP_WAIT (wake comes once they are in) or
 * UPLOOKUP_FAIL (f says why). Starts the TLSA lookup when it applies.
 */
int uplookup_start(struct uplookup *ul, struct fail *f);

/* After a wake that followed UPLOOKUP_WAIT: READY or FAIL, as above. */
int uplookup_resume(struct uplookup *ul, struct fail *f);

/* The next address to try, NULL when none is left. */
const struct sockaddr_storage *uplookup_next(struct uplookup *ul);

/* The name the upstream's TLS should be asked for (SNI), NULL: default. */
const char *uplookup_sni(const struct uplookup *ul);

/* The session ends: cancel what is in flight (no wake after this). */
void uplookup_free(struct uplookup *ul);

#endif
