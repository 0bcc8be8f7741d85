#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v2sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a,
	0x51, 0x55, 0x49, 0x54, 0x0a };

static int set_addr(struct sockaddr_storage *ss, int fam, const void *addr,
    uint16_t port_be)
{
	memset(ss, 0, sizeof(*ss));
	if (fam == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, addr, 4);
		in->sin_port = port_be;
		return sizeof(*in);
	}
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	in6->sin6_family = AF_INET6;
	memcpy(&in6->sin6_addr, addr, 16);
	in6->sin6_port = port_be;
	return sizeof(*in6);
}

/* A decimal port, 0..65535, no sign, no leading zeros but "0". */
static int parse_port(const char *s, uint16_t *out)
{
	unsigned long v = 0;
	size_t i, n = strlen(s);

	if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535)
		return -1;
	*out = htons((uint16_t)v);
	return 0;
}

static int parse_v1(const uint8_t *p, size_t len, struct proxy_info *out)
{
	char line[108], *f[6], *save = NULL;
	uint8_t a[16], b[16];
	uint16_t sp, dp;
	const uint8_t *lf;
	size_t n;
	int fam, nf = 0;

	/* The specification's limit: 107 bytes, CRLF included. */
	lf = memchr(p, '\n', len < PROXY_V1_MAX ? len : PROXY_V1_MAX);
	if (lf == NULL)
		return len >= PROXY_V1_MAX ? -1 : 0;
	n = (size_t)(lf - p) + 1;
	if (n < 8 || p[n - 2] != '\r')
		return -1;
	memcpy(line, p, n - 2);
	line[n - 2] = '\0';
	if (memchr(line, '\0', n - 2) != NULL)
		return -1;
	for (char *t = strtok_r(line, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save)) {
		if (nf < 6)
			f[nf] = t;
		nf++;
	}
	if (nf >= 2 && strcmp(f[0], "PROXY") == 0 && strcmp(f[1], "UNKNOWN") == 0) {
		out->local = 1;
		return (int)n;
	}
	if (nf != 6 || strcmp(f[0], "PROXY") != 0)
		return -1;
	if (strcmp(f[1], "TCP4") == 0)
		fam = AF_INET;
	else if (strcmp(f[1], "TCP6") == 0)
		fam = AF_INET6;
	else
		return -1;
	if (inet_pton(fam, f[2], a) != 1 || inet_pton(fam, f[3], b) != 1 ||
	    parse_port(f[4], &sp) < 0 || parse_port(f[5], &dp) < 0)
		return -1;
	out->local = 0;
	out->len = (socklen_t)set_addr(&out->src, fam, a, sp);
	set_addr(&out->dst, fam, b, dp);
	return (int)n;
}

static int parse_v2(const uint8_t *p, size_t len, struct proxy_info *out)
{
	size_t n;
	uint16_t sp, dp;

	if (len < 16)
		return 0;
	if ((p[12] & 0xf0) != 0x20)
		return -1;
	n = 16 + ((size_t)p[14] << 8 | p[15]);
	if (n > PROXY_MAX)
		return -1;
	if (len < n)
		return 0;
	switch (p[12] & 0x0f) {
	case 0x0:               /* LOCAL: health checks from the balancer itself */
		out->local = 1;
		return (int)n;
	case 0x1:
		break;
	default:
		return -1;
	}
	switch (p[13]) {
	case 0x11:              /* TCP over IPv4 */
		if (n < 16 + 12)
			return -1;
		memcpy(&sp, p + 24, 2);
		memcpy(&dp, p + 26, 2);
		out->len = (socklen_t)set_addr(&out->src, AF_INET, p + 16, sp);
		set_addr(&out->dst, AF_INET, p + 20, dp);
		break;
	case 0x21:              /* TCP over IPv6 */
		if (n < 16 + 36)
			return -1;
		memcpy(&sp, p + 48, 2);
		memcpy(&dp, p + 50, 2);
		out->len = (socklen_t)set_addr(&out->src, AF_INET6, p + 16, sp);
		set_addr(&out->dst, AF_INET6, p + 32, dp);
		break;
	case 0x00:              /* UNSPEC */
		out->local = 1;
		return (int)n;
	default:
		return -1;
	}
	out->local = 0;
	return (int)n;
}

int proxy_parse(const uint8_t *p, size_t len, struct proxy_info *out)
{
	size_t k = len < sizeof(v2sig) ? len : sizeof(v2sig);

	memset(out, 0, sizeof(*out));
	if (len == 0)
		return 0;
	if (memcmp(p, v2sig, k) == 0)
		return k < sizeof(v2sig) ? 0 : parse_v2(p, len, out);
	k = len < 6 ? len : 6;
	if (memcmp(p, "PROXY ", k) != 0)
		return -1;
	return k < 6 ? 0 : parse_v1(p, len, out);
}

size_t proxy_want(const uint8_t *p, size_t len)
{
	size_t k = len < sizeof(v2sig) ? len : sizeof(v2sig);

	if (memcmp(p, v2sig, k) == 0) {
		if (len < PROXY_V2_FIXED)
			return PROXY_V2_FIXED;
		return PROXY_V2_FIXED + ((size_t)p[14] << 8 | p[15]);
	}
	k = len < 6 ? len : 6;
	if (memcmp(p, "PROXY ", k) == 0)
		return PROXY_V1_MAX;
	return 0;
}

static size_t build_v1(const struct sockaddr *src, const struct sockaddr *dst,
    uint8_t *out, size_t cap)
{
	char a[INET6_ADDRSTRLEN], b[INET6_ADDRSTRLEN];
	int n, v6 = src->sa_family == AF_INET6;
	unsigned sp, dp;

	if (src->sa_family != dst->sa_family ||
	    (src->sa_family != AF_INET && src->sa_family != AF_INET6)) {
		n = snprintf((char *)out, cap, "PROXY UNKNOWN\r\n");
		return n > 0 && (size_t)n < cap ? (size_t)n : 0;
	}
	if (v6) {
		const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
		inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof(a));
		inet_ntop(AF_INET6, &d->sin6_addr, b, sizeof(b));
		sp = ntohs(s->sin6_port);
		dp = ntohs(d->sin6_port);
	} else {
		const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
		inet_ntop(AF_INET, &s->sin_addr, a, sizeof(a));
		inet_ntop(AF_INET, &d->sin_addr, b, sizeof(b));
		sp = ntohs(s->sin_port);
		dp = ntohs(d->sin_port);
	}
	n = snprintf((char *)out, cap, "PROXY TCP%c %s %s %u %u\r\n", v6 ? '6' : '4',
	    a, b, sp, dp);
	return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* One TLV of n value bytes at out + at; the new end, or 0 past cap. */
static size_t tlv_put(uint8_t *out, size_t at, size_t cap, uint8_t t, const void *v,
    size_t n)
{
	if (n > 0xffff || at + 3 + n > cap || at + 3 + n > PROXY_MAX)
		return 0;
	out[at] = t;
	out[at + 1] = (uint8_t)(n >> 8);
	out[at + 2] = (uint8_t)n;
	if (n > 0)
		memcpy(out + at + 3, v, n);
	return at + 3 + n;
}

static size_t tlv_str(uint8_t *out, size_t at, size_t cap, uint8_t t, const char *s)
{
	return s != NULL && *s != '\0' ? tlv_put(out, at, cap, t, s, strlen(s)) : at;
}

/* A client's SNI is passed on only when it is a host name (letters,
 * digits, '-', '_' and dots, at most 253): it is the client's to choose,
 * and an upstream may log it as it is. */
static bool host_name(const char *s)
{
	size_t n = 0;

	for (; s[n] != '\0'; n++) {
		unsigned char c = (unsigned char)s[n];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
			return false;
	}
	return n > 0 && n <= 253;
}

/* AUTHORITY (the SNI), then SSL with its version and cipher sub-TLVs. */
static size_t build_tls(const struct proxy_tls *tls, uint8_t *out, size_t at, size_t cap)
{
	size_t ssl, end;
	uint8_t client = PP2_CLIENT_SSL;
	uint32_t verify = tls->verified && (tls->cert_conn || tls->cert_sess) ? 0 : 1;

	if (tls->sni != NULL && host_name(tls->sni) &&
	    (at = tlv_str(out, at, cap, PP2_TYPE_AUTHORITY, tls->sni)) == 0)
		return 0;
	if (tls->cert_conn)
		client |= PP2_CLIENT_CERT_CONN;
	if (tls->cert_sess || tls->cert_conn)
		client |= PP2_CLIENT_CERT_SESS;
	ssl = at;
	if (at + 8 > cap)
		return 0;
	out[at + 3] = client;
	out[at + 4] = (uint8_t)(verify >> 24);
	out[at + 5] = (uint8_t)(verify >> 16);
	out[at + 6] = (uint8_t)(verify >> 8);
	out[at + 7] = (uint8_t)verify;
	end = at + 8;
	if ((end = tlv_str(out, end, cap, PP2_SUBTYPE_SSL_VERSION, tls->version)) == 0 ||
	    (end = tlv_str(out, end, cap, PP2_SUBTYPE_SSL_CIPHER, tls->cipher)) == 0 ||
	    end - ssl - 3 > 0xffff)
		return 0;
	out[ssl] = PP2_TYPE_SSL;
	out[ssl + 1] = (uint8_t)((end - ssl - 3) >> 8);
	out[ssl + 2] = (uint8_t)(end - ssl - 3);
	return end;
}

static size_t build_v2(const struct sockaddr *src, const struct sockaddr *dst,
    const struct proxy_tls *tls, uint8_t *out, size_t cap)
{
	size_t alen, end;

	if (cap < 16 + 36)
		return 0;
	memcpy(out, v2sig, sizeof(v2sig));
	out[12] = 0x21;
	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
		out[13] = 0x11;
		alen = 12;
		memcpy(out + 16, &s->sin_addr, 4);
		memcpy(out + 20, &d->sin_addr, 4);
		memcpy(out + 24, &s->sin_port, 2);
		memcpy(out + 26, &d->sin_port, 2);
	} else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
		out[13] = 0x21;
		alen = 36;
		memcpy(out + 16, &s->sin6_addr, 16);
		memcpy(out + 32, &d->sin6_addr, 16);
		memcpy(out + 48, &s->sin6_port, 2);
		memcpy(out + 50, &d->sin6_port, 2);
	} else {
		out[12] = 0x20;   /* LOCAL: nothing to announce */
		out[13] = 0x00;
		alen = 0;
	}
	end = 16 + alen;
	if (tls != NULL && out[12] == 0x21 && (end = build_tls(tls, out, end, cap)) == 0)
		return 0;
	out[14] = (uint8_t)((end - 16) >> 8);
	out[15] = (uint8_t)(end - 16);
	return end;
}

/* An IPv4 address as IPv6 (::ffff:a.b.c.d, RFC 4291 2.5.5.2). */
static void map_v4(const struct sockaddr *a, struct sockaddr_in6 *out)
{
	const struct sockaddr_in *in = (const void *)a;

	memset(out, 0, sizeof(*out));
	out->sin6_family = AF_INET6;
	out->sin6_port = in->sin_port;
	out->sin6_addr.s6_addr[10] = 0xff;
	out->sin6_addr.s6_addr[11] = 0xff;
	memcpy(&out->sin6_addr.s6_addr[12], &in->sin_addr, 4);
}

/* An IPv4-mapped IPv6 address as IPv4; false for any other. */
static bool unmap_v4(const struct sockaddr *a, struct sockaddr_in *out)
{
	const struct sockaddr_in6 *in6 = (const void *)a;

	if (a->sa_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
		return false;
	memset(out, 0, sizeof(*out));
	out->sin_family = AF_INET;
	out->sin_port = in6->sin6_port;
	memcpy(&out->sin_addr, &in6->sin6_addr.s6_addr[12], 4);
	return true;
}

/*
 * A client of one family on a listener of the other (an IPv6 client
 * behind a balancer that reaches an IPv4 listener, and the reverse): an
 * IPv4-mapped one goes out as IPv4, else both as IPv6, the IPv4 one
 * mapped, as haproxy sends them. Announcing nothing (UNKNOWN, LOCAL)
 * would make the upstream take mailshim itself, often a trusted local
 * address, for the client.
 */
size_t proxy_build(int version, const struct sockaddr *src,
    const struct sockaddr *dst, const struct proxy_tls *tls, uint8_t *out,
    size_t cap)
{
	struct sockaddr_in6 ms, md;
	struct sockaddr_in us, ud;

	if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET && unmap_v4(src, &us)) {
		src = (const struct sockaddr *)&us;
	} else if (src->sa_family == AF_INET && dst->sa_family == AF_INET6 &&
	    unmap_v4(dst, &ud)) {
		dst = (const struct sockaddr *)&ud;
	} else if (src->sa_family == AF_INET && dst->sa_family == AF_INET6) {
		map_v4(src, &ms);
		src = (const struct sockaddr *)&ms;
	} else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET) {
		map_v4(dst, &md);
		dst = (const struct sockaddr *)&md;
	}
	return version == 2 ? build_v2(src, dst, tls, out, cap) :
	    build_v1(src, dst, out, cap);
}

int proxy_tlv_find(const uint8_t *p, size_t len, uint8_t t, const uint8_t **val,
    size_t *vlen)
{
	size_t at = 0, n;
	int found = 0;

	/* The whole list is checked, so a malformed tail is never missed. */
	while (at < len) {
		if (len - at < 3)
			return -1;
		n = (size_t)p[at + 1] << 8 | p[at + 2];
		if (n > len - at - 3)
			return -1;
		if (!found && p[at] == t) {
			*val = p + at + 3;
			*vlen = n;
			found = 1;
		}
		at += 3 + n;
	}
	return found;
}

size_t proxy_tlv_offset(const uint8_t *hdr, size_t len)
{
	if (len < PROXY_V2_FIXED || (hdr[12] & 0x0f) != 0x1)
		return len;
	switch (hdr[13]) {
	case 0x11:
		return 16 + 12 <= len ? 16 + 12 : len;
	case 0x21:
		return 16 + 36 <= len ? 16 + 36 : len;
	default:
		return len;
	}
}
