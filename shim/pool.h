/*
 * pool.h: marks for memory a free list keeps. Under AddressSanitizer a
 * kept block is poisoned until it is taken again, so a use after its
 * "free" is still caught although the block was never given back.
 */
#ifndef MAILSHIM_POOL_H
#define MAILSHIM_POOL_H

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif

#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
#define POOL_KEEP(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define POOL_TAKE(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POOL_KEEP(p, n) ((void)(p), (void)(n))
#define POOL_TAKE(p, n) ((void)(p), (void)(n))
#endif

#endif
