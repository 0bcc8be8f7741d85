#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/*
 * TLS 1.2 suites when none are configured: forward secret AEADs only, the
 * same policy on both hops. TLS 1.3 suites are all AEAD and fixed.
 */
static const char default_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
static const char curves[] = "X25519:P-256:P-384";

static int fail(char *err, size_t len, const char *what, const char *arg)
{
	unsigned long e = ERR_get_error();
	char lib[256] = "";

	if (e != 0)
		ERR_error_string_n(e, lib, sizeof(lib));
	snprintf(err, len, "%s%s%s%s%s", what, arg ? " " : "", arg ? arg : "",
	    e ? ": " : "", lib);
	ERR_clear_error();
	return -1;
}

static SSL_CTX *ctx_common(int min_version, const char *ciphers, char *err,
    size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());

	if (ctx == NULL) {
		fail(err, errlen, "cannot create a TLS context", NULL);
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)min_version) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set1_curves_list(ctx, curves)) {
		fail(err, errlen, "cannot set TLS versions or curves", NULL);
		goto err;
	}
	if (!SSL_CTX_set_strict_cipher_list(ctx, ciphers ? ciphers : default_ciphers)) {
		fail(err, errlen, "bad cipher list", ciphers);
		goto err;
	}
	/* Reads and writes may restart with another buffer: our relay moves
	 * unsent bytes inside its buffer, so the pointer can change. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	    SSL_MODE_ENABLE_PARTIAL_WRITE);
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

/* Pick the certificate whose names match the client's SNI. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
	const struct svc_tls *t = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	size_t i;

	(void)alert;
	if (name == NULL)
		return SSL_TLSEXT_ERR_OK;
	for (i = 1; i < t->nlisten; i++) {
		X509 *x = SSL_CTX_get0_certificate(t->listen[i]);
		if (x != NULL && X509_check_host(x, name, strlen(name),
		    X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL) == 1) {
			SSL_set_SSL_CTX(ssl, t->listen[i]);
			break;
		}
	}
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *listen_ctx(struct svc_tls *t, const struct service *svc,
    const struct certkey *ck, char *err, size_t errlen)
{
	static const unsigned char sid[] = "mailshim";
	SSL_CTX *ctx = ctx_common(svc->listen_min_version, svc->listen_ciphers,
	    err, errlen);

	if (ctx == NULL)
		return NULL;
	if (SSL_CTX_use_certificate_chain_file(ctx, ck->cert) != 1) {
		fail(err, errlen, "cannot load listen_cert", ck->cert);
		goto err;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, ck->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		fail(err, errlen, "cannot load listen_key (or it does not match the certificate)", ck->key);
		goto err;
	}
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
	if (svc->listen_client_ca != NULL) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(svc->listen_client_ca);
		if (names == NULL ||
		    SSL_CTX_load_verify_locations(ctx, svc->listen_client_ca, NULL) != 1) {
			fail(err, errlen, "cannot load listen_client_ca", svc->listen_client_ca);
			goto err;
		}
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
	SSL_CTX_set_tlsext_servername_arg(ctx, t);
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

static int is_ip(const char *s)
{
	unsigned char a[16];

	return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* Keep the newest session so the next connection can resume it. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct svc_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

	if (t == NULL)
		return 0;
	if (t->session != NULL)
		SSL_SESSION_free(t->session);
	t->session = sess;
	return 1;
}

static SSL_CTX *upstream_ctx(struct svc_tls *t, const struct service *svc,
    char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_common(svc->upstream_min_version, svc->upstream_ciphers,
	    err, errlen);
	X509_VERIFY_PARAM *param;

	if (ctx == NULL)
		return NULL;
	if (svc->upstream_cert != NULL &&
	    (SSL_CTX_use_certificate_chain_file(ctx, svc->upstream_cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, svc->upstream_key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)) {
		fail(err, errlen, "cannot load upstream_cert/upstream_key", svc->upstream_cert);
		goto err;
	}
	if (svc->upstream_verify != VERIFY_ENCRYPT) {
		if (SSL_CTX_load_verify_locations(ctx, svc->upstream_ca, NULL) != 1) {
			fail(err, errlen, "cannot load upstream_ca", svc->upstream_ca);
			goto err;
		}
		param = SSL_CTX_get0_param(ctx);
		/* RFC 9525 6.3: names come from subjectAltName only; a
		 * certificate whose only name is its subject CN matches none. */
		X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
		    X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
		if ((is_ip(svc->upstream_name) ?
		    X509_VERIFY_PARAM_set1_ip_asc(param, svc->upstream_name) :
		    X509_VERIFY_PARAM_set1_host(param, svc->upstream_name, strlen(svc->upstream_name))) != 1) {
			fail(err, errlen, "bad upstream_name", svc->upstream_name);
			goto err;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	SSL_CTX_set_app_data(ctx, t);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}

int tls_init(struct svc_tls *t, const struct service *svc, char *err,
    size_t errlen)
{
	size_t i;

	memset(t, 0, sizeof(*t));
	t->svc = svc;
	if (svc->listen_tls != MODE_PLAIN) {
		t->listen = calloc(svc->ncerts, sizeof(*t->listen));
		if (t->listen == NULL)
			return fail(err, errlen, "out of memory", NULL);
		for (i = 0; i < svc->ncerts; i++) {
			t->listen[i] = listen_ctx(t, svc, &svc->certs[i], err, errlen);
			if (t->listen[i] == NULL)
				goto err;
			t->nlisten++;
		}
	}
	if (svc->upstream_tls != MODE_PLAIN) {
		t->upstream = upstream_ctx(t, svc, err, errlen);
		if (t->upstream == NULL)
			goto err;
	}
	return 0;
err:
	tls_free(t);
	return -1;
}

void tls_free(struct svc_tls *t)
{
	size_t i;

	for (i = 0; i < t->nlisten; i++)
		SSL_CTX_free(t->listen[i]);
	free(t->listen);
	SSL_CTX_free(t->upstream);
	if (t->session != NULL)
		SSL_SESSION_free(t->session);
	memset(t, 0, sizeof(*t));
}

SSL *tls_new_listen(const struct svc_tls *t, int fd)
{
	SSL *ssl = SSL_new(t->listen[0]);

	if (ssl == NULL)
		return NULL;
	if (!SSL_set_fd(ssl, fd)) {
		SSL_free(ssl);
		return NULL;
	}
	SSL_set_accept_state(ssl);
	return ssl;
}

SSL *tls_new_upstream(struct svc_tls *t, int fd)
{
	const struct service *svc = t->svc;
	SSL *ssl = SSL_new(t->upstream);

	if (ssl == NULL)
		return NULL;
	if (!SSL_set_fd(ssl, fd) ||
	    (!is_ip(svc->upstream_name) &&
	    !SSL_set_tlsext_host_name(ssl, svc->upstream_name))) {
		SSL_free(ssl);
		return NULL;
	}
	if (t->session != NULL)
		SSL_set_session(ssl, t->session);
	SSL_set_connect_state(ssl);
	return ssl;
}

static int pin_match(X509 *x, const struct service *svc)
{
	uint8_t *der = NULL, md[SHA256_DIGEST_LENGTH];
	int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
	size_t i;

	if (len <= 0)
		return 0;
	SHA256(der, (size_t)len, md);
	OPENSSL_free(der);
	for (i = 0; i < svc->npins; i++)
		if (memcmp(md, svc->pins[i], sizeof(md)) == 0)
			return 1;
	return 0;
}

const char *tls_check_upstream(SSL *ssl, const struct service *svc,
    const char **auth)
{
	STACK_OF(X509) *chain;
	size_t i;

	*auth = svc->upstream_verify == VERIFY_ENCRYPT ? "encrypt" : "ca";
	if (svc->npins == 0)
		return NULL;
	/* A pin may name the server's key or any key of its chain. */
	chain = SSL_get_peer_cert_chain(ssl);
	for (i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
		if (pin_match(sk_X509_value(chain, i), svc)) {
			*auth = "pin";
			return NULL;
		}
	}
	return "upstream certificate matches no upstream_pin";
}

const char *tls_handshake_error(SSL *ssl, char *buf, size_t len)
{
	long v = SSL_get_verify_result(ssl);
	unsigned long e;

	/* The verification result means something only if a chain came in. */
	if (v != X509_V_OK && SSL_get0_peer_certificates(ssl) != NULL) {
		snprintf(buf, len, "certificate verification failed: %s",
		    X509_verify_cert_error_string(v));
	} else if ((e = ERR_peek_last_error()) != 0) {
		const char *r = ERR_reason_error_string(e);
		snprintf(buf, len, "TLS handshake failed: %s", r ? r : "unknown error");
	} else {
		snprintf(buf, len, "TLS handshake failed: connection closed");
	}
	ERR_clear_error();
	return buf;
}

const char *tls_version(const SSL *ssl)
{
	return SSL_get_version(ssl);
}

const char *tls_cipher(const SSL *ssl)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);

	return c ? SSL_CIPHER_standard_name(c) : "none";
}

const char *tls_library(void)
{
#define STR2(x) #x
#define STR(x) STR2(x)
	return "BoringSSL (API version " STR(BORINGSSL_API_VERSION) ")";
}
