/*
 * pool: a free list of equal blocks. Blocks past malloc's mmap threshold
 * (the relay buffers, the TLS read-ahead) would otherwise be mapped and
 * unmapped, page faults and all, each time a session's direction fills
 * and empties. A pool is a process's own (a worker is one thread) and
 * keeps at most POOL_KEPT blocks. Under AddressSanitizer a kept block is
 * poisoned until it is taken again, so a use after its "free" is still
 * caught although the block never went back to malloc.
 */
#ifndef MAILSHIM_POOL_H
#define MAILSHIM_POOL_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif

#define POOL_KEPT 8

struct pool {
	size_t size;              /* of every block */
	int n;                    /* blocks kept */
	void *kept[POOL_KEPT];
};

#define POOL_OF(bytes) { (bytes), 0, { NULL } }

/* A block of p->size bytes, uninitialised; NULL when out of memory. */
void *pool_get(struct pool *p);
/* Give a block back (NULL is a no-op). */
void pool_put(struct pool *p, void *b);

#endif
