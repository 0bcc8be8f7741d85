/* proxy: PROXY v1/v2 headers parsed exactly, built headers parse back. */
#include <arpa/inet.h>
#include <netinet/in.h>

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
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, out, sizeof(out));
	CHECK_EQ(n, 28);
	CHECK_EQ(proxy_parse(out, n, &pi), 28);
	CHECK(memcmp(&((struct sockaddr_in *)&pi.src)->sin_addr, &s4.sin_addr, 4) == 0);
	CHECK_EQ(((struct sockaddr_in *)&pi.src)->sin_port, s4.sin_port);
	for (i = 0; i < n; i++)
		CHECK_EQ(proxy_parse(out, i, &pi), 0);
	n = proxy_build(2, (struct sockaddr *)&s6, (struct sockaddr *)&d6, out, sizeof(out));
	CHECK_EQ(n, 52);
	CHECK_EQ(proxy_parse(out, n, &pi), 52);
	CHECK_EQ(pi.src.ss_family, AF_INET6);
	n = proxy_build(1, (struct sockaddr *)&s6, (struct sockaddr *)&d6, out, sizeof(out));
	CHECK(n > 0);
	CHECK_EQ(proxy_parse(out, n, &pi), (int)n);
	CHECK_EQ(ntohs(((struct sockaddr_in6 *)&pi.src)->sin6_port), 7);
	n = proxy_build(1, (struct sockaddr *)&s4, (struct sockaddr *)&d4, out, sizeof(out));
	CHECK(n == strlen("PROXY TCP4 198.51.100.23 127.0.0.1 4242 25\r\n"));
	/* Bad version nibble, absurd length, unknown family. */
	n = proxy_build(2, (struct sockaddr *)&s4, (struct sockaddr *)&d4, out, sizeof(out));
	out[12] = 0x31;
	CHECK_EQ(proxy_parse(out, n, &pi), -1);
	out[12] = 0x21;
	out[14] = 0xff;
	CHECK_EQ(proxy_parse(out, n, &pi), -1);
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

int main(void)
{
	test_v1();
	test_v2_roundtrip();
	return unit_done("test_proxy");
}
