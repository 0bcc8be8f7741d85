#include "reason.h"

#include <stdio.h>
#include <string.h>

/* The shim's own last replies, by cause. */
static const char reply_unavailable[] =
    "421 4.4.1 Upstream mail server unavailable, try again later\r\n";
static const char reply_timeout[] =
    "421 4.4.2 Upstream mail server timed out, try again later\r\n";
static const char reply_tls_failed[] =
    "421 4.7.0 TLS to the upstream failed, try again later\r\n";
static const char reply_internal[] =
    "421 4.3.0 Temporary failure, try again later\r\n";
static const char reply_no_fds[] =
    "421 4.3.2 System resources exhausted, try again later\r\n";
/* RFC 7672 section 2.2: a DANE policy failure, and a DNS one. */
static const char reply_dane[] =
    "421 4.7.5 Upstream authentication failed (DANE), try again later\r\n";
static const char reply_dns[] =
    "421 4.4.3 DNS lookup of the upstream failed, try again later\r\n";
static const char reply_xclient[] =
    "421 4.7.0 Upstream mail server cannot be told the client's address, try again later\r\n";
static const char reply_upstream_gone[] =
    "421 4.4.2 Upstream mail server closed the connection\r\n";

enum form { APPEND, SENTENCE };

struct row {
	const char *name;
	unsigned char result, form;
	const char *text;
	const char *rpt;
	const char *reply;
};

#define ROW(id, nm, res, fm, txt, rp, rep) [id] = { nm, res, fm, txt, rp, rep }

static const struct row rows[R_COUNT] = {
	ROW(R_NONE, "none", RES_OK, APPEND, NULL, NULL, NULL),
	ROW(R_SHUTDOWN, "shutdown", RES_ERROR, APPEND, "mailshim is shutting down", NULL, NULL),
	ROW(R_NO_MEMORY, "no_memory", RES_ERROR, APPEND, "out of memory", NULL, reply_internal),
	ROW(R_NO_BUFFER, "no_buffer", RES_ERROR, APPEND, "out of memory for a relay buffer", NULL, reply_internal),
	ROW(R_NO_FDS, "no_fds", RES_ERROR, APPEND, "cannot open upstream socket", NULL, reply_no_fds),

	ROW(R_PROXY_UNTRUSTED, "proxy_untrusted", RES_REFUSED, APPEND,
	    "peer not in proxy_from may not send a PROXY header", NULL, NULL),
	ROW(R_PROXY_BAD, "proxy_bad", RES_REFUSED, APPEND, "bad PROXY header", NULL, NULL),
	ROW(R_PROXY_EOF, "proxy_eof", RES_ERROR, APPEND, "client left before its PROXY header", NULL, NULL),
	ROW(R_PROXY_TIMEOUT, "proxy_timeout", RES_ERROR, APPEND, "no PROXY header in time", NULL, NULL),

	ROW(R_CL_TLS_START, "client_tls_start", RES_ERROR, APPEND, "cannot start TLS with the client", NULL, NULL),
	ROW(R_CL_TLS_VERSION, "client_tls_version", RES_REFUSED, SENTENCE,
	    "client offered no TLS version the policy allows", NULL, NULL),
	ROW(R_CL_TLS_CIPHER, "client_tls_cipher", RES_REFUSED, APPEND,
	    "client offered no cipher the policy allows", NULL, NULL),
	ROW(R_CL_CERT, "client_cert", RES_REFUSED, APPEND, "client certificate refused", NULL, NULL),
	ROW(R_CL_TLS_FAILED, "client_tls_failed", RES_ERROR, APPEND, "client TLS handshake failed", NULL, NULL),
	ROW(R_CL_HANDSHAKE_TIMEOUT, "client_handshake_timeout", RES_ERROR, APPEND,
	    "client TLS handshake timeout", NULL, NULL),
	ROW(R_CL_SPEAKS_TLS, "client_speaks_tls", RES_ERROR, APPEND,
	    "client sent a TLS handshake to a plaintext port", NULL, NULL),
	ROW(R_CL_INJECTION, "client_injection", RES_REFUSED, APPEND,
	    "client sent data after STARTTLS (command injection)", NULL, NULL),
	ROW(R_CL_SMTP, "client_smtp", RES_REFUSED, SENTENCE, "client broke the SMTP rules", NULL, NULL),
	ROW(R_CL_LOST, "client_lost", RES_ERROR, APPEND, "client connection lost", NULL, NULL),

	ROW(R_UP_SOCKET, "upstream_socket", RES_ERROR, APPEND, "cannot open upstream socket", NULL, reply_unavailable),
	ROW(R_UP_CONNECT, "upstream_connect", RES_ERROR, APPEND, "upstream connect failed", NULL, reply_unavailable),
	ROW(R_UP_CONNECT_TIMEOUT, "upstream_connect_timeout", RES_ERROR, APPEND,
	    "upstream connect timeout", NULL, reply_unavailable),
	ROW(R_UP_PROXY_SEND, "upstream_proxy_send", RES_ERROR, APPEND,
	    "cannot send the PROXY header upstream", NULL, reply_unavailable),
	ROW(R_UP_NO_STARTTLS, "upstream_no_starttls", RES_REFUSED, SENTENCE,
	    "upstream offered no STARTTLS", "starttls-not-supported", reply_tls_failed),
	ROW(R_UP_SETUP_REFUSED, "upstream_setup_refused", RES_REFUSED, SENTENCE,
	    "upstream STARTTLS dialogue failed", NULL, reply_tls_failed),
	ROW(R_UP_SETUP_ERROR, "upstream_setup_error", RES_ERROR, SENTENCE,
	    "upstream STARTTLS dialogue broke", NULL, reply_unavailable),
	ROW(R_UP_SETUP_LOST, "upstream_setup_lost", RES_ERROR, APPEND,
	    "upstream connection lost during STARTTLS", NULL, reply_unavailable),
	ROW(R_UP_SETUP_CLOSED, "upstream_setup_closed", RES_ERROR, APPEND,
	    "upstream closed the connection during STARTTLS", NULL, reply_unavailable),
	ROW(R_UP_INJECTION, "upstream_injection", RES_REFUSED, APPEND,
	    "upstream sent data after its STARTTLS 220 (injection)", NULL, reply_tls_failed),
	ROW(R_UP_TLS_START, "upstream_tls_start", RES_ERROR, APPEND,
	    "cannot start TLS with the upstream", NULL, reply_internal),
	ROW(R_UP_TLS_VERSION, "upstream_tls_version", RES_REFUSED, SENTENCE,
	    "upstream offers no TLS version the policy allows", NULL, reply_tls_failed),
	ROW(R_UP_TLS_CIPHER, "upstream_tls_cipher", RES_REFUSED, APPEND,
	    "upstream offers no cipher the policy allows", NULL, reply_tls_failed),
	ROW(R_UP_CERT_HOST, "upstream_cert_host", RES_REFUSED, APPEND,
	    "upstream certificate does not match upstream_name", "certificate-host-mismatch", reply_tls_failed),
	ROW(R_UP_CERT_EXPIRED, "upstream_cert_expired", RES_REFUSED, APPEND,
	    "upstream certificate expired or not yet valid", "certificate-expired", reply_tls_failed),
	ROW(R_UP_CERT_UNTRUSTED, "upstream_cert_untrusted", RES_REFUSED, APPEND,
	    "upstream certificate not trusted", "certificate-not-trusted", reply_tls_failed),
	ROW(R_UP_CERT_INVALID, "upstream_cert_invalid", RES_REFUSED, APPEND,
	    "upstream certificate verification failed", "validation-failure", reply_tls_failed),
	ROW(R_UP_PIN, "upstream_pin", RES_REFUSED, SENTENCE,
	    "upstream certificate matches no upstream_pin", "validation-failure", reply_tls_failed),
	ROW(R_UP_TLSA_INVALID, "upstream_tlsa_invalid", RES_REFUSED, APPEND,
	    "upstream certificate matches no TLSA record", "tlsa-invalid", reply_dane),
	ROW(R_UP_DANE_REQUIRED, "upstream_dane_required", RES_REFUSED, APPEND,
	    "dane-only: no DNSSEC-secure TLSA records", "dane-required", reply_dane),
	ROW(R_UP_DNSSEC_INVALID, "upstream_dnssec_invalid", RES_REFUSED, APPEND,
	    "DNSSEC lookup for the upstream failed", "dnssec-invalid", reply_dns),
	ROW(R_UP_RESOLVE, "upstream_resolve", RES_ERROR, APPEND,
	    "cannot resolve the upstream", NULL, reply_dns),
	ROW(R_UP_TLS_FAILED, "upstream_tls_failed", RES_REFUSED, APPEND,
	    "upstream TLS handshake failed", NULL, reply_tls_failed),
	ROW(R_UP_HANDSHAKE_TIMEOUT, "upstream_handshake_timeout", RES_ERROR, APPEND,
	    "upstream handshake timeout", NULL, reply_timeout),
	ROW(R_UP_SMTP, "upstream_smtp", RES_ERROR, SENTENCE, "upstream broke the SMTP rules", NULL, reply_internal),
	ROW(R_UP_EHLO_TOO_LONG, "upstream_ehlo_too_long", RES_ERROR, APPEND, "EHLO reply too long", NULL, reply_internal),
	ROW(R_UP_XCLIENT, "upstream_xclient", RES_REFUSED, SENTENCE,
	    "upstream does not take XCLIENT", NULL, reply_xclient),
	ROW(R_UP_GONE, "upstream_gone", RES_ERROR, APPEND,
	    "upstream closed the connection before replying", NULL, reply_upstream_gone),
	ROW(R_UP_LOST, "upstream_lost", RES_ERROR, APPEND, "upstream connection lost", NULL, NULL),
	ROW(R_REPLY_TIMEOUT, "reply_timeout", RES_ERROR, APPEND,
	    "upstream reply timeout (timeout_reply)", NULL, reply_timeout),
	ROW(R_IDLE_TIMEOUT, "idle_timeout", RES_ERROR, APPEND, "idle timeout", NULL, NULL),
	ROW(R_RELAY_DENIED, "relay_denied", RES_REFUSED, APPEND,
	    "client not in relay_from", NULL, NULL),
	ROW(R_MX_LOOKUP, "mx_lookup", RES_ERROR, APPEND, "MX lookup failed", NULL, NULL),
	ROW(R_MX_NULL, "mx_null", RES_REFUSED, APPEND,
	    "the domain accepts no mail (null MX)", NULL, NULL),
	ROW(R_MX_NO_DOMAIN, "mx_no_domain", RES_REFUSED, APPEND,
	    "the recipient domain does not exist", NULL, NULL),
	ROW(R_MX_GREETING, "mx_greeting", RES_ERROR, APPEND,
	    "MX refused the session", NULL, NULL),
	ROW(R_MX_UNSUPPORTED, "mx_unsupported", RES_REFUSED, APPEND,
	    "MAIL parameter the MX does not support", NULL, NULL),
	ROW(R_MX_REFUSED, "mx_refused", RES_REFUSED, APPEND,
	    "MX refused the transaction", NULL, NULL),
};

static const struct row *row(enum reason r)
{
	return &rows[(unsigned)r < R_COUNT ? r : R_NONE];
}

enum result reason_result(enum reason r)
{
	return (enum result)row(r)->result;
}

const char *reason_name(enum reason r)
{
	return row(r)->name;
}

const char *reason_rpt(enum reason r)
{
	return row(r)->rpt;
}

const char *reason_reply(enum reason r)
{
	return row(r)->reply;
}

size_t reason_format(enum reason r, const char *detail, char *out, size_t len)
{
	const struct row *w = row(r);
	int n;

	if (len == 0)
		return 0;
	if (detail != NULL && *detail == '\0')
		detail = NULL;
	if (w->text == NULL)
		n = snprintf(out, len, "%s", detail ? detail : "");
	else if (detail == NULL)
		n = snprintf(out, len, "%s", w->text);
	else if (w->form == SENTENCE)
		n = snprintf(out, len, "%s", detail);
	else
		n = snprintf(out, len, "%s: %s", w->text, detail);
	if (n < 0)
		n = 0;
	return (size_t)n < len ? (size_t)n : len - 1;
}

int fail_set(struct fail *f, enum reason r, const char *detail)
{
	f->why = r;
	f->reply = NULL;
	snprintf(f->detail, sizeof(f->detail), "%s", detail ? detail : "");
	return -1;
}

enum reason reason_of_setup(const char *words)
{
	if (words != NULL && (strstr(words, "no STARTTLS") != NULL ||
	    strstr(words, "refused STARTTLS") != NULL))
		return R_UP_NO_STARTTLS;
	if (words != NULL && strstr(words, "injection") != NULL)
		return R_UP_INJECTION;
	return R_UP_SETUP_REFUSED;
}
