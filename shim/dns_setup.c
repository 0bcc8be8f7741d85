/*
 * dns_setup: a worker's libunbound context configured from the
 * configuration: the trust anchor, the resolvers, and no answer the
 * library would make up itself; threaded, for the reason at the top of
 * dns.c (dns_int.h).
 */
#include "dns_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unbound.h>

/*
 * Every zone libunbound 1.17 answers itself by default (services/
 * localzone.c, local_zone_enter_defaults, and util/as112.c). Each is made
 * "transparent", which keeps the default out and sends the query on: DANE
 * test setups live under test., and a site may serve any of these names
 * to its own resolver. "nodefault" would be the obvious word but the
 * library ignores it for some zones. 172.16-31 and 100.64-127 are ranges,
 * below.
 */
static const char *const local_defaults[] = {
	"localhost.", "127.in-addr.arpa.",
	"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
	"home.arpa.", "onion.", "test.", "invalid.",
	"10.in-addr.arpa.", "168.192.in-addr.arpa.", "0.in-addr.arpa.",
	"254.169.in-addr.arpa.", "2.0.192.in-addr.arpa.",
	"100.51.198.in-addr.arpa.", "113.0.203.in-addr.arpa.",
	"255.255.255.255.in-addr.arpa.",
	"0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
	"d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.",
	"b.e.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.",
};
static const struct { unsigned second, lo, hi; } local_ranges[] = {
	{ 172, 16, 31 },   /* N.172.in-addr.arpa. */
	{ 100, 64, 127 },  /* N.100.in-addr.arpa. */
};

static int set_opt(struct ub_ctx *ub, const char *opt, const char *val,
    char *err, size_t errlen)
{
	int rc = ub_ctx_set_option(ub, opt, val);

	if (rc)
		snprintf(err, errlen, "libunbound option %s %s: %s", opt, val,
		    ub_strerror(rc));
	return rc;
}

static int transparent(struct ub_ctx *ub, const char *zone, char *err,
    size_t errlen)
{
	char v[128];

	snprintf(v, sizeof v, "%s transparent", zone);
	return set_opt(ub, "local-zone:", v, err, errlen);
}

static int no_local_zones(struct ub_ctx *ub, char *err, size_t errlen)
{
	size_t i;
	unsigned n;
	char zone[40];

	for (i = 0; i < sizeof local_defaults / sizeof *local_defaults; i++)
		if (transparent(ub, local_defaults[i], err, errlen))
			return -1;
	for (i = 0; i < sizeof local_ranges / sizeof *local_ranges; i++)
		for (n = local_ranges[i].lo; n <= local_ranges[i].hi; n++) {
			snprintf(zone, sizeof zone, "%u.%u.in-addr.arpa.", n,
			    local_ranges[i].second);
			if (transparent(ub, zone, err, errlen))
				return -1;
		}
	/* A later library may block more AS112 zones: this drops them all. */
	return set_opt(ub, "unblock-lan-zones:", "yes", err, errlen) ? -1 : 0;
}

int dns_setup(struct ub_ctx *ub, const struct config *cfg, const char *ta,
    char *err, size_t errlen)
{
	FILE *f;
	size_t i;
	int rc;

	/* Resolvers on loopback (a local unbound, a test server) are fine. */
	if (set_opt(ub, "do-not-query-localhost:", "no", err, errlen) ||
	    /* A few forwarders only: one that missed a query once (restarting)
	     * must not be shunned for minutes. */
	    set_opt(ub, "infra-keep-probing:", "yes", err, errlen) ||
	    no_local_zones(ub, err, errlen))
		return -1;

	/* No anchor wanted: a plain resolver (upstreams under no DANE
	 * policy), which also knows /etc/hosts, as getaddrinfo() would. */
	if (ta == NULL) {
		if ((rc = ub_ctx_hosts(ub, NULL))) {
			snprintf(err, errlen, "/etc/hosts: %s", ub_strerror(rc));
			return -1;
		}
		goto resolvers;
	}
	/* The context reads no unbound.conf, so this is the only anchor.
	 * libunbound reads the file at finalisation; open it here for a
	 * message that names the file. */
	if (!*ta) {
		snprintf(err, errlen, "no dnssec_trust_anchor");
		return -1;
	}
	if (!(f = fopen(ta, "r"))) {
		snprintf(err, errlen, "dnssec_trust_anchor %s: %s", ta,
		    strerror(errno));
		return -1;
	}
	fclose(f);
	if ((rc = ub_ctx_add_ta_file(ub, ta))) {
		snprintf(err, errlen, "dnssec_trust_anchor %s: %s", ta,
		    ub_strerror(rc));
		return -1;
	}

resolvers:
	/* Forwarders, not stubs: every name goes to them, recursively. Their
	 * AD bit is ignored; the validator checks every signature itself. */
	for (i = 0; i < cfg->ndns_resolvers; i++)
		if ((rc = ub_ctx_set_fwd(ub, cfg->dns_resolvers[i]))) {
			snprintf(err, errlen, "dns_resolver %s: %s",
			    cfg->dns_resolvers[i], ub_strerror(rc));
			return -1;
		}
	if (cfg->ndns_resolvers == 0 && (rc = ub_ctx_resolvconf(ub, NULL))) {
		snprintf(err, errlen, "/etc/resolv.conf: %s", ub_strerror(rc));
		return -1;
	}

	if ((rc = ub_ctx_async(ub, 1))) {
		snprintf(err, errlen, "libunbound threads: %s", ub_strerror(rc));
		return -1;
	}
	/* Finalise now (trust anchor parsed, options applied) so a bad file
	 * fails at start, not at the first lookup: removing a local zone
	 * that does not exist finalises and changes nothing. */
	if ((rc = ub_ctx_zone_remove(ub, "mailshim-finalise.invalid."))) {
		snprintf(err, errlen, "dnssec_trust_anchor %s: %s", ta ? ta : "-",
		    ub_strerror(rc));
		return -1;
	}
	return 0;
}
