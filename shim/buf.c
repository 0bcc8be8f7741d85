#include "buf.h"
#include "pool.h"

#include <stdlib.h>
#include <string.h>

static struct pool pool = POOL_OF(sizeof(struct buf) + BUF_CAP);

struct buf *buf_new(void)
{
	struct buf *b = pool_get(&pool);

	if (b == NULL)
		return NULL;
	b->off = b->fwd = b->len = 0;
	b->cap = BUF_CAP;
	return b;
}

void buf_free(struct buf *b)
{
	pool_put(&pool, b);
}

/* Move the live bytes to the front; only when the tail has run out. */
static void compact(struct buf *b)
{
	if (b->off == 0)
		return;
	memmove(b->data, b->data + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
}

uint8_t *buf_tail(struct buf *b, size_t *room)
{
	if (b->len == b->cap)
		compact(b);
	*room = b->cap - b->len;
	return b->data + b->len;
}

void buf_written(struct buf *b, size_t n)
{
	b->off += (uint32_t)n;
	b->fwd -= (uint32_t)n;
	if (b->off == b->len)
		b->off = b->len = 0;
}

void buf_cut(struct buf *b, size_t n)
{
	uint8_t *at = b->data + b->off + b->fwd;

	memmove(at, at + n, b->len - (size_t)(at - b->data) - n);
	b->len -= (uint32_t)n;
	if (b->off == b->len)
		b->off = b->len = 0;
}

int buf_insert(struct buf *b, const void *p, size_t n)
{
	uint8_t *at;

	if (buf_room(b) < n)
		return -1;
	if (b->cap - b->len < n)
		compact(b);
	at = b->data + b->off + b->fwd;
	memmove(at + n, at, b->len - (size_t)(at - b->data));
	memcpy(at, p, n);
	b->len += (uint32_t)n;
	b->fwd += (uint32_t)n;
	return 0;
}
