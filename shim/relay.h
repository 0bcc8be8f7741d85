/*
 * relay: one direction of a session (a pump) moving bytes from a source
 * endpoint to a destination endpoint through one bounded buffer. The
 * buffer exists only while bytes are in flight. Reads stop while the
 * buffer is full (back-pressure reaches the sender through TCP), and what
 * may be written is decided by the caller (conn_relay.c, through the SMTP layer),
 * which marks bytes approved.
 *
 * Half-close belongs to the pump that reached the end of its source: once
 * what it holds is delivered, it passes the end on (TLS close_notify and
 * FIN) to its destination, as spiped's proto_pipe does. Until then it asks
 * for no write event it cannot use, so a half-closed session never spins.
 */
#ifndef MAILSHIM_RELAY_H
#define MAILSHIM_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "endpoint.h"

struct pump {
	struct buf *b;        /* NULL while nothing is in flight */
	bool eof;             /* the source ended its stream */
	uint64_t in, out;     /* payload bytes read and written */
};

#define PUMP_ERROR (-1)
#define PUMP_NOMEM (-2)     /* no buffer could be allocated */

/* Read what fits; returns bytes read (0: nothing now), PUMP_ERROR or
 * PUMP_NOMEM. */
int pump_read(struct pump *p, struct endpoint *src);
/* Write approved bytes; returns bytes written (0: nothing), PUMP_ERROR. */
int pump_write(struct pump *p, struct endpoint *dst);
/* Queue bytes of the shim's own (after those already approved). */
int pump_insert(struct pump *p, const void *data, size_t len);
/* Free space for the shim's own bytes. */
size_t pump_room(const struct pump *p);
/* Bytes approved but not written yet. */
uint32_t pump_approved(const struct pump *p);
/* Bytes read but not examined yet. */
uint32_t pump_unseen(const struct pump *p);
/* Is there room to read more? */
bool pump_can_read(const struct pump *p);
/*
 * The source ended: once every approved byte is out, shut the
 * destination's write side. Bytes not examined yet are dropped when
 * partial (half a line that can never be completed), else they hold the
 * end back until the SMTP layer has decided on them. Returns 1 when the
 * destination was shut now, 0 when nothing could be done yet (EP_AGAIN
 * leaves the event to wait for in dst->wr_wait). last: the other
 * direction is over too and the session closes next, so the FIN is left
 * to close().
 */
int pump_finish(struct pump *p, struct endpoint *dst, bool partial, bool last);
/* Can a write event make progress: approved bytes, or an end to pass on
 * that nothing holds back? */
bool pump_wants_write(const struct pump *p, const struct endpoint *dst, bool partial);
/* Release the buffer if it holds nothing. */
void pump_trim(struct pump *p);
void pump_free(struct pump *p);

#endif
