/*
 * tls: the TLS contexts of a service, built once per configuration load
 * from its keys (versions, ciphers, certificates picked by SNI, upstream
 * verification and pins), and the per-session checks that follow a
 * handshake. tls.c builds the contexts; tls_keys.c reads and checks the
 * files the keys name; tls_tickets.c owns the session ticket keys.
 */
#ifndef MAILSHIM_TLS_H
#define MAILSHIM_TLS_H

#include <stddef.h>
#include <stdio.h>

#include "config.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;
struct tickets;
struct proxy_tls;

struct svc_tls {
	const struct service *svc;
	SSL_CTX **listen;        /* one per listen_cert; [0] is the default */
	size_t nlisten;
	SSL_CTX *upstream;       /* NULL when upstream_tls = plain */
	SSL_SESSION *session;    /* newest upstream session, for resumption */
	const struct tickets *tickets;  /* tls_ticket_keys of the load, or NULL */
};

/*
 * Build the contexts of svc (a service of cfg). Every file a key names is
 * read here, never blocking (a FIFO is an error), and checked: PEM that
 * parses, a key that matches its certificate. Each problem is printed to
 * err as "FILE:LINE: message" naming the key at fault; -1 if any.
 * tickets: the load's tls_ticket_keys (tls_tickets_load), which must
 * outlive the contexts; NULL for the shared random keys.
 */
int tls_init(struct svc_tls *t, const struct config *cfg,
    const struct service *svc, const struct tickets *tickets, FILE *err);

/*
 * Session ticket keys shared by all workers (a MAP_SHARED page): made in
 * the supervisor before the first context and the first fork, rotated by
 * it. Without tls_tickets_init each context keeps its own keys. Unused by
 * the contexts of a load that has tls_ticket_keys.
 */
int tls_tickets_init(void);
void tls_tickets_rotate(void);

/*
 * The keys of cfg's tls_ticket_keys file (a regular file, read without
 * blocking, in a format of tickets.h); NULL after "FILE:LINE: message" on
 * err. tls_tickets_free wipes and frees them; NULL is a no-op.
 */
struct tickets *tls_tickets_load(const struct config *cfg, FILE *err);
void tls_tickets_free(struct tickets *tk);
void tls_free(struct svc_tls *t);

/* A server-side SSL for the listen hop, not yet on a socket (ep_tls);
 * NULL on failure. */
SSL *tls_new_listen(const struct svc_tls *t);
/* A client-side SSL for the upstream hop, SNI sni (NULL: upstream_name),
 * not yet on a socket; NULL on failure. */
SSL *tls_new_upstream(struct svc_tls *t, const char *sni);

/* Why a handshake failed, in plain words (verification result first). */
const char *tls_handshake_error(SSL *ssl, char *buf, size_t len);

/* The listen hop's TLS as a PROXY v2 header tells it (proxy.h). */
void tls_proxy_info(const SSL *ssl, struct proxy_tls *out);

const char *tls_version(const SSL *ssl);   /* "TLSv1.3" */
const char *tls_cipher(const SSL *ssl);    /* IANA name */

/* The subject of the peer's verified certificate ("CN=client.test,O=..."),
 * written to buf; NULL when the peer sent none. */
const char *tls_peer_subject(const SSL *ssl, char *buf, size_t len);

/* Name of the TLS library, for -V. */
const char *tls_library(void);

#endif
