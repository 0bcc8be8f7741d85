/*
 * upsetup: the shim's own SMTP dialogue with a STARTTLS upstream, before
 * any byte of the client reaches it: read the greeting (kept for the
 * client), send EHLO, require STARTTLS in the reply, send STARTTLS, expect
 * 220 and nothing after it. The words are the SMTP layer's (smtp_setup());
 * this drives the bytes and returns verdicts to the session.
 */
#ifndef MAILSHIM_UPSETUP_H
#define MAILSHIM_UPSETUP_H

#include <stddef.h>
#include <stdint.h>

#include "endpoint.h"
#include "reason.h"
#include "relay.h"
#include "smtp.h"

struct upsetup {
	char *greeting;          /* the upstream's banner, for the client */
	uint32_t greeting_len;
};

/* What the dialogue works with; all owned by the session. */
struct upsetup_io {
	struct endpoint *up;
	struct pump *tx, *rx;    /* to and from the upstream */
	struct smtp *smtp;
	const char *ehlo;        /* "EHLO helo_name\r\n" */
	size_t ehlo_len;
};

#define UPSETUP_WAIT 0       /* nothing to do until the socket says so */
#define UPSETUP_MOVED 1      /* progress; call again */
#define UPSETUP_TLS 2        /* the 220 to STARTTLS is in: start TLS */
#define UPSETUP_FAIL (-1)    /* f says why */

int upsetup_turn(struct upsetup *u, const struct upsetup_io *io, struct fail *f);

/* Hand the greeting over (NULL if none was read); the caller frees it. */
char *upsetup_take_greeting(struct upsetup *u, uint32_t *len);

void upsetup_free(struct upsetup *u);

#endif
