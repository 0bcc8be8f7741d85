#include "pool.h"

#include <stdlib.h>

#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define KEEP(b, n) ASAN_POISON_MEMORY_REGION((b), (n))
#define TAKE(b, n) ASAN_UNPOISON_MEMORY_REGION((b), (n))
#else
#define KEEP(b, n) ((void)(b), (void)(n))
#define TAKE(b, n) ((void)(b), (void)(n))
#endif

void *pool_get(struct pool *p)
{
	void *b;

	if (p->n == 0)
		return malloc(p->size);
	b = p->kept[--p->n];
	TAKE(b, p->size);
	return b;
}

void pool_put(struct pool *p, void *b)
{
	if (b == NULL)
		return;
	if (p->n == POOL_KEPT) {
		free(b);
		return;
	}
	KEEP(b, p->size);
	p->kept[p->n++] = b;
}
