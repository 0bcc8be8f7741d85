/*
 * mxsess: the session of an `upstream = mx` service, the outbound relay.
 * mailshim is the SMTP server of the sending MTA: it answers the greeting
 * and EHLO itself, holds MAIL FROM, and at the first RCPT of a transaction
 * binds it to that recipient's domain: MX lookup (DNSSEC-validated),
 * hosts in preference order, per host its addresses and, where the MX and
 * address records are secure, its TLSA records (RFC 7672), then connect,
 * EHLO, STARTTLS, the policy check (verify.c), EHLO, MAIL FROM, RCPT. The
 * MX's replies to RCPT and DATA are relayed as they are; bodies pass byte
 * for byte. When the transaction ends (RSET, QUIT, the end of DATA) the
 * MX gets QUIT and one log line tells the transaction.
 */
#ifndef MAILSHIM_MXSESS_H
#define MAILSHIM_MXSESS_H

#include <sys/socket.h>

#include "conn.h"

void mxsess_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen);

/* Close every relay session now (shutdown). */
void mxsess_close_all(struct worker *w);

#endif
