/*
 * endpoint: one side of a session, a socket with an optional TLS layer.
 * Callers read, write, hand-shake and shut down without asking which
 * transport they have; "would block" comes back as EP_AGAIN with the
 * event it waits for in rd_wait / wr_wait (a TLS read can wait for the
 * socket to become writable, and a write for it to become readable).
 */
#ifndef MAILSHIM_ENDPOINT_H
#define MAILSHIM_ENDPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <ev.h>

typedef struct ssl_st SSL;

/* rd_wait/wr_wait: the handshake waits for the certificate decision
 * (DNS), not for the socket; the session clears it when the answer is in. */
#define EP_WAIT_VERIFY 0x80

#define EP_AGAIN (-1)
#define EP_ERROR (-2)

struct endpoint {
	int fd;
	SSL *ssl;               /* NULL: plaintext */
	uint8_t rd_wait;        /* EV_READ/EV_WRITE a read waits for; 0: try */
	uint8_t wr_wait;        /* likewise for writes and the handshake */
	uint8_t armed;          /* events the watcher has now */
	bool shut;              /* our write side is shut down */
	int err;                /* errno of the last failure, for the log */
	uint16_t peer_version;  /* highest TLS version the peer's hello offered */
	bool drained;           /* TLS: the last socket read emptied it */
	uint32_t ahead_off, ahead_len;
	uint8_t *ahead;         /* TLS: bytes read ahead of the library (sockbio) */
	ev_io io;
};

void ep_init(struct endpoint *e, int fd);
/* Put TLS on the endpoint's socket; ssl NULL or a failure frees ssl and
 * returns -1 with e->ssl NULL. */
int ep_tls(struct endpoint *e, SSL *ssl);

/* >0 bytes read, 0 end of stream, EP_AGAIN or EP_ERROR. */
ssize_t ep_read(struct endpoint *e, void *p, size_t n);
/* >0 bytes written, EP_AGAIN or EP_ERROR. */
ssize_t ep_write(struct endpoint *e, const void *p, size_t n);
/* 1 when the handshake is complete, EP_AGAIN or EP_ERROR. */
int ep_handshake(struct endpoint *e);
/* Send close_notify (TLS) and, when fin, FIN (false: the socket is closed
 * right after, and close() sends the FIN). 0 done, EP_AGAIN, EP_ERROR
 * (also when the peer has reset the connection: err is ENOTCONN; the
 * endpoint counts as shut either way). */
int ep_shutdown(struct endpoint *e, bool fin);
/* Bytes buffered inside the TLS layer or read ahead of it (no fd event
 * will announce them). */
bool ep_pending(const struct endpoint *e);
/* The events to watch for a read (rd) and a write (wr): what the last
 * attempt waited for, else the plain one. */
int ep_want(const struct endpoint *e, bool rd, bool wr);
/* An fd event came: clear the waits it satisfies. */
void ep_ready(struct endpoint *e, int revents);
/* Arm the watcher for these events (stops it for 0). */
void ep_watch(struct endpoint *e, struct ev_loop *loop, int events);
/* Stop the watcher, free TLS, close the socket; idempotent. */
void ep_close(struct endpoint *e, struct ev_loop *loop);

#endif
