/*
 * relay: one direction of a session (a pump) moving bytes from a source
 * endpoint to a destination endpoint through one bounded buffer. The
 * buffer exists only while bytes are in flight. Reads stop while the
 * buffer is full (back-pressure reaches the sender through TCP), and what
 * may be written is decided by the caller (conn.c, through the SMTP layer),
 * which marks bytes approved.
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
/* Release the buffer if it holds nothing. */
void pump_trim(struct pump *p);
void pump_free(struct pump *p);

#endif
