/*
 * proxy: the PROXY protocol (HAProxy's, versions 1 and 2), which a load
 * balancer puts before the first byte of a connection to say who the real
 * client is, and which mailshim can put before its own first byte to an
 * upstream. Pure functions over bytes: no I/O.
 */
#ifndef MAILSHIM_PROXY_H
#define MAILSHIM_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Longest header: v1 is at most 107 bytes; v2 is a 16-byte fixed part and
 * up to 65535 bytes of addresses and TLVs (load balancers send large
 * ones: certificates, cloud metadata). */
#define PROXY_V1_MAX 107
#define PROXY_V2_FIXED 16
#define PROXY_MAX (PROXY_V2_FIXED + 65535)

struct proxy_info {
	int local;                     /* LOCAL/UNKNOWN: keep the real peer */
	struct sockaddr_storage src;   /* the client, when !local */
	struct sockaddr_storage dst;
	socklen_t len;
};

/*
 * Parse a header at the start of p. Returns its length (> 0) when it is
 * complete and valid, 0 when more bytes are needed, -1 when the bytes are
 * not a valid header (the connection must be dropped).
 */
int proxy_parse(const uint8_t *p, size_t len, struct proxy_info *out);

/*
 * How many bytes the header at the start of p (len bytes so far) needs
 * before proxy_parse() can decide: the exact size of a v2 header once its
 * fixed part is in, else an upper bound (v1 ends at its line feed, which
 * the caller looks for). 0 when the bytes are not a header at all.
 */
size_t proxy_want(const uint8_t *p, size_t len);

/* Write a v1 or v2 header for src -> dst into out; returns its length. */
size_t proxy_build(int version, const struct sockaddr *src,
    const struct sockaddr *dst, uint8_t *out, size_t cap);

#endif
