/*
 * verify: the one place that decides how the upstream hop is
 * authenticated. A BoringSSL custom verify callback runs for every full
 * handshake and, with reverify-on-resume, for every resumed one too, so
 * the decision is made before the handshake ends and can never be
 * skipped: chain and name against upstream_ca (RFC 9525: DNS-ID or IP-ID
 * only, never the subject CN), SPKI pins, and DANE (RFC 7672) from the
 * TLSA records the session's DNS lookup found.
 *
 * The session owns a struct verify_session and fills in the TLSA outcome
 * when DNS answers. If the handshake reaches the certificate before that,
 * the callback pauses it (ssl_verify_retry; SSL_get_error then says
 * SSL_ERROR_WANT_CERTIFICATE_VERIFY) and the session calls the handshake
 * again once the answer is in.
 */
#ifndef MAILSHIM_VERIFY_H
#define MAILSHIM_VERIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dane.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

/* How the upstream was authenticated (the log's upstream_auth). */
enum verify_auth {
	AUTH_NONE, AUTH_ENCRYPT, AUTH_CA, AUTH_PIN, AUTH_DANE_EE, AUTH_DANE_TA,
};

/* Why it was not; each has an RFC 8460 result type but VF_OK, VF_INTERNAL. */
enum verify_fail {
	VF_OK,
	VF_NOT_TRUSTED,      /* certificate-not-trusted */
	VF_HOST_MISMATCH,    /* certificate-host-mismatch */
	VF_EXPIRED,          /* certificate-expired */
	VF_NO_PIN,           /* certificate-not-trusted: no pin matched */
	VF_TLSA_INVALID,     /* tlsa-invalid */
	VF_DANE_REQUIRED,    /* dane-required */
	VF_DNSSEC_INVALID,   /* dnssec-invalid */
	VF_VALIDATION,       /* validation-failure: no certificate, bad chain */
	VF_INTERNAL,
};

/* What DNS said about TLSA records for this session. */
enum verify_tlsa {
	TLSA_NOT_WANTED,     /* level encrypt or verify: no DANE */
	TLSA_PENDING,        /* asked, no answer yet: the handshake waits */
	TLSA_NONE,           /* secure denial, or an insecure zone: no DANE */
	TLSA_FOUND,          /* secure records (maybe all unusable) */
	TLSA_FAILED,         /* bogus, SERVFAIL, timeout: refuse */
};

struct verify_session {
	const struct service *svc;
	uint8_t tlsa;                 /* enum verify_tlsa */
	uint8_t auth;                 /* enum verify_auth, after the callback */
	uint8_t fail;                 /* enum verify_fail */
	bool paused;                  /* the callback asked to wait for DNS */
	uint8_t *rdata;               /* copies of the records' RDATA */
	struct dane_tlsa *recs;
	size_t nrecs;
	char *base;                   /* TLSA base name (after CNAMEs) */
	const char *name;             /* the name to verify (an MX host);
	                                 NULL: upstream_name */
	char *detail;                 /* plain words for the log, allocated when
	                                 there are some (NULL: none) */
};

/* Set up an upstream context (its CA store already loaded from
 * upstream_ca): custom verification, reverify on resume. */
void verify_ctx_init(SSL_CTX *ctx);

void verify_session_init(struct verify_session *v, const struct service *svc);
void verify_session_free(struct verify_session *v);

/* The session's state travels with the SSL (ex_data), the verdict of an
 * earlier handshake forgotten, the TLSA outcome kept; 0 on success. */
int verify_attach(SSL *ssl, struct verify_session *v);

/* DNS's answer: records (RDATA each) and the TLSA base name, copied. */
int verify_set_tlsa(struct verify_session *v, const uint8_t *const *rdata,
    const size_t *len, size_t n, const char *base);
/* No TLSA (secure denial or insecure), or a failed lookup. */
void verify_set_tlsa_state(struct verify_session *v, enum verify_tlsa state,
    const char *detail);

const char *verify_auth_name(enum verify_auth a);

/* The row of the reasons table (reason.h) for the session's failure, or
 * R_NONE (0) when the check did not refuse. */
int verify_reason_row(const struct verify_session *v);
/* RFC 8460 result type of a failure, or NULL. */
const char *verify_fail_code(enum verify_fail f);

#endif
