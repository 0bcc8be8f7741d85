/*
 * reason: why a session ended, as one table. Every close names a row; the
 * row gives the session's result (ok, refused, error), the plain words of
 * the log line, the RFC 8460 (TLS-RPT) result type where one applies, and
 * the reply the client hears when the shim still can say something.
 * Metrics count sessions by this enum, so each row has a stable name.
 * Pure: no I/O.
 */
#ifndef MAILSHIM_REASON_H
#define MAILSHIM_REASON_H

#include <stddef.h>

enum result { RES_OK, RES_REFUSED, RES_ERROR };

enum reason {
	R_NONE,                 /* a session that ended as it should */
	R_SHUTDOWN,
	R_NO_MEMORY,
	R_NO_BUFFER,
	R_NO_FDS,
	/* the PROXY header from a load balancer */
	R_PROXY_UNTRUSTED,
	R_PROXY_BAD,
	R_PROXY_EOF,
	R_PROXY_TIMEOUT,
	/* the listen hop */
	R_CL_TLS_START,
	R_CL_TLS_VERSION,
	R_CL_TLS_CIPHER,
	R_CL_CERT,
	R_CL_TLS_FAILED,
	R_CL_HANDSHAKE_TIMEOUT,
	R_CL_SPEAKS_TLS,
	R_CL_INJECTION,
	R_CL_SMTP,
	R_CL_LOST,
	/* the upstream hop */
	R_UP_SOCKET,
	R_UP_CONNECT,
	R_UP_CONNECT_TIMEOUT,
	R_UP_PROXY_SEND,
	R_UP_NO_STARTTLS,
	R_UP_SETUP_REFUSED,
	R_UP_SETUP_ERROR,
	R_UP_SETUP_LOST,
	R_UP_SETUP_CLOSED,
	R_UP_INJECTION,
	R_UP_TLS_START,
	R_UP_TLS_VERSION,
	R_UP_TLS_CIPHER,
	R_UP_CERT_HOST,
	R_UP_CERT_EXPIRED,
	R_UP_CERT_UNTRUSTED,
	R_UP_CERT_INVALID,
	R_UP_PIN,
	R_UP_TLSA_INVALID,
	R_UP_DANE_REQUIRED,
	R_UP_DNSSEC_INVALID,
	R_UP_RESOLVE,
	R_UP_TLS_FAILED,
	R_UP_HANDSHAKE_TIMEOUT,
	R_UP_SMTP,
	R_UP_EHLO_TOO_LONG,
	R_UP_XCLIENT,
	R_UP_GONE,
	R_UP_LOST,
	R_REPLY_TIMEOUT,
	R_IDLE_TIMEOUT,
	/* the outbound relay (upstream = mx) */
	R_RELAY_DENIED,
	R_MX_LOOKUP,
	R_MX_NULL,
	R_MX_NO_DOMAIN,
	R_MX_GREETING,
	R_MX_UNSUPPORTED,
	R_MX_REFUSED,           /* the MX's own no: not a TLS failure */
	R_COUNT
};

/* A verdict of a part of the session (handshake, PROXY reader, upstream
 * dialogue) that cannot go on: the row, words of its own, and a reply to
 * the client other than the row's (NULL: the row's). */
struct fail {
	enum reason why;
	const char *reply;
	char detail[200];
};

enum result reason_result(enum reason r);
const char *reason_name(enum reason r);      /* "idle_timeout" */
const char *reason_rpt(enum reason r);       /* RFC 8460 type, or NULL */
const char *reason_reply(enum reason r);     /* 421 ..., or NULL */

/*
 * The log's words: the row's text, ": detail" appended when there is a
 * detail; rows whose words come from elsewhere (the SMTP layer, a peer's
 * version) are the detail alone when there is one. Returns the length.
 */
size_t reason_format(enum reason r, const char *detail, char *out, size_t len);

/* Fill f; detail may be NULL. Returns -1, for `return fail_set(...)`. */
int fail_set(struct fail *f, enum reason r, const char *detail);

/* The row for a refusal of the upstream STARTTLS dialogue, from the SMTP
 * layer's words (a missing STARTTLS has its own TLS-RPT type). */
enum reason reason_of_setup(const char *words);

#endif
