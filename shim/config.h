/*
 * config: the conf.d/ parser. One table of keys (name, section, type,
 * default, bounds) drives parsing, defaults and error messages. The result
 * is an immutable struct config; nothing here touches sockets, TLS or the
 * event loop, so the parser is unit-tested and fuzzed alone.
 */
#ifndef MAILSHIM_CONFIG_H
#define MAILSHIM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

enum hop_mode { MODE_PLAIN, MODE_STARTTLS, MODE_IMPLICIT };
enum verify_level { VERIFY_ENCRYPT, VERIFY_VERIFY, VERIFY_DANE, VERIFY_DANE_ONLY };
enum proxy_ver { PROXY_NO, PROXY_V1, PROXY_V2 };
enum log_dest { LOG_STDERR, LOG_SYSLOG };
enum log_level { LEVEL_ERROR, LEVEL_WARN, LEVEL_INFO, LEVEL_DEBUG };

/* TLS protocol versions, as on the wire (BoringSSL's TLS1_2_VERSION...). */
#define CONFIG_TLS12 0x0303
#define CONFIG_TLS13 0x0304

struct cidr {
	sa_family_t family;   /* AF_INET or AF_INET6 */
	uint8_t addr[16];     /* network order; 4 bytes used for AF_INET */
	uint8_t bits;         /* prefix length */
};

/* A list of networks, or "any". */
struct cidrs {
	bool any;
	struct cidr *v;
	size_t n;
};

struct sockaddr_text {
	struct sockaddr_storage ss;
	socklen_t len;
	char *text;           /* as written in the file, e.g. "[::1]:2525" */
};

struct certkey {
	char *cert;           /* PEM chain file */
	char *key;            /* PEM key file; same as cert when not given */
	int cert_line;        /* where each was set, in the service's file */
	int key_line;         /* (the cert's line when key was not given) */
};

struct service {
	char *name;
	char *file;           /* where the [section] header stands */
	int line;

	struct sockaddr_text *listen;  /* numeric addresses only */
	size_t nlisten;
	enum hop_mode listen_tls;
	struct certkey *certs;         /* listen_cert/listen_key pairs, in order */
	size_t ncerts;
	struct cidrs plain_from;       /* listen_plain_from */
	char *listen_client_ca;        /* NULL: no client certificates asked */
	int listen_min_version;        /* CONFIG_TLS12 | CONFIG_TLS13 */
	char *listen_ciphers;          /* NULL: library default policy */
	bool proxy_protocol;
	struct cidrs proxy_from;       /* who may send a PROXY header */

	char *upstream;                /* as written: "host:port" */
	char *upstream_host;           /* host part, brackets removed */
	char *upstream_port;           /* port part (upstream_port with mx) */
	bool upstream_mx;              /* upstream = mx: the outbound relay */
	uint32_t mx_port;              /* upstream_port: the MX hosts' port */
	struct cidrs relay_from;       /* with mx: who may relay */
	enum hop_mode upstream_tls;
	enum verify_level upstream_verify;
	char *upstream_name;           /* default: upstream_host */
	char *upstream_ca;
	uint8_t (*pins)[32];           /* SHA-256 of SubjectPublicKeyInfo */
	size_t npins;
	char *upstream_cert;
	char *upstream_key;            /* default: upstream_cert */
	int upstream_min_version;
	char *upstream_ciphers;        /* NULL: library default policy */
	enum proxy_ver upstream_proxy_protocol;
	bool upstream_xclient;

	uint32_t timeout_connect_ms;
	uint32_t timeout_handshake_ms;
	uint32_t timeout_idle_ms;
	uint32_t timeout_reply_ms;     /* an owed upstream reply (RFC 5321 4.5.3.2) */
};

struct config {
	unsigned workers;              /* 0 = auto (one per CPU) */
	char *user;                    /* NULL: keep the current user */
	char *helo_name;               /* NULL: the system host name */
	enum log_dest log;
	enum log_level log_level;
	uint32_t max_connections;
	int tls_min_version;
	char *metrics;                 /* NULL: no metrics listener */
	struct sockaddr_text metrics_addr;
	uint32_t shutdown_grace_ms;    /* SIGTERM: how long sessions may finish */
	char **dns_resolvers;          /* "IP" or "IP@PORT"; none: resolv.conf */
	size_t ndns_resolvers;
	char *dnssec_trust_anchor;     /* DS/DNSKEY file validation starts from */
	uint32_t timeout_dns_ms;       /* one DNS lookup */
	char *tls_ticket_keys;         /* NULL: random keys made at start */

	struct service *services;
	size_t nservices;
};

/*
 * Read every *.conf file of dir in name order. Each problem is printed to
 * err as "FILE:LINE: message" (or "DIR: message" when it has no line); all
 * problems are reported, not only the first. Returns NULL if there was any.
 */
struct config *config_load(const char *dir, FILE *err);

/*
 * Parse one file's text (name is used in messages only) into cfg, which
 * starts from config_new(). Returns the number of errors printed. After the
 * last file, config_finish() applies defaults and cross-key checks.
 */
struct config *config_new(void);
int config_parse(struct config *cfg, const char *name, const char *text,
    size_t len, FILE *err);
int config_finish(struct config *cfg, const char *where, FILE *err);

/* Free everything; NULL is a no-op. */
void config_free(struct config *cfg);

/*
 * Where a key was set, for messages: the file and line of svc's key (NULL
 * svc: a [global] key; index picks one listen_cert/listen_key pair).
 * Returns false when the key took its default; file and line then name
 * the section header.
 */
bool config_key_where(const struct config *cfg, const struct service *svc,
    const char *key, size_t index, const char **file, int *line);

/* Name of a mode / level, as written in the configuration. */
const char *config_mode_name(enum hop_mode m);
const char *config_verify_name(enum verify_level v);

/* Does the address (sockaddr) fall in the list? "any" matches all. */
bool config_cidrs_match(const struct cidrs *list, const struct sockaddr *sa);

/* Does the address fall in the service's listen_plain_from? */
bool config_plain_allowed(const struct service *svc, const struct sockaddr *sa);

/* May the address send a PROXY header to the service (proxy_from)? */
bool config_proxy_trusted(const struct service *svc, const struct sockaddr *sa);

#endif
