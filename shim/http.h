/*
 * http: the request line and headers of one HTTP/1.x request, for the
 * metrics listener (GET /metrics, GET /healthz). Pure: bytes in, verdict
 * out, in the manner of picohttpparser, no allocation. Only what the
 * listener needs is kept (method, path); headers are checked for shape
 * and skipped. Anything odd is an error: the listener answers 400 and
 * closes, it never guesses.
 */
#ifndef MAILSHIM_HTTP_H
#define MAILSHIM_HTTP_H

#include <stddef.h>

/* A request head longer than this is refused (431/400). */
#define HTTP_HEAD_MAX 4096

enum http_method { HTTP_GET, HTTP_HEAD, HTTP_OTHER };

struct http_req {
	enum http_method method;
	const char *path;         /* into the buffer; not NUL-terminated */
	size_t path_len;
	int minor;                /* HTTP/1.minor */
};

#define HTTP_MORE 0
#define HTTP_BAD (-1)
#define HTTP_TOO_LONG (-2)

/*
 * Parse the head at buf[0..len). Returns its length (through the empty
 * line) when complete, HTTP_MORE when it may still complete, HTTP_BAD on
 * a malformed head, HTTP_TOO_LONG past HTTP_HEAD_MAX.
 */
int http_parse(const char *buf, size_t len, struct http_req *out);

#endif
