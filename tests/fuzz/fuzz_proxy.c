/* libFuzzer: PROXY v1/v2 header parsing; a parsed header must build back,
 * and proxy_want() must never promise less than the header needs. */
#include <stdint.h>
#include <stdlib.h>

#include "proxy.h"

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
	if (n > 0 && !pi.local) {
		size_t m = proxy_build(2, (struct sockaddr *)&pi.src,
		    (struct sockaddr *)&pi.dst, out, sizeof(out));
		struct proxy_info back;
		if (m == 0 || proxy_parse(out, m, &back) != (int)m || back.local)
			abort();
	}
	return 0;
}
