/*
 * buf: a bounded byte buffer with three regions, allocated only while a
 * direction of a session has bytes in flight (an idle session holds none):
 *
 *   data[0 .. off)            already written, free for reuse
 *   data[off .. off + fwd)    approved: ready to be written as they are
 *   data[off + fwd .. len)    read but not yet examined (the SMTP layer
 *                             decides what they become)
 *
 * Reads go straight into the tail, writes come straight from the head: no
 * byte is copied on the way through except when a region must be cut out or
 * inserted (the shim's own replies), which happens on the SMTP path only.
 */
#ifndef MAILSHIM_BUF_H
#define MAILSHIM_BUF_H

#include <stddef.h>
#include <stdint.h>

/*
 * Sixteen full TLS records. A bulk body costs one plaintext write per
 * 256 KiB: on loopback a system call costs more than copying 64 KiB, so
 * a MiB of body costs about a third less CPU than with 64 KiB buffers.
 * Any SMTP line or EHLO reply fits.
 */
#define BUF_CAP (256 * 1024)

struct buf {
	uint32_t off, fwd, len, cap;
	uint8_t data[];
};

/* From a free list of the process (pool.h): an idle session holds none. */
struct buf *buf_new(void);
void buf_free(struct buf *b);   /* NULL is a no-op */

/* Bytes read but not examined. */
static inline uint32_t buf_unseen(const struct buf *b)
{
	return b->len - b->off - b->fwd;
}

/* Where the next read goes and how much fits; compacts first if needed. */
uint8_t *buf_tail(struct buf *b, size_t *room);

/* Writing n approved bytes finished. */
void buf_written(struct buf *b, size_t n);

/* Drop n unexamined bytes at the start of the unexamined region. */
void buf_cut(struct buf *b, size_t n);

/*
 * Insert n bytes as approved, after the approved region and before the
 * unexamined one. Returns -1 (nothing done) if they do not fit.
 */
int buf_insert(struct buf *b, const void *p, size_t n);

/* Free space after compaction. */
static inline size_t buf_room(const struct buf *b)
{
	return b->cap - (b->len - b->off);
}

#endif
