/* libFuzzer: PROXY v1/v2 header parsing; a parsed header must build back
 * (with TLS TLVs made of the input's bytes, which must parse back equal;
 * an SNI that is no host name is left out),
 * and proxy_want() must never promise less than the header needs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

/* A string of at most cap - 1 bytes of the input, from its byte at, up to
 * the first NUL. */
static const char *take(const uint8_t *data, size_t size, size_t at, char *buf, size_t cap)
{
	size_t n = 0;

	while (at + n < size && n + 1 < cap && data[at + n] != 0)
		n++;
	if (at < size)
		memcpy(buf, data + at, n);
	buf[at < size ? n : 0] = '\0';
	return buf;
}

static int same_tlv(const uint8_t *p, size_t len, uint8_t t, const char *want)
{
	const uint8_t *v;
	size_t n;
	int r = proxy_tlv_find(p, len, t, &v, &n);

	if (*want == '\0')
		return r == 0;
	return r == 1 && n == strlen(want) && memcmp(v, want, n) == 0;
}

/* The AUTHORITY the header must carry: the SNI when it is a host name
 * (letters, digits, '-', '_', dots, at most 253), else none. */
static const char *authority(const char *sni)
{
	size_t n = strlen(sni);

	if (n > 253)
		return "";
	for (size_t i = 0; i < n; i++) {
		char c = sni[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
			return "";
	}
	return sni;
}

static void tls_roundtrip(const struct proxy_info *pi, const uint8_t *data, size_t size)
{
	static uint8_t out[PROXY_MAX];
	char sni[256], ver[32], cipher[64];
	uint8_t bits = size ? data[size - 1] : 0;
	struct proxy_tls tls = { take(data, size, 0, ver, sizeof(ver)),
		take(data, size, size / 3, cipher, sizeof(cipher)),
		take(data, size, size / 2, sni, sizeof(sni)), bits & 1, (bits >> 1) & 1,
		(bits >> 2) & 1 };
	struct proxy_info back;
	const uint8_t *ssl;
	size_t m, off, sslen;

	m = proxy_build(2, (const struct sockaddr *)&pi->src, (const struct sockaddr *)&pi->dst,
	    &tls, out, sizeof(out));
	if (m == 0 || proxy_parse(out, m, &back) != (int)m || back.local)
		abort();
	off = proxy_tlv_offset(out, m);
	if (!same_tlv(out + off, m - off, PP2_TYPE_AUTHORITY, authority(sni)) ||
	    proxy_tlv_find(out + off, m - off, PP2_TYPE_SSL, &ssl, &sslen) != 1 || sslen < 5 ||
	    !(ssl[0] & PP2_CLIENT_SSL) ||
	    !!(ssl[0] & PP2_CLIENT_CERT_CONN) != tls.cert_conn ||
	    (ssl[1] | ssl[2] | ssl[3] | ssl[4]) != !(tls.verified && (tls.cert_conn ||
	    tls.cert_sess)) ||
	    !same_tlv(ssl + 5, sslen - 5, PP2_SUBTYPE_SSL_VERSION, ver) ||
	    !same_tlv(ssl + 5, sslen - 5, PP2_SUBTYPE_SSL_CIPHER, cipher))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t out[PROXY_MAX];
	struct proxy_info pi;
	int n = proxy_parse(data, size, &pi);
	size_t want = size ? proxy_want(data, size) : 0;

	if (n > (int)size || n > PROXY_MAX)
		abort();
	/* A complete header is no longer than what the reader asked for. */
	if (n > 0 && (want == 0 || (size_t)n > want))
		abort();
	/* Not a header by its first bytes: the parser says so too. */
	if (size > 0 && want == 0 && n != -1)
		abort();
	/* A v2 header's size is exact: fewer bytes are "more", not "bad". */
	if (size >= PROXY_V2_FIXED && data[0] == '\r' && want > 0 && size < want && n != 0 &&
	    n != -1)
		abort();
	/* Whatever its TLVs hold, walking them stays inside the header. */
	if (n > 0 && data[0] == '\r') {
		size_t off = proxy_tlv_offset(data, (size_t)n);
		const uint8_t *v;
		size_t vlen;
		if (off > (size_t)n)
			abort();
		if (proxy_tlv_find(data + off, (size_t)n - off, PP2_TYPE_SSL, &v, &vlen) == 1 &&
		    (v < data + off || v + vlen > data + n))
			abort();
	}
	if (n > 0 && !pi.local) {
		size_t m = proxy_build(2, (struct sockaddr *)&pi.src,
		    (struct sockaddr *)&pi.dst, NULL, out, sizeof(out));
		struct proxy_info back;
		if (m == 0 || proxy_parse(out, m, &back) != (int)m || back.local)
			abort();
		tls_roundtrip(&pi, data, size);
	}
	return 0;
}
