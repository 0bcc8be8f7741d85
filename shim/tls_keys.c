/* tls_keys: the files a key names, read and checked (tls_int.h). */
#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "tls_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/mem.h>
#include <openssl/pem.h>

int tls_key_fail(const struct where *w, const char *key, size_t index,
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

BIO *tls_key_file(const struct where *w, const char *key, size_t index,
    const char *path)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	ssize_t r;
	BIO *bio;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);

	if (fd < 0)
		return tls_key_fail(w, key, index, path, "cannot open: %s", strerror(errno)), NULL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return tls_key_fail(w, key, index, path, "not a regular file"), NULL;
	}
	if (st.st_size <= 0 || (unsigned long long)st.st_size > FILE_MAX) {
		close(fd);
		return tls_key_fail(w, key, index, path, st.st_size <= 0 ? "empty file" :
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
		return tls_key_fail(w, key, index, path, buf ? "cannot read" : "out of memory"), NULL;
	}
	bio = BIO_new(BIO_s_mem());
	if (bio == NULL || BIO_write(bio, buf, (int)got) != (int)got) {
		BIO_free(bio);
		bio = NULL;
		tls_key_fail(w, key, index, path, "out of memory");
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

/* Every certificate of a PEM file, in order; NULL after tls_key_fail(). */
static STACK_OF(X509) *key_certs(const struct where *w, const char *key,
    size_t index, const char *path)
{
	BIO *bio = tls_key_file(w, key, index, path);
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
		tls_key_fail(w, key, index, path, none ? "no PEM certificate in it" :
		    "not a valid PEM certificate file");
		return NULL;
	}
	return certs;
}

static EVP_PKEY *key_pkey(const struct where *w, const char *key, size_t index,
    const char *path)
{
	BIO *bio = tls_key_file(w, key, index, path);
	EVP_PKEY *pk;

	if (bio == NULL)
		return NULL;
	pk = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
	BIO_free(bio);
	if (pk == NULL && pem_end_ok())
		tls_key_fail(w, key, index, path, "no PEM private key in it");
	else if (pk == NULL)
		tls_key_fail(w, key, index, path, "not a usable PEM private key "
		    "(one with a passphrase cannot be used)");
	return pk;
}

/* Certificate chain and private key, and that the two belong together. */
int tls_use_pair(const struct where *w, SSL_CTX *ctx, const char *ckey,
    const char *kkey, size_t index, const char *cert, const char *keyfile)
{
	STACK_OF(X509) *chain = key_certs(w, ckey, index, cert);
	EVP_PKEY *pk;
	size_t i;
	int ok = 0;

	if (chain == NULL)
		return -1;
	if (SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0)) != 1) {
		tls_key_fail(w, ckey, index, cert, "certificate refused");
		goto out;
	}
	for (i = 1; i < sk_X509_num(chain); i++) {
		if (!SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i))) {
			tls_key_fail(w, ckey, index, cert, "cannot use the chain");
			goto out;
		}
	}
	if ((pk = key_pkey(w, kkey, index, keyfile)) == NULL)
		goto out;
	if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1)
		tls_key_fail(w, kkey, index, keyfile, "this key does not match the certificate in %s", cert);
	else
		ok = 1;
	EVP_PKEY_free(pk);
out:
	sk_X509_pop_free(chain, X509_free);
	return ok ? 0 : -1;
}

/* Trust every certificate of a CA file (and, for clients, ask for them). */
int tls_use_ca(const struct where *w, SSL_CTX *ctx, const char *key,
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
		return tls_key_fail(w, key, 0, path, "cannot use a certificate of it");
	return 0;
}
