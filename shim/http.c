/* http: one request head (see http.h). */
#include "http.h"

#include <string.h>

/* RFC 9110 tchar, for methods and header names. */
static int tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	    (c >= 'A' && c <= 'Z') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The length of the head through CRLF CRLF, or 0. Bare LF is refused
 * (HTTP_BAD) rather than guessed at. */
static int head_end(const char *b, size_t len, size_t *end)
{
	for (size_t i = 0; i < len; i++) {
		if (b[i] == '\n' && (i == 0 || b[i - 1] != '\r'))
			return HTTP_BAD;
		if (b[i] == '\r' && i + 1 < len && b[i + 1] != '\n')
			return HTTP_BAD;
		if (i >= 3 && memcmp(b + i - 3, "\r\n\r\n", 4) == 0) {
			*end = i + 1;
			return 1;
		}
	}
	return HTTP_MORE;
}

static int request_line(const char *b, size_t n, struct http_req *r)
{
	size_t i = 0, m;

	while (i < n && tchar((unsigned char)b[i]))
		i++;
	if (i == 0 || i >= n || b[i] != ' ')
		return HTTP_BAD;
	r->method = i == 3 && memcmp(b, "GET", 3) == 0 ? HTTP_GET :
	    i == 4 && memcmp(b, "HEAD", 4) == 0 ? HTTP_HEAD : HTTP_OTHER;
	m = ++i;
	while (i < n && (unsigned char)b[i] > ' ' && (unsigned char)b[i] < 0x7f)
		i++;
	if (i == m || i >= n || b[i] != ' ' || b[m] != '/')
		return HTTP_BAD;
	r->path = b + m;
	r->path_len = i - m;
	i++;
	if (n - i != 8 || memcmp(b + i, "HTTP/1.", 7) != 0 ||
	    (b[i + 7] != '0' && b[i + 7] != '1'))
		return HTTP_BAD;
	r->minor = b[i + 7] - '0';
	return 0;
}

/* name ":" OWS value: visible bytes, spaces and tabs only. */
static int header(const char *b, size_t n)
{
	size_t i = 0;

	while (i < n && tchar((unsigned char)b[i]))
		i++;
	if (i == 0 || i >= n || b[i] != ':')
		return HTTP_BAD;
	for (i++; i < n; i++) {
		unsigned char c = (unsigned char)b[i];
		if (c != ' ' && c != '\t' && (c < 0x21 || c == 0x7f))
			return HTTP_BAD;
	}
	return 0;
}

int http_parse(const char *buf, size_t len, struct http_req *out)
{
	size_t end = 0, at = 0, lim = len < HTTP_HEAD_MAX ? len : HTTP_HEAD_MAX;
	int r = head_end(buf, lim, &end);

	if (r == HTTP_BAD)
		return HTTP_BAD;
	if (r == HTTP_MORE)
		return len >= HTTP_HEAD_MAX ? HTTP_TOO_LONG : HTTP_MORE;
	for (int line = 0; at + 2 < end; line++) {
		const char *eol = memchr(buf + at, '\r', end - at);
		size_t n = (size_t)(eol - (buf + at));

		r = line == 0 ? request_line(buf + at, n, out) : header(buf + at, n);
		if (r != 0)
			return HTTP_BAD;
		at += n + 2;
	}
	return (int)end;
}
