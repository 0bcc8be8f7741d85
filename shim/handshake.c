#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "handshake.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define EXT_SUPPORTED_VERSIONS 0x002b

static bool grease(uint16_t v)
{
	return (v & 0x0f0f) == 0x0a0a;
}

struct rd {
	const uint8_t *p;
	size_t n;
};

static bool take(struct rd *r, size_t k, const uint8_t **out)
{
	if (r->n < k)
		return false;
	if (out != NULL)
		*out = r->p;
	r->p += k;
	r->n -= k;
	return true;
}

static bool u8(struct rd *r, unsigned *v)
{
	const uint8_t *q;

	if (!take(r, 1, &q))
		return false;
	*v = q[0];
	return true;
}

static bool u16(struct rd *r, unsigned *v)
{
	const uint8_t *q;

	if (!take(r, 2, &q))
		return false;
	*v = (unsigned)q[0] << 8 | q[1];
	return true;
}

/* Skip a vector with a length prefix of w bytes. */
static bool skip_vec(struct rd *r, int w)
{
	unsigned len;

	return (w == 1 ? u8(r, &len) : u16(r, &len)) && take(r, len, NULL);
}

/* supported_versions: a list in a ClientHello, one version in a
 * ServerHello. The highest real version, or 0. */
static uint16_t versions_ext(struct rd e, bool hello)
{
	unsigned len, v, best = 0;

	if (!hello)
		return u16(&e, &v) ? (uint16_t)v : 0;
	if (!u8(&e, &len) || len > e.n)
		return 0;
	e.n = len;
	while (u16(&e, &v))
		if (!grease((uint16_t)v) && v > best)
			best = v;
	return (uint16_t)best;
}

/* The highest version a ClientHello (hello) or ServerHello offers. */
static uint16_t hello_version(const uint8_t *p, size_t n, bool client)
{
	struct rd r = { p, n }, ext;
	unsigned legacy, type, len;
	uint16_t best;

	if (!u16(&r, &legacy) || !take(&r, 32, NULL) || !skip_vec(&r, 1))
		return 0;
	if (client ? !skip_vec(&r, 2) || !skip_vec(&r, 1) : !take(&r, 3, NULL))
		return (uint16_t)legacy;
	best = (uint16_t)legacy;
	if (!u16(&r, &len) || len > r.n)
		return best;
	r.n = len;
	while (u16(&r, &type) && u16(&r, &len) && take(&r, len, &ext.p)) {
		ext.n = len;
		if (type == EXT_SUPPORTED_VERSIONS) {
			uint16_t v = versions_ext(ext, client);
			if (v != 0)
				best = v;
		}
	}
	return best;
}

static void msg_cb(int write_p, int version, int content_type, const void *buf,
    size_t len, SSL *ssl, void *arg)
{
	struct endpoint *e = arg;
	const uint8_t *p = buf;

	(void)version;
	(void)ssl;
	if (write_p || content_type != SSL3_RT_HANDSHAKE || len < 4 || e->peer_version)
		return;
	if (p[0] == SSL3_MT_CLIENT_HELLO || p[0] == SSL3_MT_SERVER_HELLO)
		e->peer_version = hello_version(p + 4, len - 4, p[0] == SSL3_MT_CLIENT_HELLO);
}

void hs_watch(struct endpoint *e)
{
	e->peer_version = 0;
	SSL_set_msg_callback(e->ssl, msg_cb);
	SSL_set_msg_callback_arg(e->ssl, e);
}

static const char *version_name(unsigned v)
{
	switch (v) {
	case TLS1_3_VERSION: return "TLSv1.3";
	case TLS1_2_VERSION: return "TLSv1.2";
	case TLS1_1_VERSION: return "TLSv1.1";
	case TLS1_VERSION: return "TLSv1.0";
	case SSL3_VERSION: return "SSLv3";
	default: return "an unknown version";
	}
}

/* A chain came in and the library's check said no. */
static enum reason cert_reason(long v, bool upstream)
{
	if (!upstream)
		return R_CL_CERT;
	switch (v) {
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return R_UP_CERT_HOST;
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return R_UP_CERT_EXPIRED;
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
	case X509_V_ERR_CERT_UNTRUSTED:
		return R_UP_CERT_UNTRUSTED;
	default:
		return R_UP_CERT_INVALID;
	}
}

static int version_fail(struct endpoint *e, bool upstream, int min_version, struct fail *f)
{
	char words[120];

	if (e->peer_version == 0 || e->peer_version >= (unsigned)min_version) {
		/* The peer said no without naming its own version (an alert). */
		snprintf(words, sizeof(words), "%s no TLS version the policy allows; minimum is %s",
		    upstream ? "upstream offers" : "client offered", version_name((unsigned)min_version));
		return fail_set(f, upstream ? R_UP_TLS_VERSION : R_CL_TLS_VERSION, words);
	}
	snprintf(words, sizeof(words), "%s at most %s; minimum is %s",
	    upstream ? "upstream offers" : "client offered",
	    version_name(e->peer_version), version_name((unsigned)min_version));
	return fail_set(f, upstream ? R_UP_TLS_VERSION : R_CL_TLS_VERSION, words);
}

static int classify(struct endpoint *e, bool upstream, int min_version, struct fail *f)
{
	unsigned long err = ERR_peek_last_error();
	long v = SSL_get_verify_result(e->ssl);
	const char *lib;

	/* The verification result means something only if a chain came in. */
	if (v != X509_V_OK && SSL_get0_peer_certificates(e->ssl) != NULL)
		return fail_set(f, cert_reason(v, upstream), X509_verify_cert_error_string(v));
	if (err != 0 && ERR_GET_LIB(err) == ERR_LIB_SSL) {
		switch (ERR_GET_REASON(err)) {
		case SSL_R_UNSUPPORTED_PROTOCOL:
		case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
			return version_fail(e, upstream, min_version, f);
		case SSL_R_NO_SHARED_CIPHER:
		case SSL_R_WRONG_CIPHER_RETURNED:
			return fail_set(f, upstream ? R_UP_TLS_CIPHER : R_CL_TLS_CIPHER, NULL);
		case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
			if (!upstream)
				return fail_set(f, R_CL_CERT, "no client certificate");
			break;
		default:
			break;
		}
	}
	lib = err != 0 ? ERR_reason_error_string(err) : NULL;
	if (lib == NULL)
		lib = e->err != 0 ? strerror(e->err) : "connection closed";
	return fail_set(f, upstream ? R_UP_TLS_FAILED : R_CL_TLS_FAILED, lib);
}

int hs_step(struct endpoint *e, bool upstream, int min_version, struct fail *f)
{
	int r;

	if (e->wr_wait)
		return 0;
	r = ep_handshake(e);
	if (r == EP_AGAIN)
		return 0;
	if (r == EP_ERROR) {
		r = classify(e, upstream, min_version, f);
		ERR_clear_error();
		return r;
	}
	/* The callback sees every record: not wanted once the hellos are in. */
	SSL_set_msg_callback(e->ssl, NULL);
	e->rd_wait = e->wr_wait = 0;
	return 1;
}
