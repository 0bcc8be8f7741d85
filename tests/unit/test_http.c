/* http: request heads for the metrics listener. */
#include "http.h"
#include "unit.h"

static int parse(const char *s, struct http_req *r)
{
	return http_parse(s, strlen(s), r);
}

static void test_good(void)
{
	struct http_req r;
	const char *h = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";

	CHECK_EQ(parse(h, &r), (int)strlen(h));
	CHECK_EQ(r.method, HTTP_GET);
	CHECK_EQ(r.path_len, 8);
	CHECK(memcmp(r.path, "/metrics", 8) == 0);
	CHECK_EQ(r.minor, 1);
	/* Every proper prefix asks for more. */
	for (size_t i = 0; i < strlen(h); i++)
		CHECK_EQ(http_parse(h, i, &r), HTTP_MORE);
	CHECK_EQ(parse("HEAD /healthz HTTP/1.0\r\n\r\n", &r), 26);
	CHECK_EQ(r.method, HTTP_HEAD);
	CHECK_EQ(r.minor, 0);
	CHECK(parse("POST /metrics HTTP/1.1\r\n\r\n", &r) > 0 && r.method == HTTP_OTHER);
	/* Bytes after the head (a pipelined request) are not consumed. */
	CHECK_EQ(parse("GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", &r), 18);
}

static void test_bad(void)
{
	static const char *const bad[] = {
		"GET /metrics\r\n\r\n",
		"GET  /metrics HTTP/1.1\r\n\r\n",
		"GET metrics HTTP/1.1\r\n\r\n",
		"GET /metrics HTTP/2.0\r\n\r\n",
		"GET /metrics HTTP/1.1 \r\n\r\n",
		"GET /metrics HTTP/1.1\n\n",
		"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",
		"GET /metrics HTTP/1.1\r\n: x\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: a\rb\r\n\r\n",
		"GET /met\x01rics HTTP/1.1\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nX: \x7f\r\n\r\n",
		"G(T /metrics HTTP/1.1\r\n\r\n",
		"\r\n\r\n",
	};
	struct http_req r;
	char big[HTTP_HEAD_MAX + 10];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int v = parse(bad[i], &r);
		if (v != HTTP_BAD)
			fprintf(stderr, "accepted: %s\n", bad[i]);
		CHECK_EQ(v, HTTP_BAD);
	}
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /", 5);
	CHECK_EQ(http_parse(big, sizeof(big), &r), HTTP_TOO_LONG);
	CHECK_EQ(http_parse(big, HTTP_HEAD_MAX - 1, &r), HTTP_MORE);
}

int main(void)
{
	test_good();
	test_bad();
	return unit_done("test_http");
}
