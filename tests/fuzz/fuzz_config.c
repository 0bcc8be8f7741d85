/* libFuzzer: any bytes as one configuration file, parsed and checked. */
#include <stdint.h>
#include <stdio.h>

#include "config.h"

/* The keys whose place the TLS file checks ask for. */
static const char *const where_keys[] = {
	"listen_cert", "listen_key", "listen_client_ca", "upstream_ca",
	"upstream_cert", "upstream_key", "upstream", "no_such_key",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *err = fopen("/dev/null", "w");
	struct config *cfg = config_new();
	const char *file;
	int line;

	if (cfg != NULL && err != NULL) {
		config_parse(cfg, "fuzz.conf", (const char *)data, size, err);
		config_finish(cfg, "fuzz", err);
		config_key_where(cfg, NULL, "workers", 0, &file, &line);
		for (size_t i = 0; i < cfg->nservices; i++)
			for (size_t k = 0; k < sizeof where_keys / sizeof where_keys[0]; k++)
				for (size_t j = 0; j < 3; j++)
					if (config_key_where(cfg, &cfg->services[i],
					    where_keys[k], j, &file, &line) && line <= 0)
						__builtin_trap();
	}
	config_free(cfg);
	if (err != NULL)
		fclose(err);
	return 0;
}
