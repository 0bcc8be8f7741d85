/*
 * proxyin: reading the PROXY header a load balancer sends before the
 * client's first byte. Exactly the header's bytes are taken from the
 * socket, so what follows (a TLS ClientHello, say) stays there for whoever
 * reads next. A v2 header is read as its 16-byte fixed part, then exactly
 * the length it announces (up to 65535 bytes); the buffer exists only
 * while a header is being read. Whether the peer may send one at all
 * (proxy_from) is the session's decision, taken before the first read.
 */
#ifndef MAILSHIM_PROXYIN_H
#define MAILSHIM_PROXYIN_H

#include <stdint.h>

#include "proxy.h"
#include "reason.h"

struct proxyin {
	uint8_t *buf;           /* the header so far; NULL when none is read */
	uint32_t len, cap;
};

#define PROXYIN_AGAIN 0     /* wait until the socket is readable */
#define PROXYIN_DONE 1      /* *out holds the header's addresses */
#define PROXYIN_FAIL (-1)   /* f says why; the session must end */

int proxyin_read(struct proxyin *p, int fd, struct proxy_info *out, struct fail *f);

/* Release the buffer; idempotent. */
void proxyin_free(struct proxyin *p);

#endif
