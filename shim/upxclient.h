/*
 * upxclient: the bytes of the XCLIENT exchange with the upstream (the
 * words are the SMTP layer's, smtp_xclient.c): the shim's own EHLO, and
 * the XCLIENT line naming the client the session knows (after its PROXY
 * header, if any), queued toward the upstream ahead of the client's
 * EHLO, which waits unread in the same buffer.
 */
#ifndef MAILSHIM_UPXCLIENT_H
#define MAILSHIM_UPXCLIENT_H

#include <stddef.h>
#include <sys/socket.h>

#include "reason.h"
#include "relay.h"
#include "smtp.h"

/*
 * Queue what verdict v (SMTP_UP_EHLO or SMTP_UP_XCLIENT) asks for on tx
 * (toward the upstream; the client's line is its first unseen bytes).
 * ehlo: "EHLO helo_name\r\n". Returns 1, or -1 with f saying why.
 */
int upxclient_send(struct pump *tx, const struct smtp *s, enum smtp_verdict v,
    const char *ehlo, size_t ehlo_len, const struct sockaddr *peer,
    struct fail *f);

#endif
