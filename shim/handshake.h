/*
 * handshake: the TLS handshake step of either hop, and what a failure
 * means. A version or cipher the policy does not allow is a refusal in
 * plain words ("client offered at most TLSv1.1; minimum is TLSv1.2"), a
 * certificate the upstream check rejects is a refusal with its TLS-RPT
 * type, anything else an error with the library's words. The session
 * decides what follows; nothing here knows it.
 */
#ifndef MAILSHIM_HANDSHAKE_H
#define MAILSHIM_HANDSHAKE_H

#include <stdbool.h>

#include "endpoint.h"
#include "reason.h"

/* e->ssl was just made: note the highest version the peer's hello offers,
 * so a refusal can say it. */
void hs_watch(struct endpoint *e);

/*
 * One step of the handshake on e. upstream says which hop (for the words
 * and the reasons); min_version is the hop's policy minimum (wire value).
 * Returns 1 when complete, 0 when it waits (the event in e->wr_wait), -1
 * when it failed (f says why).
 */
int hs_step(struct endpoint *e, bool upstream, int min_version, struct fail *f);

#endif
