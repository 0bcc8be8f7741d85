/* tls: the TLS contexts of a service and what a session asks of them (tls.h). */
#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "tls_int.h"
#include "proxy.h"
#include "tls_policy.h"
#include "verify.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/digest.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

/* The defaults when none are configured (tls_policy.h). */
static const char default_ciphers[] = TLS_DEFAULT_CIPHERS;
static const char curves[] = TLS_CURVES;

static SSL_CTX *ctx_common(const struct where *w, int min_version,
    const char *ciphers, const char *ciphers_key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());

	if (ctx == NULL) {
		tls_key_fail(w, ciphers_key, 0, NULL, "cannot create a TLS context");
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)min_version) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set1_curves_list(ctx, curves)) {
		tls_key_fail(w, ciphers_key, 0, NULL, "cannot set TLS versions or curves");
		goto err;
	}
	if (!SSL_CTX_set_strict_cipher_list(ctx, ciphers ? ciphers : default_ciphers)) {
		tls_key_fail(w, ciphers_key, 0, ciphers, "bad cipher list");
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

/* The session ID context a resumed session must have been made under:
 * the service's name, the certificate it was made with (the one SNI
 * picked, by its digest: RFC 6066 3 forbids resuming under another name)
 * and the client CAs, so that a session (or a ticket, whose keys all
 * services share and reloads keep) made where no client certificate was
 * asked, or under other CAs, never resumes where one is required:
 * BoringSSL does not ask for a certificate again on resumption. The same
 * configuration gives the same context on every worker, load and
 * machine, so tickets still resume there. */
static int listen_sid_ctx(SSL_CTX *ctx, const struct service *svc)
{
	static const char tag[] = "mailshim listen";
	unsigned char sid[SHA256_DIGEST_LENGTH], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen;
	SHA256_CTX h;
	X509 *leaf = SSL_CTX_get0_certificate(ctx);
	size_t i;

	SHA256_Init(&h);
	SHA256_Update(&h, tag, sizeof(tag));
	SHA256_Update(&h, svc->name, strlen(svc->name) + 1);
	if (leaf == NULL || !X509_digest(leaf, EVP_sha256(), md, &mdlen))
		return -1;
	SHA256_Update(&h, md, mdlen);
	if (svc->listen_client_ca != NULL) {
		STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));

		for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
			X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));

			if (x == NULL)
				continue;
			if (!X509_digest(x, EVP_sha256(), md, &mdlen))
				return -1;
			SHA256_Update(&h, md, mdlen);
		}
	}
	SHA256_Final(sid, &h);
	return SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid)) == 1 ? 0 : -1;
}

static SSL_CTX *listen_ctx(const struct where *w, struct svc_tls *t, size_t i)
{
	const struct service *svc = w->svc;
	const struct certkey *ck = &svc->certs[i];
	SSL_CTX *ctx = ctx_common(w, svc->listen_min_version, svc->listen_ciphers,
	    "listen_ciphers");

	if (ctx == NULL)
		return NULL;
	if (tls_use_pair(w, ctx, "listen_cert", "listen_key", i, ck->cert, ck->key) < 0)
		goto err;
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	tls_tickets_use(ctx, t->tickets);
	if (svc->listen_client_ca != NULL) {
		if (tls_use_ca(w, ctx, "listen_client_ca", svc->listen_client_ca, 1) < 0)
			goto err;
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	}
	if (listen_sid_ctx(ctx, svc) < 0) {
		tls_key_fail(w, "listen_client_ca", 0, svc->listen_client_ca,
		    "cannot make the session ID context");
		goto err;
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

static SSL_CTX *upstream_ctx(const struct where *w, struct svc_tls *t)
{
	const struct service *svc = w->svc;
	SSL_CTX *ctx = ctx_common(w, svc->upstream_min_version, svc->upstream_ciphers,
	    "upstream_ciphers");
	if (ctx == NULL)
		return NULL;
	if (svc->upstream_cert != NULL &&
	    tls_use_pair(w, ctx, "upstream_cert", "upstream_key", 0, svc->upstream_cert,
	    svc->upstream_key) < 0)
		goto err;
	if (svc->upstream_verify != VERIFY_ENCRYPT &&
	    tls_use_ca(w, ctx, "upstream_ca", svc->upstream_ca, 0) < 0)
		goto err;
	/* Chain, names (RFC 9525: subjectAltName only), pins and DANE are
	 * all decided in verify.c's one callback. */
	verify_ctx_init(ctx);
	SSL_CTX_set_app_data(ctx, t);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
	return ctx;
err:
	SSL_CTX_free(ctx);
	return NULL;
}
int tls_init(struct svc_tls *t, const struct config *cfg,
    const struct service *svc, const struct tickets *tickets, FILE *err)
{
	const struct where w = { cfg, svc, err };
	size_t i;
	int bad = 0;

	memset(t, 0, sizeof(*t));
	t->svc = svc;
	t->tickets = tickets;
	/* Every context is tried, so one check reports every bad file. */
	if (svc->listen_tls != MODE_PLAIN) {
		t->listen = calloc(svc->ncerts, sizeof(*t->listen));
		if (t->listen == NULL)
			return tls_key_fail(&w, "listen_cert", 0, NULL, "out of memory");
		t->nlisten = svc->ncerts;
		for (i = 0; i < svc->ncerts; i++)
			bad |= (t->listen[i] = listen_ctx(&w, t, i)) == NULL;
	}
	if (svc->upstream_tls != MODE_PLAIN)
		bad |= (t->upstream = upstream_ctx(&w, t)) == NULL;
	if (bad) {
		tls_free(t);
		return -1;
	}
	return 0;
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

SSL *tls_new_listen(const struct svc_tls *t)
{
	SSL *ssl = SSL_new(t->listen[0]);

	if (ssl == NULL)
		return NULL;
	/* What only the handshake needs (certificates, cipher lists, the
	 * callbacks' settings) is freed once it is done: an idle session
	 * keeps just the keys and what the log and PROXY header report. */
	SSL_set_shed_handshake_config(ssl, 1);
	SSL_set_accept_state(ssl);
	return ssl;
}

SSL *tls_new_upstream(struct svc_tls *t, const char *sni)
{
	const struct service *svc = t->svc;
	SSL *ssl = SSL_new(t->upstream);

	if (ssl == NULL)
		return NULL;
	if (sni == NULL)
		sni = svc->upstream_name;
	if (!is_ip(sni) && !SSL_set_tlsext_host_name(ssl, sni)) {
		SSL_free(ssl);
		return NULL;
	}
	/* An outbound relay meets many hosts: no session goes to another. */
	if (t->session != NULL && !svc->upstream_mx)
		SSL_set_session(ssl, t->session);
	SSL_set_connect_state(ssl);
	return ssl;
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

void tls_proxy_info(const SSL *ssl, struct proxy_tls *out)
{
	const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
	/* A resumed session keeps the certificate of the handshake that made
	 * it: the session had one, this connection did not send it. */
	bool cert = SSL_get0_peer_certificates(ssl) != NULL;

	out->version = SSL_get_version(ssl);
	out->cipher = c != NULL ? SSL_CIPHER_get_name(c) : NULL;
	out->sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	out->cert_sess = cert;
	out->cert_conn = cert && !SSL_session_reused(ssl);
	out->verified = cert && SSL_get_verify_result(ssl) == X509_V_OK;
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

const char *tls_peer_subject(const SSL *ssl, char *buf, size_t len)
{
	X509 *x;
	BIO *b;
	int n;

	if (SSL_get_verify_result(ssl) != X509_V_OK ||
	    (x = SSL_get_peer_certificate(ssl)) == NULL)
		return NULL;
	b = BIO_new(BIO_s_mem());
	n = b ? X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) : -1;
	X509_free(x);
	if (n < 0 || (n = BIO_read(b, buf, (int)len - 1)) < 0)
		n = 0;
	buf[n] = '\0';
	BIO_free(b);
	return n > 0 ? buf : NULL;
}

const char *tls_library(void)
{
#define STR2(x) #x
#define STR(x) STR2(x)
	return "BoringSSL (API version " STR(BORINGSSL_API_VERSION) ")";
}
