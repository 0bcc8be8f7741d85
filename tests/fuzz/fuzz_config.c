/* libFuzzer: any bytes as one configuration file, parsed and checked. */
#include <stdint.h>
#include <stdio.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *err = fopen("/dev/null", "w");
	struct config *cfg = config_new();

	if (cfg != NULL && err != NULL) {
		config_parse(cfg, "fuzz.conf", (const char *)data, size, err);
		config_finish(cfg, "fuzz", err);
	}
	config_free(cfg);
	if (err != NULL)
		fclose(err);
	return 0;
}
