/* proxy: PROXY v1/v2 headers parsed exactly, built headers parse back. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "proxy.h"
#include "unit.h"

static int parse_str(const char *s, struct proxy_info *pi)
{
	return proxy_parse((const uint8_t *)s, strlen(s), pi);
}

static void test_v1(void)
{
	struct proxy_info pi;
	const char *h = "PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\nEHLO x\r\n";
	struct sockaddr_in *in = (struct sockaddr_in *)&pi.src;
	size_t i;

	CHECK_EQ(parse_str(h, &pi), 43);
	CHECK_EQ(pi.local, 0);
	CHECK_EQ(in->sin_family, AF_INET);
	CHECK_EQ(ntohs(in->sin_port), 40000);
	CHECK_EQ(ntohl(in->sin_addr.s_addr), 0xcb007109u);
	/* Every proper prefix asks for more. */
	for (i = 0; i < 43; i++)
		CHECK_EQ(proxy_parse((const uint8_t *)h, i, &pi), 0);
	CHECK(parse_str("PROXY TCP6 2001:db8::1 ::1 1 2\r\n", &pi) > 0);
	CHECK_EQ(pi.src.ss_family, AF_INET6);
	CHECK(parse_str("PROXY UNKNOWN\r\n", &pi) > 0);
	CHECK_EQ(pi.local, 1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 ::1 ::1 1 2\r\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", &pi), -1);
	CHECK_EQ(parse_str("EHLO x\r\n", &pi), -1);
	CHECK_EQ(parse_str("PROXY TCP4 1.2.3.4 1.2.3.4 1 2222222222222222222222222222222222222"
	    "222222222222222222222222222222222222222222222222222222222222222222222222222", &pi), -1);
}

static void test_v2_roundtrip(void)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(4242) };
	struct sockaddr_in d4 = { .sin_family = AF_INET, .sin_port = htons(25) };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(7) };
	struct sockaddr_in6 d6 = { .sin6_family = AF_INET6, .sin6_port = htons(587) };
	struct proxy_info pi;
	uint8_t out[256];
	size_t n, i;

	inet_pton(AF_INET, "198.51.100.23", &s4.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &d4.sin_addr);
	inet_pton(AF_INET6, "2001:db8::7", &s6.sin6_addr);
	inet_pton(AF_INET6, "::1", &d6.sin6_addr);
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, NULL, out, sizeof(out));
	CHECK_EQ(n, 28);
	CHECK_EQ(proxy_parse(out, n, &pi), 28);
	CHECK(memcmp(&((struct sockaddr_in *)&pi.src)->sin_addr, &s4.sin_addr, 4) == 0);
	CHECK_EQ(((struct sockaddr_in *)&pi.src)->sin_port, s4.sin_port);
	for (i = 0; i < n; i++)
		CHECK_EQ(proxy_parse(out, i, &pi), 0);
	n = proxy_build(2, (struct sockaddr *)&s6, (struct sockaddr *)&d6, NULL, out, sizeof(out));
	CHECK_EQ(n, 52);
	CHECK_EQ(proxy_parse(out, n, &pi), 52);
	CHECK_EQ(pi.src.ss_family, AF_INET6);
	n = proxy_build(1, (struct sockaddr *)&s6, (struct sockaddr *)&d6, NULL, out, sizeof(out));
	CHECK(n > 0);
	CHECK_EQ(proxy_parse(out, n, &pi), (int)n);
	CHECK_EQ(ntohs(((struct sockaddr_in6 *)&pi.src)->sin6_port), 7);
	n = proxy_build(1, (struct sockaddr *)&s4, (struct sockaddr *)&d4, NULL, out, sizeof(out));
	CHECK(n == strlen("PROXY TCP4 198.51.100.23 127.0.0.1 4242 25\r\n"));
	/* Bad version nibble, unknown family; a large length only asks for
	 * more bytes (the protocol allows 65535 of them). */
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, NULL, out, sizeof(out));
	out[12] = 0x31;
	CHECK_EQ(proxy_parse(out, n, &pi), -1);
	out[12] = 0x21;
	out[14] = 0xff;
	CHECK_EQ(proxy_parse(out, n, &pi), 0);
	CHECK_EQ(proxy_want(out, n), 16 + 0xff00 + 12);
	out[14] = 0;
	out[13] = 0x31;
	CHECK_EQ(proxy_parse(out, n, &pi), -1);
	out[13] = 0x11;
	out[15] = 4;                                  /* too short for TCP4 */
	CHECK_EQ(proxy_parse(out, 20, &pi), -1);
	out[12] = 0x20;                               /* LOCAL */
	CHECK_EQ(proxy_parse(out, 20, &pi), 20);
	CHECK_EQ(pi.local, 1);
}

/* A v2 header of the largest size, addresses then TLVs (a load balancer's
 * certificates and metadata), from a heap block of exactly its size. */
static void test_v2_large(void)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(4242) };
	struct sockaddr_in d4 = { .sin_family = AF_INET, .sin_port = htons(25) };
	size_t total = PROXY_V2_FIXED + 65535, i;
	uint8_t *h = malloc(total), *copy;
	struct proxy_info pi;
	size_t n;

	CHECK(h != NULL);
	if (h == NULL)
		return;
	inet_pton(AF_INET, "203.0.113.7", &s4.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &d4.sin_addr);
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, NULL, h, total);
	CHECK_EQ(n, 28);
	/* One TLV (type 0xE0, custom) fills the rest. */
	h[28] = 0xe0;
	h[29] = (uint8_t)((total - 31) >> 8);
	h[30] = (uint8_t)(total - 31);
	memset(h + 31, 'x', total - 31);
	h[14] = 0xff;
	h[15] = 0xff;
	CHECK_EQ(proxy_want(h, 1), PROXY_V2_FIXED);
	CHECK_EQ(proxy_want(h, 15), PROXY_V2_FIXED);
	CHECK_EQ(proxy_want(h, 16), total);
	CHECK_EQ(PROXY_MAX, total);
	for (i = 0; i < total; i += 997)
		CHECK_EQ(proxy_parse(h, i, &pi), 0);
	CHECK_EQ(proxy_parse(h, total - 1, &pi), 0);
	copy = malloc(total);
	CHECK(copy != NULL);
	if (copy != NULL) {
		memcpy(copy, h, total);
		CHECK_EQ(proxy_parse(copy, total, &pi), (int)total);
		CHECK_EQ(pi.local, 0);
		CHECK_EQ(pi.src.ss_family, AF_INET);
		CHECK(memcmp(&((struct sockaddr_in *)&pi.src)->sin_addr, &s4.sin_addr, 4) == 0);
		CHECK_EQ(ntohs(((struct sockaddr_in *)&pi.src)->sin_port), 4242);
		free(copy);
	}
	/* Bytes after the header are not the header's. */
	{
		uint8_t *more = malloc(total + 5);
		CHECK(more != NULL);
		if (more != NULL) {
			memcpy(more, h, total);
			memcpy(more + total, "\x16\x03\x01..", 5);
			CHECK_EQ(proxy_parse(more, total + 5, &pi), (int)total);
			free(more);
		}
	}
	/* Over 1024 bytes, which once was refused: 2000 bytes of TLVs. */
	h[14] = (uint8_t)((12 + 2000) >> 8);
	h[15] = (uint8_t)(12 + 2000);
	h[29] = (uint8_t)((2000 - 3) >> 8);
	h[30] = (uint8_t)(2000 - 3);
	CHECK_EQ(proxy_want(h, 16), 16 + 12 + 2000);
	CHECK_EQ(proxy_parse(h, 16 + 12 + 2000, &pi), 16 + 12 + 2000);
	/* LOCAL with a large TLV area: the real peer stays. */
	h[12] = 0x20;
	CHECK_EQ(proxy_parse(h, 16 + 12 + 2000, &pi), 16 + 12 + 2000);
	CHECK_EQ(pi.local, 1);
	/* Not a header at all. */
	CHECK_EQ(proxy_want((const uint8_t *)"EHLO x\r\n", 8), 0);
	CHECK_EQ(proxy_want((const uint8_t *)"PROXY TCP4", 10), PROXY_V1_MAX);
	free(h);
}

/* The value of TLV t in the list p..p+len as a string (NULL: none). */
static const char *tlv_text(const uint8_t *p, size_t len, uint8_t t, char *buf, size_t cap)
{
	const uint8_t *v;
	size_t n;

	if (proxy_tlv_find(p, len, t, &v, &n) != 1 || n >= cap)
		return NULL;
	memcpy(buf, v, n);
	buf[n] = '\0';
	return buf;
}

/* The TLS TLVs a v2 header carries parse back: AUTHORITY, then SSL with
 * its client bits, verify field and version and cipher sub-TLVs. */
static void test_v2_tls(void)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(4242) };
	struct sockaddr_in d4 = { .sin_family = AF_INET, .sin_port = htons(465) };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(7) };
	struct proxy_tls tls = { "TLSv1.3", "TLS_AES_128_GCM_SHA256", "mx.example.org",
		false, false, false };
	struct proxy_info pi;
	uint8_t out[512];
	const uint8_t *ssl, *tlvs;
	size_t n, off, sslen, i;
	char buf[256];

	inet_pton(AF_INET, "198.51.100.23", &s4.sin_addr);
	inet_pton(AF_INET, "127.0.0.1", &d4.sin_addr);
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out, sizeof(out));
	CHECK_EQ(n, 28 + 3 + 14 + 3 + 5 + 3 + 7 + 3 + 22);
	CHECK_EQ(proxy_parse(out, n, &pi), (int)n);
	CHECK_EQ(pi.local, 0);
	CHECK_EQ(ntohs(((struct sockaddr_in *)&pi.src)->sin_port), 4242);
	off = proxy_tlv_offset(out, n);
	CHECK_EQ(off, 28);
	tlvs = out + off;
	CHECK_STR(tlv_text(tlvs, n - off, PP2_TYPE_AUTHORITY, buf, sizeof(buf)), "mx.example.org");
	CHECK_EQ(tlvs[0], PP2_TYPE_AUTHORITY);   /* haproxy's order: AUTHORITY first */
	CHECK_EQ(proxy_tlv_find(tlvs, n - off, PP2_TYPE_SSL, &ssl, &sslen), 1);
	CHECK(sslen >= 5);
	CHECK_EQ(ssl[0], PP2_CLIENT_SSL);
	/* No client certificate: verify is not 0. */
	CHECK(ssl[1] | ssl[2] | ssl[3] | ssl[4]);
	CHECK_STR(tlv_text(ssl + 5, sslen - 5, PP2_SUBTYPE_SSL_VERSION, buf, sizeof(buf)), "TLSv1.3");
	CHECK_STR(tlv_text(ssl + 5, sslen - 5, PP2_SUBTYPE_SSL_CIPHER, buf, sizeof(buf)),
	    "TLS_AES_128_GCM_SHA256");
	CHECK_EQ(proxy_tlv_find(tlvs, n - off, 0x30, &ssl, &sslen), 0);

	/* A verified client certificate: both bits, verify 0; no SNI: no
	 * AUTHORITY. IPv6 addresses. */
	tls.sni = NULL;
	tls.cert_conn = tls.cert_sess = tls.verified = true;
	tls.version = "TLSv1.2";
	tls.cipher = "ECDHE-RSA-AES128-GCM-SHA256";
	inet_pton(AF_INET6, "2001:db8::7", &s6.sin6_addr);
	{
		struct sockaddr_in6 d6 = { .sin6_family = AF_INET6, .sin6_port = htons(465) };
		inet_pton(AF_INET6, "::1", &d6.sin6_addr);
		n = proxy_build(2, (struct sockaddr *)&s6, (struct sockaddr *)&d6, &tls, out,
		    sizeof(out));
	}
	CHECK_EQ(proxy_parse(out, n, &pi), (int)n);
	off = proxy_tlv_offset(out, n);
	CHECK_EQ(off, 52);
	tlvs = out + off;
	CHECK_EQ(proxy_tlv_find(tlvs, n - off, PP2_TYPE_AUTHORITY, &ssl, &sslen), 0);
	CHECK_EQ(proxy_tlv_find(tlvs, n - off, PP2_TYPE_SSL, &ssl, &sslen), 1);
	CHECK_EQ(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS);
	CHECK_EQ(ssl[1] | ssl[2] | ssl[3] | ssl[4], 0);
	CHECK_STR(tlv_text(ssl + 5, sslen - 5, PP2_SUBTYPE_SSL_CIPHER, buf, sizeof(buf)),
	    "ECDHE-RSA-AES128-GCM-SHA256");
	/* An SNI that is no host name (spaces, line ends, quotes, 8-bit
	 * bytes, over 253 bytes) is not passed on; a host name is. */
	{
		static const char *const bad[] = { "x y", "mx.example\r\nconn=1", "\"q\"",
			"b\xc3\xbc" "cher.test", "a\x01b", "" };
		char longname[300];

		for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			tls.sni = bad[i];
			n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out,
			    sizeof(out));
			CHECK(n > 28);
			CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_AUTHORITY, &ssl, &sslen), 0);
			CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_SSL, &ssl, &sslen), 1);
		}
		memset(longname, 'a', 254);
		longname[254] = '\0';
		tls.sni = longname;
		n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out,
		    sizeof(out));
		CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_AUTHORITY, &ssl, &sslen), 0);
		longname[253] = '\0';
		n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out,
		    sizeof(out));
		CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_AUTHORITY, &ssl, &sslen), 1);
		CHECK_EQ(sslen, 253);
		tls.sni = "_25._tcp.Mx-1.example.org";
		n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out,
		    sizeof(out));
		CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_AUTHORITY, &ssl, &sslen), 1);
		tls.sni = NULL;
	}
	/* A resumed session: its certificate is the session's, not this
	 * handshake's. */
	tls.cert_conn = false;
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out, sizeof(out));
	CHECK_EQ(proxy_tlv_find(out + 28, n - 28, PP2_TYPE_SSL, &ssl, &sslen), 1);
	CHECK_EQ(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS);

	/* Too small a buffer: nothing, never a cut header. */
	for (i = 52; i < n; i++)
		CHECK_EQ(proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out, i), 0);
	/* v1 has no TLVs: the same line as without. */
	CHECK_EQ(proxy_build(1, (struct sockaddr *)&s4, (struct sockaddr *)&d4, &tls, out,
	    sizeof(out)), proxy_build(1, (struct sockaddr *)&s4, (struct sockaddr *)&d4, NULL,
	    out, sizeof(out)));
	/* Malformed lists are said to be. */
	CHECK_EQ(proxy_tlv_find((const uint8_t *)"\x02\x00\x05" "ab", 5, 2, &ssl, &sslen), -1);
	CHECK_EQ(proxy_tlv_find((const uint8_t *)"\x02\x00", 2, 2, &ssl, &sslen), -1);
	CHECK_EQ(proxy_tlv_find((const uint8_t *)"\x02\x00\x01" "x\x04", 5, 2, &ssl, &sslen), -1);
	CHECK_EQ(proxy_tlv_find((const uint8_t *)"\x04\x00\x00", 3, 2, &ssl, &sslen), 0);
}

/* A client of one family on a listener of the other: both go out as
 * IPv6, the IPv4 one mapped, never as UNKNOWN or LOCAL. */
static void test_mixed_families(void)
{
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons(4242) };
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(587) };
	struct sockaddr_in6 want;
	struct proxy_info pi;
	uint8_t out[256];
	size_t n;

	inet_pton(AF_INET, "203.0.113.9", &a4.sin_addr);
	inet_pton(AF_INET6, "2001:db8::9", &a6.sin6_addr);
	n = proxy_build(1, (struct sockaddr *)&a4, (struct sockaddr *)&a6, NULL, out, sizeof(out));
	CHECK(n > 0 && n < sizeof(out));
	out[n] = '\0';
	CHECK_STR((char *)out, "PROXY TCP6 ::ffff:203.0.113.9 2001:db8::9 4242 587\r\n");
	n = proxy_build(1, (struct sockaddr *)&a6, (struct sockaddr *)&a4, NULL, out, sizeof(out));
	CHECK(n > 0 && n < sizeof(out));
	out[n] = '\0';
	CHECK_STR((char *)out, "PROXY TCP6 2001:db8::9 ::ffff:203.0.113.9 587 4242\r\n");
	n = proxy_build(2, (struct sockaddr *)&a6, (struct sockaddr *)&a4, NULL, out, sizeof(out));
	CHECK_EQ(n, 52);
	CHECK_EQ(out[12], 0x21);
	CHECK_EQ(out[13], 0x21);
	CHECK_EQ(proxy_parse(out, n, &pi), 52);
	CHECK_EQ(pi.local, 0);
	CHECK_EQ(pi.src.ss_family, AF_INET6);
	CHECK(memcmp(&((struct sockaddr_in6 *)&pi.src)->sin6_addr, &a6.sin6_addr, 16) == 0);
	inet_pton(AF_INET6, "::ffff:203.0.113.9", &want.sin6_addr);
	CHECK(memcmp(&((struct sockaddr_in6 *)&pi.dst)->sin6_addr, &want.sin6_addr, 16) == 0);
	n = proxy_build(2, (struct sockaddr *)&a4, (struct sockaddr *)&a6, NULL, out, sizeof(out));
	CHECK_EQ(proxy_parse(out, n, &pi), 52);
	CHECK(memcmp(&((struct sockaddr_in6 *)&pi.src)->sin6_addr, &want.sin6_addr, 16) == 0);
	CHECK_EQ(ntohs(((struct sockaddr_in6 *)&pi.src)->sin6_port), 4242);
	/* An IPv4-mapped client on an IPv4 listener goes out as IPv4. */
	inet_pton(AF_INET6, "::ffff:198.51.100.1", &a6.sin6_addr);
	n = proxy_build(1, (struct sockaddr *)&a6, (struct sockaddr *)&a4, NULL, out, sizeof(out));
	CHECK(n > 0 && n < sizeof(out));
	out[n] = '\0';
	CHECK_STR((char *)out, "PROXY TCP4 198.51.100.1 203.0.113.9 587 4242\r\n");
	n = proxy_build(2, (struct sockaddr *)&a4, (struct sockaddr *)&a6, NULL, out, sizeof(out));
	CHECK_EQ(n, 28);
	CHECK_EQ(out[13], 0x11);
}

int main(void)
{
	test_v1();
	test_v2_roundtrip();
	test_mixed_families();
	test_v2_large();
	test_v2_tls();
	return unit_done("test_proxy");
}
