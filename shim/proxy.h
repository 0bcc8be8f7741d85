/*
 * proxy: the PROXY protocol (HAProxy's, versions 1 and 2), which a load
 * balancer puts before the first byte of a connection to say who the real
 * client is, and which mailshim can put before its own first byte to an
 * upstream. Pure functions over bytes: no I/O.
 */
#ifndef MAILSHIM_PROXY_H
#define MAILSHIM_PROXY_H

#include <stdbool.h>
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

/* Types of v2 TLVs (HAProxy's proxy-protocol.txt, 2.2). */
#define PP2_TYPE_AUTHORITY 0x02
#define PP2_TYPE_SSL 0x20
#define PP2_SUBTYPE_SSL_VERSION 0x21
#define PP2_SUBTYPE_SSL_CIPHER 0x23
#define PP2_CLIENT_SSL 0x01
#define PP2_CLIENT_CERT_CONN 0x02
#define PP2_CLIENT_CERT_SESS 0x04

/* What the client's TLS was, for a v2 header's TLVs. */
struct proxy_tls {
	const char *version;   /* "TLSv1.3" */
	const char *cipher;    /* OpenSSL's name, as haproxy sends it */
	const char *sni;       /* the server_name the client sent; NULL: none */
	bool cert_conn;        /* a client certificate in this handshake */
	bool cert_sess;        /* one in the session (this or a resumed one) */
	bool verified;         /* and it was verified */
};

/*
 * Write a v1 or v2 header for src -> dst into out; returns its length, 0
 * when it does not fit. Of two families, an IPv4-mapped address goes out
 * as IPv4, else both as IPv6 (the IPv4 one as ::ffff:a.b.c.d); only other
 * families get UNKNOWN (v1) or LOCAL (v2). tls (v2 only; NULL: none)
 * adds PP2_TYPE_AUTHORITY with the SNI (only a host name: letters, digits,
 * '-', '_', dots), then PP2_TYPE_SSL with PP2_CLIENT_SSL (and the
 * certificate bits), its verify field (0 only for a verified client
 * certificate) and the version and cipher sub-TLVs.
 */
size_t proxy_build(int version, const struct sockaddr *src,
    const struct sockaddr *dst, const struct proxy_tls *tls, uint8_t *out,
    size_t cap);

/*
 * The first TLV of type t in a list of TLVs (a header's after its
 * addresses, or the sub-TLVs of PP2_TYPE_SSL after its 5 bytes): 1 and
 * its value, 0 when there is none, -1 when the list is malformed.
 */
int proxy_tlv_find(const uint8_t *p, size_t len, uint8_t t, const uint8_t **val,
    size_t *vlen);

/* Where the TLVs of a complete v2 header start (after its addresses). */
size_t proxy_tlv_offset(const uint8_t *hdr, size_t len);

#endif
