/* libFuzzer: HTTP request heads; a verdict never points outside the input
 * and does not depend on bytes after the head. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct http_req r, r2;
	int n = http_parse((const char *)data, size, &r);

	if (n > (int)size || n > HTTP_HEAD_MAX)
		abort();
	if (n > 0) {
		if (r.path < (const char *)data || r.path + r.path_len > (const char *)data + n)
			abort();
		if (http_parse((const char *)data, (size_t)n, &r2) != n || r2.path_len != r.path_len)
			abort();
	}
	return 0;
}
