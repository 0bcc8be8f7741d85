#include "proxyin.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int room_for(struct proxyin *p, size_t want)
{
	uint8_t *b;

	if (want <= p->cap)
		return 0;
	b = realloc(p->buf, want);
	if (b == NULL)
		return -1;
	p->buf = b;
	p->cap = (uint32_t)want;
	return 0;
}

/* A v2 header past its fixed part: every byte up to its size is header. */
static bool exact(const struct proxyin *p)
{
	return p->len >= PROXY_V2_FIXED && p->buf[0] == '\r';
}

/* Take n bytes from the socket into the header (they were peeked, or are
 * known to be the header's). */
static ssize_t take(struct proxyin *p, int fd, size_t n, int flags)
{
	ssize_t r = recv(fd, p->buf + p->len, n, flags);

	if (r > 0 && flags == 0)
		p->len += (uint32_t)r;
	return r;
}

static int step(struct proxyin *p, int fd, struct proxy_info *out, struct fail *f)
{
	size_t want = p->len == 0 ? PROXY_V2_FIXED : proxy_want(p->buf, p->len);
	ssize_t n;
	int r;

	if (want == 0)
		return fail_set(f, R_PROXY_BAD, NULL);
	if (room_for(p, want < PROXY_V1_MAX + 1 ? PROXY_V1_MAX + 1 : want) < 0)
		return fail_set(f, R_NO_MEMORY, NULL);
	n = take(p, fd, want - p->len, exact(p) ? 0 : MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return PROXYIN_AGAIN;
	if (n < 0)
		return fail_set(f, R_CL_LOST, strerror(errno));
	if (n == 0)
		return fail_set(f, R_PROXY_EOF, NULL);
	if (exact(p) && p->len < want)
		return 2;
	r = proxy_parse(p->buf, exact(p) ? p->len : p->len + (size_t)n, out);
	if (r < 0)
		return fail_set(f, R_PROXY_BAD, NULL);
	if (exact(p))
		return r > 0 ? PROXYIN_DONE : fail_set(f, R_PROXY_BAD, NULL);
	/* Peeked: take the header's part of it (all of it while incomplete,
	 * since then every byte seen belongs to the header). */
	n = r > 0 ? r - (int)p->len : n;
	if (take(p, fd, (size_t)n, 0) != n)
		return fail_set(f, R_CL_LOST, NULL);
	return r > 0 ? PROXYIN_DONE : 2;
}

int proxyin_read(struct proxyin *p, int fd, struct proxy_info *out, struct fail *f)
{
	int r;

	/* Each step takes bytes or stops: at most 65551 of them. */
	while ((r = step(p, fd, out, f)) == 2)
		;
	if (r != PROXYIN_AGAIN)
		proxyin_free(p);
	return r;
}

void proxyin_free(struct proxyin *p)
{
	free(p->buf);
	p->buf = NULL;
	p->len = p->cap = 0;
}
