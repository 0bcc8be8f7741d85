/*
 * config_keys: the one table of configuration keys. A key's name, type,
 * section, default and bounds are spelled here and nowhere else; the
 * parser (config.c), the setters (config_value.c, config_addr.c) and the
 * checks (config_check.c) all read it.
 */
#include "config_int.h"

#include <string.h>

#define DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"

/* Word lists are indexed by the enum value they stand for. */
static const char *const w_mode[] = { "plain", "starttls", "implicit", NULL };
static const char *const w_verify[] = { "encrypt", "verify", "dane",
	"dane-only", NULL };
static const char *const w_proxy[] = { "no", "v1", "v2", NULL };
static const char *const w_log[] = { "stderr", "syslog", NULL };
static const char *const w_level[] = { "error", "warn", "info", "debug", NULL };
static const char *const w_version[] = { "TLSv1.2", "TLSv1.3", NULL };
static const char *const w_bool[] = { "no", "yes", NULL };

_Static_assert(MODE_IMPLICIT == 2 && VERIFY_DANE_ONLY == 3 && PROXY_V2 == 2 &&
    LOG_SYSLOG == 1 && LEVEL_DEBUG == 3, "word lists follow the enums");
_Static_assert(sizeof(enum hop_mode) == sizeof(int) &&
    sizeof(enum verify_level) == sizeof(int) && sizeof(enum proxy_ver) ==
    sizeof(int) && sizeof(enum log_dest) == sizeof(int) &&
    sizeof(enum log_level) == sizeof(int), "enum fields are stored as int");
_Static_assert(sizeof(unsigned) == sizeof(uint32_t), "uint fields are 32-bit");

#define KEY(n, t) .name = n, .type = t
#define G(f) .scope = SC_GLOBAL, .off = offsetof(struct config, f)
#define S(f) .scope = SC_SERVICE, .off = offsetof(struct service, f)
#define DAY_MS 86400000u

const struct key config_keys[K_COUNT] = {
	[K_WORKERS] = { KEY("workers", T_UINT), G(workers), .def = "auto",
	    .min = 1, .max = 64, .flags = F_AUTO },
	[K_USER] = { KEY("user", T_STR), G(user) },
	[K_HELO_NAME] = { KEY("helo_name", T_HOST), G(helo_name) },
	[K_LOG] = { KEY("log", T_ENUM), G(log), .def = "stderr", .words = w_log },
	[K_LOG_LEVEL] = { KEY("log_level", T_ENUM), G(log_level),
	    .def = "info", .words = w_level },
	[K_MAX_CONNECTIONS] = { KEY("max_connections", T_UINT),
	    G(max_connections), .def = "10000", .min = 1, .max = 1000000 },
	[K_TLS_MIN_VERSION] = { KEY("tls_min_version", T_VERSION),
	    G(tls_min_version), .def = "TLSv1.2", .words = w_version },
	[K_METRICS] = { KEY("metrics", T_METRICS), G(metrics) },
	[K_SHUTDOWN_GRACE] = { KEY("shutdown_grace", T_DUR),
	    G(shutdown_grace_ms), .def = "30s", .min = 1, .max = DAY_MS },
	[K_DNS_RESOLVER] = { KEY("dns_resolver", T_RESOLVER), G(dns_resolvers),
	    .flags = F_REPEAT },
	[K_DNSSEC_TRUST_ANCHOR] = { KEY("dnssec_trust_anchor", T_STR),
	    G(dnssec_trust_anchor), .def = "/usr/share/dns/root.key" },
	[K_TIMEOUT_DNS] = { KEY("timeout_dns", T_DUR), G(timeout_dns_ms),
	    .def = "10s", .min = 1, .max = DAY_MS },
	[K_TLS_TICKET_KEYS] = { KEY("tls_ticket_keys", T_STR), G(tls_ticket_keys) },

	[K_LISTEN] = { KEY("listen", T_LISTEN), S(listen),
	    .flags = F_REPEAT | F_REQUIRED },
	[K_LISTEN_TLS] = { KEY("listen_tls", T_ENUM), S(listen_tls),
	    .def = "plain", .words = w_mode },
	[K_LISTEN_CERT] = { KEY("listen_cert", T_CERT), S(certs),
	    .flags = F_REPEAT },
	[K_LISTEN_KEY] = { KEY("listen_key", T_KEY), S(certs),
	    .flags = F_REPEAT },
	[K_LISTEN_PLAIN_FROM] = { KEY("listen_plain_from", T_CIDRS),
	    S(plain_from), .flags = F_REPEAT },
	[K_PROXY_FROM] = { KEY("proxy_from", T_CIDRS), S(proxy_from),
	    .flags = F_REPEAT },
	[K_LISTEN_CLIENT_CA] = { KEY("listen_client_ca", T_STR),
	    S(listen_client_ca) },
	[K_LISTEN_MIN_VERSION] = { KEY("listen_min_version", T_VERSION),
	    S(listen_min_version), .words = w_version },
	[K_LISTEN_CIPHERS] = { KEY("listen_ciphers", T_STR), S(listen_ciphers) },
	[K_PROXY_PROTOCOL] = { KEY("proxy_protocol", T_BOOL),
	    S(proxy_protocol), .def = "no", .words = w_bool },

	[K_UPSTREAM] = { KEY("upstream", T_UPSTREAM), S(upstream),
	    .flags = F_REQUIRED },
	[K_UPSTREAM_TLS] = { KEY("upstream_tls", T_ENUM), S(upstream_tls),
	    .def = "plain", .words = w_mode },
	[K_UPSTREAM_VERIFY] = { KEY("upstream_verify", T_ENUM),
	    S(upstream_verify), .def = "verify", .words = w_verify },
	[K_UPSTREAM_NAME] = { KEY("upstream_name", T_HOST), S(upstream_name) },
	[K_UPSTREAM_CA] = { KEY("upstream_ca", T_STR), S(upstream_ca),
	    .def = DEFAULT_CA },
	[K_UPSTREAM_PIN] = { KEY("upstream_pin", T_PIN), S(pins),
	    .flags = F_REPEAT },
	[K_UPSTREAM_CERT] = { KEY("upstream_cert", T_STR), S(upstream_cert) },
	[K_UPSTREAM_KEY] = { KEY("upstream_key", T_STR), S(upstream_key) },
	[K_UPSTREAM_MIN_VERSION] = { KEY("upstream_min_version", T_VERSION),
	    S(upstream_min_version), .words = w_version },
	[K_UPSTREAM_CIPHERS] = { KEY("upstream_ciphers", T_STR),
	    S(upstream_ciphers) },
	[K_UPSTREAM_PROXY_PROTOCOL] = { KEY("upstream_proxy_protocol", T_ENUM),
	    S(upstream_proxy_protocol), .def = "no", .words = w_proxy },
	[K_UPSTREAM_XCLIENT] = { KEY("upstream_xclient", T_BOOL),
	    S(upstream_xclient), .def = "no", .words = w_bool },

	[K_UPSTREAM_PORT] = { KEY("upstream_port", T_UINT), S(mx_port),
	    .def = "25", .min = 1, .max = 65535 },
	[K_RELAY_FROM] = { KEY("relay_from", T_CIDRS), S(relay_from),
	    .flags = F_REPEAT },

	[K_TIMEOUT_CONNECT] = { KEY("timeout_connect", T_DUR),
	    S(timeout_connect_ms), .def = "10s", .min = 1, .max = DAY_MS },
	[K_TIMEOUT_HANDSHAKE] = { KEY("timeout_handshake", T_DUR),
	    S(timeout_handshake_ms), .def = "30s", .min = 1, .max = DAY_MS },
	[K_TIMEOUT_IDLE] = { KEY("timeout_idle", T_DUR),
	    S(timeout_idle_ms), .def = "300s", .min = 1, .max = DAY_MS },
	[K_TIMEOUT_REPLY] = { KEY("timeout_reply", T_DUR),
	    S(timeout_reply_ms), .def = "10m", .min = 1, .max = DAY_MS },
};

int cf_find_key(const char *s, size_t n)
{
	for (int k = 0; k < K_COUNT; k++)
		if (strlen(config_keys[k].name) == n && memcmp(config_keys[k].name, s, n) == 0)
			return k;
	return -1;
}

const char *config_mode_name(enum hop_mode m)
{
	return (unsigned)m <= MODE_IMPLICIT ? w_mode[m] : "?";
}

const char *config_verify_name(enum verify_level v)
{
	return (unsigned)v <= VERIFY_DANE_ONLY ? w_verify[v] : "?";
}
