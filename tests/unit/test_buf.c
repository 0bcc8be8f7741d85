/* buf: regions, compaction, cut and insert keep every byte in order. */
#include <stdlib.h>

#include "buf.h"
#include "pool.h"
#include "unit.h"

#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#endif

static void fill(struct buf *b, const char *s)
{
	size_t room, n = strlen(s);
	uint8_t *at = buf_tail(b, &room);

	CHECK(room >= n);
	memcpy(at, s, n);
	b->len += (uint32_t)n;
}

static int region_is(const struct buf *b, uint32_t from, uint32_t n, const char *s)
{
	return n == strlen(s) && memcmp(b->data + from, s, n) == 0;
}

static void test_regions(void)
{
	struct buf *b = buf_new();

	CHECK(b != NULL);
	CHECK_EQ(b->cap, BUF_CAP);
	fill(b, "EHLO a\r\nMAIL");
	CHECK_EQ(buf_unseen(b), 12);
	b->fwd = 8;                                   /* approve "EHLO a\r\n" */
	CHECK_EQ(buf_unseen(b), 4);
	CHECK(buf_insert(b, "250 x\r\n", 7) == 0);    /* lands after approved */
	CHECK_EQ(b->fwd, 15);
	CHECK(region_is(b, b->off, b->fwd, "EHLO a\r\n250 x\r\n"));
	CHECK(region_is(b, b->off + b->fwd, buf_unseen(b), "MAIL"));
	buf_written(b, 10);
	CHECK_EQ(b->off, 10);
	CHECK(region_is(b, b->off, b->fwd, "0 x\r\n"));
	buf_cut(b, 2);                                /* drop "MA" */
	CHECK(region_is(b, b->off + b->fwd, buf_unseen(b), "IL"));
	buf_written(b, 5);
	buf_cut(b, 2);
	CHECK_EQ(b->off, 0);                          /* empty: reset */
	CHECK_EQ(b->len, 0);
	buf_free(b);
	buf_free(NULL);
}

static void test_full_and_compact(void)
{
	struct buf *b = buf_new();
	size_t room;
	uint8_t *at;

	at = buf_tail(b, &room);
	CHECK_EQ(room, BUF_CAP);
	memset(at, 'x', room);
	b->len = b->cap;
	at = buf_tail(b, &room);
	CHECK_EQ(room, 0);
	CHECK(buf_insert(b, "y", 1) == -1);           /* no room: nothing done */
	b->fwd = 100;
	buf_written(b, 100);
	CHECK_EQ(buf_room(b), 100);
	at = buf_tail(b, &room);                      /* compacts */
	CHECK_EQ(room, 100);
	CHECK_EQ(b->off, 0);
	CHECK(at == b->data + BUF_CAP - 100);
	CHECK(buf_insert(b, "yy", 2) == 0);
	CHECK_EQ(b->data[0], 'y');
	CHECK_EQ(b->data[2], 'x');
	buf_free(b);
}

/* Freed buffers are kept for reuse: one taken again starts empty, more
 * than the pool holds at once all work, and under AddressSanitizer a kept
 * buffer is poisoned (a use after free is still caught). */
static void test_reuse(void)
{
	struct buf *b[POOL_KEPT + 4];
	int i;

	for (i = 0; i < POOL_KEPT + 4; i++) {
		b[i] = buf_new();
		CHECK(b[i] != NULL);
		fill(b[i], "DATA\r\n");
		b[i]->fwd = 6;
		buf_written(b[i], 2);
	}
	for (i = 0; i < POOL_KEPT + 4; i++) {
#ifdef POOL_ASAN
		uint8_t *p = b[i]->data;
		buf_free(b[i]);
		if (i < POOL_KEPT)
			CHECK(__asan_address_is_poisoned(p));
#else
		buf_free(b[i]);
#endif
	}
	for (i = 0; i < POOL_KEPT + 4; i++) {
		b[i] = buf_new();
		CHECK(b[i] != NULL);
		CHECK_EQ(b[i]->off, 0);
		CHECK_EQ(b[i]->fwd, 0);
		CHECK_EQ(b[i]->len, 0);
		CHECK_EQ(b[i]->cap, BUF_CAP);
		fill(b[i], "QUIT\r\n");
		CHECK(region_is(b[i], 0, 6, "QUIT\r\n"));
	}
	for (i = 0; i < POOL_KEPT + 4; i++)
		buf_free(b[i]);
	buf_free(NULL);
}

int main(void)
{
	test_regions();
	test_full_and_compact();
	test_reuse();
	return unit_done("test_buf");
}
