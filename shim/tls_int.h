/*
 * tls_int.h: what tls.c, tls_keys.c and tls_tickets.c share. Not for
 * other modules: tls.h is the interface.
 */
#ifndef MAILSHIM_TLS_INT_H
#define MAILSHIM_TLS_INT_H

#include <stddef.h>
#include <stdio.h>

#include "tls.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/*
 * Where a key was set, and what went wrong with it: every message about a
 * key names the file and line of the key itself ("FILE:LINE: ...").
 */
struct where {
	const struct config *cfg;
	const struct service *svc;
	FILE *err;
};

/* "FILE:LINE: KEY PATH: message (library reason)" on w->err, naming the
 * line of the key itself; always -1. */
int tls_key_fail(const struct where *w, const char *key, size_t index,
    const char *path, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/*
 * The whole of a file a key names, in a memory BIO. Opened non-blocking
 * and checked with fstat before any read: a FIFO or a device under a
 * certificate's name must give an error, never a check or a reload that
 * hangs. NULL after tls_key_fail().
 */
BIO *tls_key_file(const struct where *w, const char *key, size_t index,
    const char *path);

/* Certificate chain and private key, and that the two belong together. */
int tls_use_pair(const struct where *w, SSL_CTX *ctx, const char *ckey,
    const char *kkey, size_t index, const char *cert, const char *keyfile);

/* Trust every certificate of a CA file (and, for clients, ask for them). */
int tls_use_ca(const struct where *w, SSL_CTX *ctx, const char *key,
    const char *path, int client_ca);

/* Point a listen context at its load's ticket keys: tk (tls_ticket_keys),
 * else the shared ones when tls_tickets_init made them, else BoringSSL's
 * own keys for this context. */
void tls_tickets_use(SSL_CTX *ctx, const struct tickets *tk);

#endif
