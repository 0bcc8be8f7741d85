/*
 * config_int.h: what the files of the configuration parser share and
 * nothing outside them sees: the key table's rows (config_keys.c), the
 * record of where each key was set, and the helpers that report an error
 * against a file and line. config.h is the public side.
 */
#ifndef MAILSHIM_CONFIG_INT_H
#define MAILSHIM_CONFIG_INT_H

#include "config.h"

enum scope { SC_NONE, SC_GLOBAL, SC_SERVICE };

enum type {
	T_UINT, T_STR, T_HOST, T_ENUM, T_BOOL, T_VERSION, T_DUR, T_LISTEN,
	T_METRICS, T_UPSTREAM, T_CIDRS, T_PIN, T_CERT, T_KEY, T_RESOLVER,
	T_NTYPES
};

enum kid {
	K_WORKERS, K_USER, K_HELO_NAME, K_LOG, K_LOG_LEVEL, K_MAX_CONNECTIONS,
	K_TLS_MIN_VERSION, K_METRICS, K_SHUTDOWN_GRACE, K_DNS_RESOLVER,
	K_DNSSEC_TRUST_ANCHOR, K_TIMEOUT_DNS, K_TLS_TICKET_KEYS,
	K_LISTEN, K_LISTEN_TLS, K_LISTEN_CERT, K_LISTEN_KEY, K_LISTEN_PLAIN_FROM,
	K_LISTEN_CLIENT_CA, K_LISTEN_MIN_VERSION, K_LISTEN_CIPHERS,
	K_PROXY_PROTOCOL, K_PROXY_FROM,
	K_UPSTREAM, K_UPSTREAM_TLS, K_UPSTREAM_VERIFY, K_UPSTREAM_NAME,
	K_UPSTREAM_CA, K_UPSTREAM_PIN, K_UPSTREAM_CERT, K_UPSTREAM_KEY,
	K_UPSTREAM_MIN_VERSION, K_UPSTREAM_CIPHERS, K_UPSTREAM_PROXY_PROTOCOL,
	K_UPSTREAM_XCLIENT, K_UPSTREAM_PORT, K_RELAY_FROM,
	K_TIMEOUT_CONNECT, K_TIMEOUT_HANDSHAKE, K_TIMEOUT_IDLE, K_TIMEOUT_REPLY,
	K_COUNT
};

#define F_REPEAT   1u   /* may appear more than once in a section */
#define F_REQUIRED 2u
#define F_AUTO     4u   /* "auto" stands for 0 */

struct key {
	const char *name;
	enum type type;
	enum scope scope;
	size_t off;                 /* into struct config or struct service */
	const char *def;            /* applied by config_finish; NULL: none */
	const char *const *words;   /* T_ENUM, T_BOOL, T_VERSION */
	uint32_t min, max;          /* T_UINT; T_DUR in ms */
	unsigned flags;
};

extern const struct key config_keys[K_COUNT];

#define NAME(k) (config_keys[k].name)

/*
 * Where each key of one section was last set (0: never), for messages, and
 * whether its value was refused: checks built on a refused value would only
 * add noise to the one real error.
 */
struct src {
	int line[K_COUNT];
	bool bad[K_COUNT];
};

/* struct config comes first so config_free() can find the rest. */
struct priv {
	struct config pub;
	struct src gsrc;
	char *gfile;                /* where [global] stands; NULL: not yet */
	int gline;
	struct src *ssrc;           /* parallel to pub.services */
};

struct ctx {
	FILE *err;
	const char *file;
	int line;
	int nerr;
};

/*
 * The section keys go to. A refused section (bad or duplicate header)
 * parses into a scratch one, so the errors of its keys are still reported.
 */
struct sect {
	enum scope scope;
	void *base;
	struct src *src;
};

static inline struct priv *priv_of(struct config *cfg)
{
	return (struct priv *)(void *)cfg;
}

static inline void *field(const struct sect *sc, const struct key *k)
{
	return (char *)sc->base + k->off;
}

/* The row of the key spelled s[0..n), or -1. */
int cf_find_key(const char *s, size_t n);

/* An error at line (0: the file as a whole); counted in c->nerr. */
__attribute__((format(printf, 3, 4)))
void cf_report(struct ctx *c, int line, const char *fmt, ...);
/* "bad value 'v' for key: why" at the current line; returns false. */
__attribute__((format(printf, 4, 5)))
bool cf_bad(struct ctx *c, const struct key *k, const char *v,
    const char *fmt, ...);
char *cf_sdup(struct ctx *c, const char *s, size_t n);
void *cf_grow(struct ctx *c, void *arr, size_t n, size_t size);
bool cf_parse_num(const char *s, size_t n, uint64_t max, uint64_t *out);
bool cf_host_chars(const char *s, size_t n);

/* A setter parses one value into the field its row names. */
typedef bool setter(struct ctx *, const struct key *, struct sect *,
    const char *);

extern setter *const cf_setters[T_NTYPES];
setter cf_set_str;
/* Addresses and networks (config_addr.c). */
setter cf_set_listen, cf_set_metrics, cf_set_upstream, cf_set_cidrs;

#endif
