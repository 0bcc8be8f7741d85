#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "verify.h"
#include "reason.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pool.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/*
 * verify: see verify.h. Order of the decision, after RFC 7672 section 2.2:
 *  1. A failed TLSA lookup refuses; DANE never falls back on bad DNS.
 *  2. Usable TLSA records decide alone: DANE-EE matching the leaf, or
 *     DANE-TA matching a certificate of the chain from which the leaf
 *     verifies for the TLSA base name (or the configured name). The CA
 *     bundle plays no part.
 *  3. Records, none usable: TLS without authentication for `dane`,
 *     refusal for `dane-only`.
 *  4. No records (or an insecure zone): `dane-only` refuses, `dane`
 *     behaves as `verify`.
 *  5. verify: chain to upstream_ca, name from upstream_name.
 *  6. Pins, where set, must match a key of the chain on top of whatever
 *     decided before (2, 3, 5, or nothing for `encrypt`): a key setting
 *     never silently does nothing.
 */

#define CHAIN_MAX DANE_DEPTH_MAX

static int ex_index = -1;

static const char *const auth_names[] = {
	[AUTH_NONE] = "none", [AUTH_ENCRYPT] = "encrypt", [AUTH_CA] = "ca",
	[AUTH_PIN] = "pin", [AUTH_DANE_EE] = "dane-ee", [AUTH_DANE_TA] = "dane-ta",
};

static const char *const fail_codes[] = {
	[VF_NOT_TRUSTED] = "certificate-not-trusted",
	[VF_HOST_MISMATCH] = "certificate-host-mismatch",
	[VF_EXPIRED] = "certificate-expired",
	[VF_NO_PIN] = "certificate-not-trusted",
	[VF_TLSA_INVALID] = "tlsa-invalid",
	[VF_DANE_REQUIRED] = "dane-required",
	[VF_DNSSEC_INVALID] = "dnssec-invalid",
	[VF_VALIDATION] = "validation-failure",
};

const char *verify_auth_name(enum verify_auth a)
{
	return (unsigned)a <= AUTH_DANE_TA ? auth_names[a] : "none";
}

int verify_reason_row(const struct verify_session *v)
{
	static const enum reason rows[] = {
		[VF_OK] = R_NONE,
		[VF_NOT_TRUSTED] = R_UP_CERT_UNTRUSTED, [VF_HOST_MISMATCH] = R_UP_CERT_HOST,
		[VF_EXPIRED] = R_UP_CERT_EXPIRED, [VF_NO_PIN] = R_UP_PIN,
		[VF_TLSA_INVALID] = R_UP_TLSA_INVALID, [VF_DANE_REQUIRED] = R_UP_DANE_REQUIRED,
		[VF_DNSSEC_INVALID] = R_UP_DNSSEC_INVALID, [VF_VALIDATION] = R_UP_CERT_INVALID,
		[VF_INTERNAL] = R_UP_TLS_FAILED,
	};

	return v->fail < sizeof(rows) / sizeof(rows[0]) ? rows[v->fail] : R_UP_TLS_FAILED;
}

const char *verify_fail_code(enum verify_fail f)
{
	return (unsigned)f < sizeof(fail_codes) / sizeof(fail_codes[0]) ?
	    fail_codes[f] : NULL;
}

static bool is_ip(const char *s)
{
	unsigned char a[16];

	return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

/* The peer's chain, parsed once per decision. */
struct chain {
	X509 *x[CHAIN_MAX];
	uint8_t *spki[CHAIN_MAX];
	struct dane_cert dc[CHAIN_MAX];
	size_t n;
};

static void chain_free(struct chain *c)
{
	for (size_t i = 0; i < c->n; i++) {
		X509_free(c->x[i]);
		OPENSSL_free(c->spki[i]);
	}
	c->n = 0;
}

static bool chain_load(SSL *ssl, struct chain *c)
{
	const STACK_OF(CRYPTO_BUFFER) *bufs = SSL_get0_peer_certificates(ssl);
	size_t n = bufs ? sk_CRYPTO_BUFFER_num(bufs) : 0;

	c->n = 0;
	if (n > CHAIN_MAX)
		n = CHAIN_MAX;
	for (size_t i = 0; i < n; i++) {
		CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(bufs, i);
		X509 *x = X509_parse_from_buffer(b);
		uint8_t *spki = NULL;
		int len;

		if (x == NULL)
			goto err;
		len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &spki);
		c->x[c->n] = x;
		c->spki[c->n] = len > 0 ? spki : NULL;
		c->dc[c->n] = (struct dane_cert){ CRYPTO_BUFFER_data(b),
		    CRYPTO_BUFFER_len(b), len > 0 ? spki : NULL,
		    len > 0 ? (size_t)len : 0 };
		c->n++;
	}
	return c->n > 0;
err:
	chain_free(c);
	return false;
}

static void digest(enum dane_mtype m, const uint8_t *p, size_t n, uint8_t *out)
{
	if (m == DANE_SHA512)
		SHA512(p, n, out);
	else
		SHA256(p, n, out);
}

static enum verify_fail fail_of(int err)
{
	switch (err) {
	case X509_V_ERR_CERT_HAS_EXPIRED:
	case X509_V_ERR_CERT_NOT_YET_VALID:
		return VF_EXPIRED;
	case X509_V_ERR_HOSTNAME_MISMATCH:
	case X509_V_ERR_IP_ADDRESS_MISMATCH:
		return VF_HOST_MISMATCH;
	default:
		return VF_NOT_TRUSTED;
	}
}

/*
 * Verify the chain from the leaf to a trust anchor of store for one or
 * two names. RFC 9525 section 6.3: the subject CN is never a name.
 */
static int chain_verify(struct chain *c, X509_STORE *store, const char *n1,
    const char *n2, unsigned long flags, int *err)
{
	X509_STORE_CTX *sc = X509_STORE_CTX_new();
	STACK_OF(X509) *rest = sk_X509_new_null();
	X509_VERIFY_PARAM *p;
	int ok = 0;

	*err = X509_V_ERR_UNSPECIFIED;
	if (sc == NULL || rest == NULL)
		goto out;
	for (size_t i = 1; i < c->n; i++)
		if (!sk_X509_push(rest, c->x[i]))
			goto out;
	if (!X509_STORE_CTX_init(sc, store, c->x[0], rest) ||
	    !X509_STORE_CTX_set_default(sc, "ssl_server"))
		goto out;
	p = X509_STORE_CTX_get0_param(sc);
	X509_VERIFY_PARAM_set_flags(p, flags);
	X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS |
	    X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
	if (is_ip(n1)) {
		if (!X509_VERIFY_PARAM_set1_ip_asc(p, n1))
			goto out;
	} else if (!X509_VERIFY_PARAM_set1_host(p, n1, strlen(n1)) ||
	    (n2 && strcasecmp(n1, n2) != 0 &&
	    !X509_VERIFY_PARAM_add1_host(p, n2, strlen(n2)))) {
		goto out;
	}
	ok = X509_verify_cert(sc) == 1;
	*err = ok ? X509_V_OK : X509_STORE_CTX_get_error(sc);
out:
	sk_X509_free(rest);
	X509_STORE_CTX_free(sc);
	ERR_clear_error();
	return ok;
}

/* Words are kept only by sessions that have some: an idle session
 * carries no buffer for them. Without memory the reason row still says
 * what happened. */
#define DETAIL_MAX 200

static void set_detail(struct verify_session *v, const char *fmt, const char *arg)
{
	if (v->detail == NULL && (v->detail = malloc(DETAIL_MAX)) == NULL)
		return;
	snprintf(v->detail, DETAIL_MAX, fmt, arg ? arg : "");
}

static enum verify_fail say(struct verify_session *v, enum verify_fail f,
    const char *fmt, const char *arg)
{
	v->fail = (uint8_t)f;
	set_detail(v, fmt, arg);
	return f;
}

/* DANE-TA: a matched certificate is the only trust anchor; the chain
 * from the leaf up to it must verify, dates included, for the name. */
static bool dane_ta(struct verify_session *v, struct chain *c, uint32_t depths)
{
	const char *orig = v->name ? v->name : v->svc->upstream_name;
	const char *base = v->base ? v->base : orig;

	for (size_t d = 1; d < c->n; d++) {
		X509_STORE *st;
		int err, ok;

		if (!(depths & (1u << d)))
			continue;
		if ((st = X509_STORE_new()) == NULL || !X509_STORE_add_cert(st, c->x[d])) {
			X509_STORE_free(st);
			say(v, VF_VALIDATION, "DANE-TA: %s", "cannot make a trust store");
			return false;
		}
		ok = chain_verify(c, st, base, orig, X509_V_FLAG_PARTIAL_CHAIN, &err);
		X509_STORE_free(st);
		if (ok)
			return true;
		say(v, fail_of(err) == VF_NOT_TRUSTED ? VF_TLSA_INVALID : fail_of(err),
		    "DANE-TA: %s", X509_verify_cert_error_string(err));
	}
	return false;
}

static enum verify_fail decide_dane(struct verify_session *v, struct chain *c,
    bool *decided)
{
	struct dane_result r;

	*decided = true;
	/* The DNS words were kept in detail by verify_set_tlsa_state(). */
	if (v->tlsa == TLSA_FAILED) {
		v->fail = VF_DNSSEC_INVALID;
		return VF_DNSSEC_INVALID;
	}
	if (v->tlsa != TLSA_FOUND) {
		*decided = v->svc->upstream_verify == VERIFY_DANE_ONLY;
		if (!*decided)
			return VF_OK;
		v->fail = VF_DANE_REQUIRED;
		return VF_DANE_REQUIRED;
	}
	dane_check(v->recs, v->nrecs, c->dc, c->n, digest, &r);
	if (r.usable == 0) {
		if (v->svc->upstream_verify == VERIFY_DANE_ONLY)
			return say(v, VF_TLSA_INVALID, "only unusable TLSA records "
			    "(dane-only)%s", "");
		v->auth = AUTH_ENCRYPT;
		return VF_OK;
	}
	if (r.ee) {
		v->auth = AUTH_DANE_EE;
		return VF_OK;
	}
	if (r.ta && dane_ta(v, c, r.ta)) {
		v->auth = AUTH_DANE_TA;
		return VF_OK;
	}
	/* Whatever went wrong, nothing matched: never VF_OK from here. */
	if (v->fail == VF_OK)
		say(v, VF_TLSA_INVALID, "none of %s", r.usable == 1 ? "1 record" :
		    r.usable == 2 ? "2 records" : "the records");
	return (enum verify_fail)v->fail;
}

static bool pin_match(const struct verify_session *v, const struct chain *c)
{
	const struct service *svc = v->svc;
	uint8_t md[SHA256_DIGEST_LENGTH];

	/* A pin may name the server's key or any key of its chain. */
	for (size_t i = 0; i < c->n; i++) {
		if (c->dc[i].spki == NULL)
			continue;
		SHA256(c->dc[i].spki, c->dc[i].spki_len, md);
		for (size_t j = 0; j < svc->npins; j++)
			if (memcmp(md, svc->pins[j], sizeof(md)) == 0)
				return true;
	}
	return false;
}

static enum verify_fail decide(SSL *ssl, struct verify_session *v,
    struct chain *c)
{
	const struct service *svc = v->svc;
	bool decided = false;
	enum verify_fail f;
	int err;

	v->auth = AUTH_NONE;
	v->fail = VF_OK;
	if (!chain_load(ssl, c))
		return say(v, VF_VALIDATION, "upstream sent no usable certificate%s", "");
	if (svc->upstream_verify == VERIFY_DANE || svc->upstream_verify == VERIFY_DANE_ONLY) {
		f = decide_dane(v, c, &decided);
		if (f != VF_OK)
			return f;
	}
	if (decided) {
		/* DANE decided; pins, when set, must still match below. */
	} else if (svc->upstream_verify == VERIFY_ENCRYPT) {
		v->auth = AUTH_ENCRYPT;
	} else {
		X509_STORE *st = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl));

		if (!chain_verify(c, st, v->name ? v->name : svc->upstream_name, NULL, 0,
		    &err))
			return say(v, fail_of(err), "certificate verification "
			    "failed: %s", X509_verify_cert_error_string(err));
		v->auth = AUTH_CA;
	}
	if (svc->npins) {
		if (!pin_match(v, c))
			return say(v, VF_NO_PIN, "upstream certificate matches no "
			    "upstream_pin%s", "");
		if (v->auth != AUTH_DANE_EE && v->auth != AUTH_DANE_TA)
			v->auth = AUTH_PIN;
	}
	return VF_OK;
}

static uint8_t alert_of(enum verify_fail f)
{
	switch (f) {
	case VF_EXPIRED:
		return SSL_AD_CERTIFICATE_EXPIRED;
	case VF_NOT_TRUSTED:
		return SSL_AD_UNKNOWN_CA;
	case VF_INTERNAL:
		return SSL_AD_INTERNAL_ERROR;
	default:
		return SSL_AD_BAD_CERTIFICATE;
	}
}

static enum ssl_verify_result_t verify_cb(SSL *ssl, uint8_t *alert)
{
	struct verify_session *v = SSL_get_ex_data(ssl, ex_index);
	struct chain c = { .n = 0 };
	enum verify_fail f;

	if (v == NULL) {
		*alert = SSL_AD_INTERNAL_ERROR;
		return ssl_verify_invalid;
	}
	if (v->tlsa == TLSA_PENDING) {
		v->paused = true;
		return ssl_verify_retry;
	}
	v->paused = false;
	f = decide(ssl, v, &c);
	chain_free(&c);
	if (f == VF_OK)
		return ssl_verify_ok;
	*alert = alert_of(f);
	return ssl_verify_invalid;
}

void verify_ctx_init(SSL_CTX *ctx)
{
	if (ex_index < 0)
		ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, verify_cb);
	/* A resumed session is authenticated again, as if it were new: the
	 * TLSA records or the CA bundle may have changed since. */
	SSL_CTX_set_reverify_on_resume(ctx, 1);
}

void verify_session_init(struct verify_session *v, const struct service *svc)
{
	memset(v, 0, sizeof(*v));
	v->svc = svc;
	v->tlsa = svc->upstream_verify == VERIFY_DANE ||
	    svc->upstream_verify == VERIFY_DANE_ONLY ? TLSA_PENDING : TLSA_NOT_WANTED;
}

void verify_session_free(struct verify_session *v)
{
	free(v->rdata);
	free(v->recs);
	free(v->base);
	free(v->detail);
	v->rdata = NULL;
	v->recs = NULL;
	v->base = NULL;
	v->detail = NULL;
	v->nrecs = 0;
}

int verify_attach(SSL *ssl, struct verify_session *v)
{
	/* A new handshake (another address of an MX host shares the TLSA
	 * records): the last one's verdict is not this one's. */
	v->auth = AUTH_NONE;
	v->fail = VF_OK;
	v->paused = false;
	/* Made once, before any worker is forked (the first context). */
	if (ex_index < 0)
		ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	return ex_index >= 0 && SSL_set_ex_data(ssl, ex_index, v) ? 0 : -1;
}

int verify_set_tlsa(struct verify_session *v, const uint8_t *const *rdata,
    const size_t *len, size_t n, const char *base)
{
	size_t total = 0, off = 0;

	verify_session_free(v);
	for (size_t i = 0; i < n; i++)
		total += len[i];
	v->rdata = malloc(total ? total : 1);
	v->recs = calloc(n ? n : 1, sizeof(*v->recs));
	v->base = base ? strdup(base) : NULL;
	if (v->rdata == NULL || v->recs == NULL || (base && v->base == NULL)) {
		verify_session_free(v);
		verify_set_tlsa_state(v, TLSA_FAILED, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		memcpy(v->rdata + off, rdata[i], len[i]);
		/* A record too short to parse is unusable, like any other. */
		if (dane_parse(v->rdata + off, len[i], &v->recs[v->nrecs]))
			v->nrecs++;
		off += len[i];
	}
	v->tlsa = TLSA_FOUND;
	return 0;
}

void verify_set_tlsa_state(struct verify_session *v, enum verify_tlsa state,
    const char *detail)
{
	v->tlsa = (uint8_t)state;
	if (detail)
		set_detail(v, "%s", detail);
}
