#include "relay.h"

static int ensure(struct pump *p)
{
	if (p->b == NULL && (p->b = buf_new()) == NULL)
		return -1;
	return 0;
}

int pump_read(struct pump *p, struct endpoint *src)
{
	size_t room;
	uint8_t *at;
	ssize_t r;
	int total = 0;

	if (p->eof)
		return 0;
	if (ensure(p) < 0)
		return PUMP_NOMEM;
	/* Read until the buffer is full or the source has nothing: a TLS
	 * source may hold a decrypted record that no fd event announces. */
	while (src->rd_wait == 0) {
		at = buf_tail(p->b, &room);
		if (room == 0)
			break;
		r = ep_read(src, at, room);
		if (r == EP_AGAIN)
			break;
		if (r == EP_ERROR)
			return PUMP_ERROR;
		if (r == 0) {
			p->eof = true;
			break;
		}
		p->b->len += (uint32_t)r;
		p->in += (uint64_t)r;
		total += (int)r;
		/* A short plaintext read drained the socket: wait for the next
		 * event instead of paying a system call for EAGAIN. */
		if (src->ssl == NULL && (size_t)r < room)
			src->rd_wait = EV_READ;
	}
	return total;
}

/* A short plaintext write means the socket buffer is full. */
static bool src_short_write(const struct endpoint *dst, size_t done, size_t asked)
{
	return dst->ssl == NULL && done < asked;
}

int pump_write(struct pump *p, struct endpoint *dst)
{
	ssize_t r;
	int total = 0;

	while (p->b != NULL && p->b->fwd > 0 && dst->wr_wait == 0) {
		r = ep_write(dst, p->b->data + p->b->off, p->b->fwd);
		if (r == EP_AGAIN)
			break;
		if (r == EP_ERROR)
			return PUMP_ERROR;
		if (src_short_write(dst, (size_t)r, p->b->fwd))
			dst->wr_wait = EV_WRITE;
		buf_written(p->b, (size_t)r);
		p->out += (uint64_t)r;
		total += (int)r;
	}
	return total;
}

int pump_insert(struct pump *p, const void *data, size_t len)
{
	if (ensure(p) < 0)
		return -1;
	return buf_insert(p->b, data, len);
}

size_t pump_room(const struct pump *p)
{
	return p->b ? buf_room(p->b) : BUF_CAP;
}

uint32_t pump_approved(const struct pump *p)
{
	return p->b ? p->b->fwd : 0;
}

uint32_t pump_unseen(const struct pump *p)
{
	return p->b ? buf_unseen(p->b) : 0;
}

bool pump_can_read(const struct pump *p)
{
	return !p->eof && (p->b == NULL || buf_room(p->b) > 0);
}

static bool end_ready(const struct pump *p, const struct endpoint *dst, bool partial)
{
	return p->eof && !dst->shut && pump_approved(p) == 0 &&
	    (partial || pump_unseen(p) == 0);
}

int pump_finish(struct pump *p, struct endpoint *dst, bool partial, bool last)
{
	int r;

	if (!end_ready(p, dst, partial) || dst->wr_wait != 0)
		return 0;
	if (pump_unseen(p) > 0)
		buf_cut(p->b, pump_unseen(p));
	/* A failed FIN means the peer is gone: the next read tells. */
	r = ep_shutdown(dst, !last);
	return r == EP_AGAIN ? 0 : 1;
}

bool pump_wants_write(const struct pump *p, const struct endpoint *dst, bool partial)
{
	return pump_approved(p) > 0 || end_ready(p, dst, partial);
}

void pump_trim(struct pump *p)
{
	if (p->b != NULL && p->b->len == p->b->off) {
		buf_free(p->b);
		p->b = NULL;
	}
}

void pump_free(struct pump *p)
{
	buf_free(p->b);
	p->b = NULL;
}
