/*
 * dns_int: what dns.c takes from dns_setup.c.
 */
#ifndef MAILSHIM_DNS_INT_H
#define MAILSHIM_DNS_INT_H

#include <stddef.h>

#include "config.h"

struct ub_ctx;

/* Configure ub for cfg: validating with the trust anchor file ta, or
 * without validation when ta is NULL. 0, or -1 with err filled in. */
int dns_setup(struct ub_ctx *ub, const struct config *cfg, const char *ta,
    char *err, size_t errlen);

#endif
