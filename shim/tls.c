#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "tls.h"
#include "proxy.h"
#include "tickets.h"
#include "tls_policy.h"
#include "verify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* The defaults when none are configured (tls_policy.h). */
static const char default_ciphers[] = TLS_DEFAULT_CIPHERS;
static const char curves[] = TLS_CURVES;

/*
 * Where a key was set, and what went wrong with it: every message about a
 * key names the file and line of the key itself ("FILE:LINE: ...").
 */
struct where {
	const struct config *cfg;
	const struct service *svc;
	FILE *err;
};

static int key_fail(const struct where *w, const char *key, size_t index,
    const char *path, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int key_fail(const struct where *w, const char *key, size_t index,
    const char *path, const char *fmt, ...)
{
	const char *file;
	int line;
	unsigned long e = ERR_peek_last_error();
	va_list ap;

	config_key_where(w->cfg, w->svc, key, index, &file, &line);
	fprintf(w->err, "%s:%d: %s%s%s: ", file, line, key, path ? " " : "",
	    path ? path : "");
	va_start(ap, fmt);
	vfprintf(w->err, fmt, ap);
	va_end(ap);
	if (e != 0) {
		const char *r = ERR_reason_error_string(e);
		fprintf(w->err, " (%s)", r ? r : "TLS library error");
	}
	fputc('\n', w->err);
	ERR_clear_error();
	return -1;
}

#define FILE_MAX (16u << 20)   /* a CA bundle is a few hundred KiB */

/*
 * The whole of a file a key names, in a memory BIO. Opened non-blocking
 * and checked with fstat before any read: a FIFO or a device under a
 * certificate's name must give an error, never a check or a reload that
 * hangs. NULL after key_fail().
 */
static BIO *key_file(const struct where *w, const char *key, size_t index,
    const char *path)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	ssize_t r;
	BIO *bio;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return key_fail(w, key, index, path, "cannot open: %s", strerror(errno)), NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return key_fail(w, key, index, path, "not a regular file"), NULL;
	}
	if (st.st_size <= 0 || (unsigned long long)st.st_size > FILE_MAX) {
		close(fd);
		return key_fail(w, key, index, path, st.st_size <= 0 ? "empty file" :
		    "larger than %u MiB", FILE_MAX >> 20), NULL;
	}
	buf = malloc((size_t)st.st_size);
	while (buf != NULL && got < (size_t)st.st_size &&
	    ((r = read(fd, buf + got, (size_t)st.st_size - got)) > 0 ||
	    (r < 0 && errno == EINTR)))
		got += r > 0 ? (size_t)r : 0;
	close(fd);
	if (buf == NULL || got == 0) {
		free(buf);
		return key_fail(w, key, index, path, buf ? "cannot read" : "out of memory"), NULL;
	}
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || BIO_write(bio, buf, (int)got) != (int)got) {
		BIO_free(bio);
		bio = NULL;
		key_fail(w, key, index, path, "out of memory");
	}
	/* Private keys and ticket keys: leave no copy behind. */
	OPENSSL_cleanse(buf, got);
	free(buf);
	return bio;
}

/* An encrypted key would need a passphrase: refuse it, never prompt. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf; (void)size; (void)rwflag; (void)u;
	return 0;
}

/* After the last PEM block: end of input is fine, anything else is not. */
static int pem_end_ok(void)
{
	unsigned long e = ERR_peek_last_error();

	if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
		ERR_clear_error();
		return 1;
	}
	return e == 0;
}

/* Every certificate of a PEM file, in order; NULL after key_fail(). */
static STACK_OF(X509) *key_certs(const struct where *w, const char *key,
    size_t index, const char *path)
{
	BIO *bio = key_file(w, key, index, path);
	STACK_OF(X509) *certs;
	X509 *x;

	if (bio == NULL)
		return NULL;
	certs = sk_X509_new_null();
	while (certs != NULL && (x = PEM_read_bio_X509_AUX(bio, NULL, no_passphrase, NULL)) != NULL) {
		if (!sk_X509_push(certs, x)) {
			X509_free(x);
			break;
		}
	}
	BIO_free(bio);
	if (certs == NULL || !pem_end_ok() || sk_X509_num(certs) == 0) {
		int none = certs != NULL && sk_X509_num(certs) == 0 && ERR_peek_last_error() == 0;
		sk_X509_pop_free(certs, X509_free);
		key_fail(w, key, index, path, none ? "no PEM certificate in it" :
		    "not a valid PEM certificate file");
		return NULL;
	}
	return certs;
}

static EVP_PKEY *key_pkey(const struct where *w, const char *key, size_t index,
    const char *path)
{
	BIO *bio = key_file(w, key, index, path);
	EVP_PKEY *pk;

	if (bio == NULL)
		return NULL;
	pk = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	if (pk == NULL && pem_end_ok())
		key_fail(w, key, index, path, "no PEM private key in it");
	else if (pk == NULL)
		key_fail(w, key, index, path, "not a usable PEM private key "
		    "(one with a passphrase cannot be used)");
	return pk;
}

/* Certificate chain and private key, and that the two belong together. */
static int use_pair(const struct where *w, SSL_CTX *ctx, const char *ckey,
    const char *kkey, size_t index, const char *cert, const char *keyfile)
{
	STACK_OF(X509) *chain = key_certs(w, ckey, index, cert);
	EVP_PKEY *pk;
	size_t i;
	int ok = 0;

	if (chain == NULL)
		return -1;
	if (SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0)) != 1) {
		key_fail(w, ckey, index, cert, "certificate refused");
		goto out;
	}
	for (i = 1; i < sk_X509_num(chain); i++) {
		if (!SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i))) {
			key_fail(w, ckey, index, cert, "cannot use the chain");
			goto out;
		}
	}
	if ((pk = key_pkey(w, kkey, index, keyfile)) == NULL)
		goto out;
	if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1)
		key_fail(w, kkey, index, keyfile, "this key does not match the certificate in %s", cert);
	else
		ok = 1;
	EVP_PKEY_free(pk);
out:
	sk_X509_pop_free(chain, X509_free);
	return ok ? 0 : -1;
}

/* Trust every certificate of a CA file (and, for clients, ask for them). */
static int use_ca(const struct where *w, SSL_CTX *ctx, const char *key,
    const char *path, int client_ca)
{
	STACK_OF(X509) *cas = key_certs(w, key, 0, path);
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	size_t i;
	int ok = 1;

	if (cas == NULL)
		return -1;
	for (i = 0; i < sk_X509_num(cas) && ok; i++) {
		X509 *x = sk_X509_value(cas, i);
		ok = X509_STORE_add_cert(store, x) == 1 &&
		    (!client_ca || SSL_CTX_add_client_CA(ctx, x) == 1);
	}
	sk_X509_pop_free(cas, X509_free);
	if (!ok)
		return key_fail(w, key, 0, path, "cannot use a certificate of it");
	return 0;
}

static SSL_CTX *ctx_common(const struct where *w, int min_version,
    const char *ciphers, const char *ciphers_key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());

	if (ctx == NULL) {
		key_fail(w, ciphers_key, 0, NULL, "cannot create a TLS context");
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, (uint16_t)min_version) ||
	    !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set1_curves_list(ctx, curves)) {
		key_fail(w, ciphers_key, 0, NULL, "cannot set TLS versions or curves");
		goto err;
	}
	if (!SSL_CTX_set_strict_cipher_list(ctx, ciphers ? ciphers : default_ciphers)) {
		key_fail(w, ciphers_key, 0, ciphers, "bad cipher list");
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

/*
 * Session ticket keys. Without tls_ticket_keys they are shared by every
 * worker and every configuration load, so a client resumes wherever the
 * kernel sends it: the supervisor makes them (tls_tickets_init) in a
 * MAP_SHARED page its workers inherit and rotates them
 * (tls_tickets_rotate); workers only read. New tickets use the current
 * key; the two before it still decrypt (a ticket they open is renewed
 * under the current one). A slot is rewritten only when it is the oldest:
 * a worker that reads it half-written fails the HMAC and does a full
 * handshake, nothing worse.
 *
 * With tls_ticket_keys the keys come from that file (tickets.c reads its
 * formats), once per load: every machine that shares the file resumes
 * the others' tickets, and the operator rotates them by replacing the
 * file and reloading. The listen contexts of the load point at them.
 */
#define TICKET_SLOTS 3

struct shared_key {
	uint8_t name[SSL_TICKET_KEY_NAME_LEN];
	uint8_t aes[32];
	uint8_t hmac[32];
};

struct shared_keys {
	atomic_uint cur;
	struct shared_key k[TICKET_SLOTS];
};

static struct shared_keys *shared;

_Static_assert(SSL_TICKET_KEY_NAME_LEN == TICKET_NAME_LEN, "ticket key names are 16 bytes");

int tls_tickets_init(void)
{
	void *p = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned i;

	if (p == MAP_FAILED)
		return -1;
	shared = p;
	atomic_init(&shared->cur, 0);
	for (i = 0; i < TICKET_SLOTS; i++)
		RAND_bytes((uint8_t *)&shared->k[i], sizeof(shared->k[i]));
	return 0;
}

void tls_tickets_rotate(void)
{
	unsigned next;

	if (shared == NULL)
		return;
	next = atomic_load(&shared->cur) + 1;
	RAND_bytes((uint8_t *)&shared->k[next % TICKET_SLOTS], sizeof(struct shared_key));
	atomic_store(&shared->cur, next);
}

static int shared_ticket_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx,
    HMAC_CTX *hctx, int encrypt)
{
	unsigned cur = atomic_load(&shared->cur), i;
	const struct shared_key *k;

	(void)ssl;
	if (encrypt) {
		k = &shared->k[cur % TICKET_SLOTS];
		memcpy(name, k->name, sizeof(k->name));
		if (!RAND_bytes(iv, 16) ||
		    !EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ||
		    !HMAC_Init_ex(hctx, k->hmac, sizeof(k->hmac), EVP_sha256(), NULL))
			return -1;
		return 1;
	}
	for (i = 0; i < TICKET_SLOTS; i++) {
		k = &shared->k[(cur - i) % TICKET_SLOTS];
		if (memcmp(name, k->name, sizeof(k->name)) != 0)
			continue;
		if (!HMAC_Init_ex(hctx, k->hmac, sizeof(k->hmac), EVP_sha256(), NULL) ||
		    !EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv))
			return -1;
		return i == 0 ? 1 : 2;
	}
	return 0;
}

/* A key of the file: AES-128 with a 16-byte HMAC key, or AES-256 with 32. */
static int file_key_init(const struct ticket_key *k, const uint8_t *iv,
    EVP_CIPHER_CTX *cctx, HMAC_CTX *hctx, int encrypt)
{
	size_t len = tickets_key_len(k);
	const EVP_CIPHER *cipher = len == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();

	if (!HMAC_Init_ex(hctx, k->hmac, len, EVP_sha256(), NULL))
		return -1;
	if (encrypt)
		return EVP_EncryptInit_ex(cctx, cipher, NULL, k->aes, iv) ? 0 : -1;
	return EVP_DecryptInit_ex(cctx, cipher, NULL, k->aes, iv) ? 0 : -1;
}

/* The first key of the file encrypts; any key decrypts, and a ticket of
 * an older one is renewed under the first. */
static int file_ticket_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx,
    HMAC_CTX *hctx, int encrypt)
{
	const struct tickets *tk = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	size_t i;

	if (tk == NULL || tk->n == 0)
		return -1;
	if (encrypt) {
		memcpy(name, tk->k[0].name, TICKET_NAME_LEN);
		if (!RAND_bytes(iv, 16) || file_key_init(&tk->k[0], iv, cctx, hctx, 1) < 0)
			return -1;
		return 1;
	}
	for (i = 0; i < tk->n; i++) {
		if (memcmp(name, tk->k[i].name, TICKET_NAME_LEN) != 0)
			continue;
		if (file_key_init(&tk->k[i], iv, cctx, hctx, 0) < 0)
			return -1;
		return i == 0 ? 1 : 2;
	}
	return 0;
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

static SSL_CTX *listen_ctx(const struct where *w, struct svc_tls *t, size_t i)
{
	static const unsigned char sid[] = "mailshim";
	const struct service *svc = w->svc;
	const struct certkey *ck = &svc->certs[i];
	SSL_CTX *ctx = ctx_common(w, svc->listen_min_version, svc->listen_ciphers,
	    "listen_ciphers");

	if (ctx == NULL)
		return NULL;
	if (use_pair(w, ctx, "listen_cert", "listen_key", i, ck->cert, ck->key) < 0)
		goto err;
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
	if (t->tickets != NULL) {
		SSL_CTX_set_app_data(ctx, (void *)t->tickets);
		SSL_CTX_set_tlsext_ticket_key_cb(ctx, file_ticket_cb);
	} else if (shared != NULL) {
		SSL_CTX_set_tlsext_ticket_key_cb(ctx, shared_ticket_cb);
	}
	if (svc->listen_client_ca != NULL) {
		if (use_ca(w, ctx, "listen_client_ca", svc->listen_client_ca, 1) < 0)
			goto err;
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

static SSL_CTX *upstream_ctx(const struct where *w, struct svc_tls *t)
{
	const struct service *svc = w->svc;
	SSL_CTX *ctx = ctx_common(w, svc->upstream_min_version, svc->upstream_ciphers,
	    "upstream_ciphers");
	if (ctx == NULL)
		return NULL;
	if (svc->upstream_cert != NULL &&
	    use_pair(w, ctx, "upstream_cert", "upstream_key", 0, svc->upstream_cert,
	    svc->upstream_key) < 0)
		goto err;
	if (svc->upstream_verify != VERIFY_ENCRYPT &&
	    use_ca(w, ctx, "upstream_ca", svc->upstream_ca, 0) < 0)
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

struct tickets *tls_tickets_load(const struct config *cfg, FILE *err)
{
	const struct where w = { cfg, NULL, err };
	const char *path = cfg->tls_ticket_keys;
	BIO *bio = key_file(&w, "tls_ticket_keys", 0, path);
	struct tickets *tk;
	const uint8_t *p;
	size_t len;
	char why[200];

	if (bio == NULL)
		return NULL;
	tk = OPENSSL_malloc(sizeof(*tk));
	if (tk == NULL || !BIO_mem_contents(bio, &p, &len)) {
		BIO_free(bio);
		OPENSSL_free(tk);
		return key_fail(&w, "tls_ticket_keys", 0, path, "out of memory"), NULL;
	}
	if (tickets_parse(p, len, tk, why, sizeof(why)) < 0) {
		tls_tickets_free(tk);
		tk = NULL;
		key_fail(&w, "tls_ticket_keys", 0, path, "%s", why);
	}
	/* The file's bytes are key material too. */
	OPENSSL_cleanse((void *)p, len);
	BIO_free(bio);
	return tk;
}

void tls_tickets_free(struct tickets *tk)
{
	if (tk == NULL)
		return;
	OPENSSL_cleanse(tk, sizeof(*tk));
	OPENSSL_free(tk);
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
			return key_fail(&w, "listen_cert", 0, NULL, "out of memory");
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
