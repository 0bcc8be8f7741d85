/* libFuzzer: PROXY v1/v2 header parsing; a parsed header must build back. */
#include <stdint.h>
#include <stdlib.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_info pi;
	uint8_t out[PROXY_MAX];
	int n = proxy_parse(data, size, &pi);

	if (n > (int)size || n > PROXY_MAX)
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
