/*
 * config: the conf.d/ parser. The key table below is the only place a key
 * name is spelled; parsing, defaults, scope checks and messages all read it.
 * Input is an arbitrary byte block (fuzzed), so nothing here trusts a length
 * or a terminator it did not check.
 */
#include "config.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"

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

static const struct key keys[K_COUNT] = {
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

#define NAME(k) (keys[k].name)

/*
 * Settings the contract names but this build cannot honour yet. Ignoring a
 * security setting would be worse than refusing it; delete a row when its
 * feature lands. value NULL refuses the key whatever its value.
 */
static const struct { enum kid key; const char *value; } unbuilt[] = {
	{ K_COUNT, NULL },   /* none left; the row keeps the table non-empty */
};

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

struct parser {
	struct priv *p;
	struct ctx c;
	struct sect cur;
	struct service junk_svc;
	struct config junk_cfg;
	struct src junk_src;
};

static struct priv *priv_of(struct config *cfg)
{
	return (struct priv *)(void *)cfg;
}

__attribute__((format(printf, 3, 4)))
static void report(struct ctx *c, int line, const char *fmt, ...)
{
	va_list ap;

	c->nerr++;
	if (!c->err)
		return;
	if (line > 0)
		fprintf(c->err, "%s:%d: ", c->file, line);
	else
		fprintf(c->err, "%s: ", c->file);
	va_start(ap, fmt);
	vfprintf(c->err, fmt, ap);
	va_end(ap);
	fputc('\n', c->err);
}

__attribute__((format(printf, 4, 5)))
static bool bad(struct ctx *c, const struct key *k, const char *v,
    const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof why, fmt, ap);
	va_end(ap);
	report(c, c->line, "bad value '%s' for %s: %s", v, k->name, why);
	return false;
}

static char *sdup(struct ctx *c, const char *s, size_t n)
{
	char *d = malloc(n + 1);

	if (!d) {
		report(c, c->line, "out of memory");
		return NULL;
	}
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

/* Room for one more element, zeroed; NULL (arr untouched) on failure. */
static void *grow(struct ctx *c, void *arr, size_t n, size_t size)
{
	char *a = NULL;

	if (n < SIZE_MAX / size - 1)
		a = realloc(arr, (n + 1) * size);
	if (!a) {
		report(c, c->line, "out of memory");
		return NULL;
	}
	memset(a + n * size, 0, size);
	return a;
}

static void *field(const struct sect *sc, const struct key *k)
{
	return (char *)sc->base + k->off;
}

/* Digits only (no sign, no space), at most max. */
static bool parse_num(const char *s, size_t n, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > max)
			return false;
	}
	*out = v;
	return true;
}

static bool set_uint(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	uint64_t n = 0;
	uint32_t u;

	if (!((k->flags & F_AUTO) && strcmp(v, "auto") == 0) &&
	    (!parse_num(v, strlen(v), k->max, &n) || n < k->min))
		return bad(c, k, v, "expected %sa number from %u to %u",
		    k->flags & F_AUTO ? "auto or " : "", k->min, k->max);
	u = (uint32_t)n;
	memcpy(field(sc, k), &u, sizeof u);
	return true;
}

static bool set_str(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	char **slot = field(sc, k);
	char *d = sdup(c, v, strlen(v));

	if (!d)
		return false;
	free(*slot);
	*slot = d;
	return true;
}

static bool host_chars(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789.-_", s[i]) || s[i] == '\0')
			return false;
	return n > 0 && n <= 253;
}

/* A name sent on the wire (EHLO, SNI): a space there would split it. */
static bool set_host(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	size_t n = strlen(v);

	if (!host_chars(v, n) && !(strchr(v, ':') && n < 64 &&
	    strspn(v, "0123456789abcdefABCDEF:.") == n))
		return bad(c, k, v, "expected a host name");
	return set_str(c, k, sc, v);
}

static void words_text(const char *const *w, char *buf, size_t cap)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; w[i] && used < cap; i++)
		used += (size_t)snprintf(buf + used, cap - used, "%s%s",
		    i == 0 ? "" : w[i + 1] ? ", " : " or ", w[i]);
}

static int word_index(const char *const *w, const char *v)
{
	for (int i = 0; w[i]; i++)
		if (strcmp(w[i], v) == 0)
			return i;
	return -1;
}

static bool set_word(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	int i = word_index(k->words, v);
	char list[128];
	bool b = i == 1;
	int ver = CONFIG_TLS12 + i;

	if (i < 0) {
		words_text(k->words, list, sizeof list);
		return bad(c, k, v, "expected %s", list);
	}
	if (k->type == T_BOOL)
		memcpy(field(sc, k), &b, sizeof b);
	else if (k->type == T_VERSION)
		memcpy(field(sc, k), &ver, sizeof ver);
	else
		memcpy(field(sc, k), &i, sizeof i);
	return true;
}

static bool set_dur(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	static const struct { const char *unit; uint32_t ms; } units[] = {
		{ "", 1000 }, { "s", 1000 }, { "ms", 1 }, { "m", 60000 },
		{ "h", 3600000 },
	};
	size_t nd = strspn(v, "0123456789");
	uint64_t n;

	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		uint32_t ms;

		if (strcmp(v + nd, units[i].unit) != 0 ||
		    !parse_num(v, nd, k->max, &n))
			continue;
		if (n * units[i].ms < k->min || n * units[i].ms > k->max)
			break;
		ms = (uint32_t)(n * units[i].ms);
		memcpy(field(sc, k), &ms, sizeof ms);
		return true;
	}
	return bad(c, k, v, "expected a duration from 1ms to 24h, "
	    "e.g. 10s, 500ms, 5m or 1h");
}

/* "host:port" or "[host]:port"; the host comes back without brackets. */
static bool split_hostport(const char *v, const char **h, size_t *hn,
    bool *br, const char **p)
{
	const char *e;
	uint64_t n;

	*br = v[0] == '[';
	if (*br) {
		e = strchr(v, ']');
		if (!e || e[1] != ':')
			return false;
		*h = v + 1;
		*p = e + 2;
	} else {
		e = strrchr(v, ':');
		if (!e)
			return false;
		*h = v;
		*p = e + 1;
	}
	*hn = (size_t)(e - *h);
	return *hn > 0 && parse_num(*p, strlen(*p), 65535, &n) && n > 0;
}

static bool parse_sockaddr(const char *v, struct sockaddr_text *out)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };
	char host[INET6_ADDRSTRLEN];
	const char *h, *p;
	size_t hn;
	bool br;
	uint16_t port;

	if (!split_hostport(v, &h, &hn, &br, &p) || hn >= sizeof host)
		return false;
	port = (uint16_t)atoi(p);
	memcpy(host, h, hn);
	host[hn] = '\0';
	memset(&out->ss, 0, sizeof out->ss);
	if (br) {
		s6.sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &s6.sin6_addr) != 1)
			return false;
		memcpy(&out->ss, &s6, sizeof s6);
		out->len = sizeof s6;
	} else {
		s4.sin_port = htons(port);
		if (inet_pton(AF_INET, host, &s4.sin_addr) != 1)
			return false;
		memcpy(&out->ss, &s4, sizeof s4);
		out->len = sizeof s4;
	}
	return true;
}

#define ADDR_HINT \
	"expected a numeric address and port, e.g. 0.0.0.0:587 or [::]:587"

static bool set_listen(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct sockaddr_text a;

	if (!parse_sockaddr(v, &a))
		return bad(c, k, v, ADDR_HINT);
	if (!(a.text = sdup(c, v, strlen(v))))
		return false;
	struct sockaddr_text *arr = grow(c, s->listen, s->nlisten, sizeof *arr);
	if (!arr) {
		free(a.text);
		return false;
	}
	s->listen = arr;
	arr[s->nlisten++] = a;
	return true;
}

static bool set_metrics(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct config *g = sc->base;
	struct sockaddr_text a;

	if (!parse_sockaddr(v, &a))
		return bad(c, k, v, ADDR_HINT);
	if (!(a.text = sdup(c, v, strlen(v))) || !set_str(c, k, sc, v)) {
		free(a.text);
		return false;
	}
	free(g->metrics_addr.text);
	g->metrics_addr = a;
	return true;
}

static bool set_upstream(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct in6_addr a6;
	char host[INET6_ADDRSTRLEN] = "";
	const char *h, *p;
	size_t hn;
	bool br;

	if (strcmp(v, "mx") == 0) {
		/* The outbound relay: hosts come from each recipient's MX. */
		free(s->upstream);
		free(s->upstream_host);
		s->upstream = sdup(c, v, 2);
		s->upstream_host = sdup(c, v, 2);
		s->upstream_mx = true;
		return s->upstream && s->upstream_host;
	}
	s->upstream_mx = false;
	if (!split_hostport(v, &h, &hn, &br, &p) || (!br && !host_chars(h, hn)))
		return bad(c, k, v, "expected host:port or [IPv6]:port");
	if (br && hn < sizeof host)
		memcpy(host, h, hn);
	if (br && inet_pton(AF_INET6, host, &a6) != 1)
		return bad(c, k, v, "'[...]' must hold an IPv6 address");
	free(s->upstream);
	free(s->upstream_host);
	free(s->upstream_port);
	s->upstream = sdup(c, v, strlen(v));
	s->upstream_host = sdup(c, h, hn);
	s->upstream_port = sdup(c, p, strlen(p));
	return s->upstream && s->upstream_host && s->upstream_port;
}

static void cidr_mask(struct cidr *n)
{
	for (unsigned i = 0; i < 16; i++) {
		unsigned keep = n->bits > i * 8 ? n->bits - i * 8 : 0;

		if (keep < 8)
			n->addr[i] &= (uint8_t)(0xff00u >> keep);
	}
}

static const uint8_t v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

/* ::ffff:a.b.c.d/N is stored as a.b.c.d/(N-96): one form to match. */
static bool parse_cidr(const char *t, size_t n, struct cidr *out)
{
	char buf[64];
	char *slash;
	uint64_t bits;
	unsigned max;

	if (n >= sizeof buf)
		return false;
	memcpy(buf, t, n);
	buf[n] = '\0';
	memset(out, 0, sizeof *out);
	out->family = memchr(buf, ':', n) ? AF_INET6 : AF_INET;
	max = out->family == AF_INET6 ? 128 : 32;
	bits = max;
	if ((slash = strchr(buf, '/'))) {
		*slash = '\0';
		if (!parse_num(slash + 1, strlen(slash + 1), max, &bits))
			return false;
	}
	if (inet_pton(out->family, buf, out->addr) != 1)
		return false;
	out->bits = (uint8_t)bits;
	cidr_mask(out);
	if (out->family == AF_INET6 && bits >= 96 &&
	    memcmp(out->addr, v4mapped, 12) == 0) {
		out->family = AF_INET;
		out->bits = (uint8_t)(bits - 96);
		memmove(out->addr, out->addr + 12, 4);
		memset(out->addr + 4, 0, 12);
	}
	return true;
}

#define SEP " \t,"

static bool set_cidrs(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct cidrs *s = field(sc, k);
	size_t ntok = 0;
	bool ok = true, any = false;

	for (const char *t = v + strspn(v, SEP); *t; t += strspn(t, SEP)) {
		size_t n = strcspn(t, SEP);
		struct cidr net, *arr;

		ntok++;
		if (n == 3 && memcmp(t, "any", 3) == 0) {
			any = true;
		} else if (!parse_cidr(t, n, &net)) {
			char *tok = sdup(c, t, n);
			ok = tok && bad(c, k, tok, "expected addresses or networks "
			    "(e.g. 127.0.0.0/8 ::1) or any");
			free(tok);
		} else if ((arr = grow(c, s->v, s->n, sizeof *arr))) {
			s->v = arr;
			arr[s->n++] = net;
		} else {
			ok = false;
		}
		t += n;
	}
	if ((any && (ntok > 1 || s->n)) || (!any && s->any))
		return bad(c, k, v, "'any' cannot be combined with addresses");
	s->any |= any;
	return ok;
}

static int b64val(char ch)
{
	static const char alpha[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const char *p = ch ? strchr(alpha, ch) : NULL;

	return p ? (int)(p - alpha) : -1;
}

/*
 * Strict, padded standard base64; returns the decoded length (written up to
 * cap) or -1. Non-zero unused bits are refused: they mean a typo.
 */
static long b64_decode(const char *s, uint8_t *out, size_t cap)
{
	size_t n = strlen(s), o = 0;

	if (n == 0 || n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t w = 0;
		int pad = 0;

		for (int j = 0; j < 4; j++) {
			int v = s[i + j] == '=' ? 0 : b64val(s[i + j]);

			if (s[i + j] == '=' && (i + 4 != n || j < 2))
				return -1;
			pad += s[i + j] == '=';
			if (v < 0 || (pad && s[i + j] != '='))
				return -1;
			w = w << 6 | (uint32_t)v;
		}
		if ((pad == 1 && (w & 0xff)) || (pad == 2 && (w & 0xffff)))
			return -1;
		for (int j = 0; j < 3 - pad; j++, o++)
			if (o < cap)
				out[o] = (uint8_t)(w >> (16 - 8 * j));
	}
	return (long)o;
}

static bool set_pin(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	static const char prefix[] = "sha256/";
	struct service *s = sc->base;
	uint8_t h[32];
	long n = -1;

	if (strncmp(v, prefix, sizeof prefix - 1) == 0)
		n = b64_decode(v + sizeof prefix - 1, h, sizeof h);
	if (n < 0)
		return bad(c, k, v, "expected sha256/ and the base64 of a SHA-256");
	if (n != 32)
		return bad(c, k, v, "decodes to %ld bytes, a SHA-256 has 32", n);
	uint8_t (*arr)[32] = grow(c, s->pins, s->npins, sizeof *arr);
	if (!arr)
		return false;
	s->pins = arr;
	memcpy(arr[s->npins++], h, sizeof h);
	return true;
}

static bool set_cert(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct certkey *arr = grow(c, s->certs, s->ncerts, sizeof *arr);

	(void)k;
	if (!arr)
		return false;
	s->certs = arr;
	arr[s->ncerts].cert_line = arr[s->ncerts].key_line = c->line;
	return (arr[s->ncerts++].cert = sdup(c, v, strlen(v))) != NULL;
}

/*
 * A key belongs to the listen_cert just before it. Pairing by position
 * alone would give a key to the wrong cert once one cert (a PEM holding
 * its own key) goes without.
 */
static bool set_key(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct certkey *last = s->ncerts ? &s->certs[s->ncerts - 1] : NULL;

	if (!last || last->key) {
		report(c, c->line, "%s has no %s before it to pair with",
		    k->name, NAME(K_LISTEN_CERT));
		return false;
	}
	last->key_line = c->line;
	return (last->key = sdup(c, v, strlen(v))) != NULL;
}

/* "IP" or "IP@PORT" (libunbound's forwarder syntax), numeric only: a
 * resolver found by name would need a resolver first. */
static bool set_resolver(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct config *g = sc->base;
	const char *at = strchr(v, '@');
	size_t hn = at ? (size_t)(at - v) : strlen(v);
	char host[INET6_ADDRSTRLEN];
	uint8_t a[16];
	uint64_t port;
	char **arr;

	if (hn == 0 || hn >= sizeof host || (at && (!parse_num(at + 1,
	    strlen(at + 1), 65535, &port) || port == 0)))
		return bad(c, k, v, "expected a numeric address, optionally "
		    "with @port, e.g. 127.0.0.1@53 or ::1");
	memcpy(host, v, hn);
	host[hn] = '\0';
	if (inet_pton(AF_INET, host, a) != 1 && inet_pton(AF_INET6, host, a) != 1)
		return bad(c, k, v, "expected a numeric address, optionally "
		    "with @port, e.g. 127.0.0.1@53 or ::1");
	if (!(arr = grow(c, g->dns_resolvers, g->ndns_resolvers, sizeof *arr)))
		return false;
	g->dns_resolvers = arr;
	return (arr[g->ndns_resolvers++] = sdup(c, v, strlen(v))) != NULL;
}

typedef bool setter(struct ctx *, const struct key *, struct sect *,
    const char *);

static setter *const setters[T_NTYPES] = {
	[T_UINT] = set_uint, [T_STR] = set_str, [T_HOST] = set_host,
	[T_ENUM] = set_word, [T_BOOL] = set_word, [T_VERSION] = set_word,
	[T_DUR] = set_dur, [T_LISTEN] = set_listen, [T_METRICS] = set_metrics,
	[T_UPSTREAM] = set_upstream, [T_CIDRS] = set_cidrs, [T_PIN] = set_pin,
	[T_CERT] = set_cert, [T_KEY] = set_key, [T_RESOLVER] = set_resolver,
};

static void service_fields_free(struct service *s)
{
	for (size_t i = 0; i < s->nlisten; i++)
		free(s->listen[i].text);
	for (size_t i = 0; i < s->ncerts; i++) {
		free(s->certs[i].cert);
		free(s->certs[i].key);
	}
	free(s->name); free(s->file); free(s->listen); free(s->certs);
	free(s->plain_from.v); free(s->proxy_from.v); free(s->relay_from.v); free(s->listen_client_ca); free(s->listen_ciphers);
	free(s->upstream); free(s->upstream_host); free(s->upstream_port);
	free(s->upstream_name); free(s->upstream_ca); free(s->pins);
	free(s->upstream_cert); free(s->upstream_key); free(s->upstream_ciphers);
	memset(s, 0, sizeof *s);
}

static void global_fields_free(struct config *g)
{
	free(g->user); free(g->helo_name); free(g->metrics);
	free(g->metrics_addr.text);
	for (size_t i = 0; i < g->ndns_resolvers; i++)
		free(g->dns_resolvers[i]);
	free(g->dns_resolvers); free(g->dnssec_trust_anchor); free(g->tls_ticket_keys);
}

/* Scratch sections hold what a refused section parsed; drop it. */
static void junk_drop(struct parser *ps)
{
	service_fields_free(&ps->junk_svc);
	global_fields_free(&ps->junk_cfg);
	memset(&ps->junk_cfg, 0, sizeof ps->junk_cfg);
	memset(&ps->junk_src, 0, sizeof ps->junk_src);
}

static void use_junk(struct parser *ps, enum scope scope)
{
	ps->cur.scope = scope;
	ps->cur.base = scope == SC_GLOBAL ? (void *)&ps->junk_cfg : &ps->junk_svc;
	ps->cur.src = &ps->junk_src;
}

static void open_global(struct parser *ps)
{
	struct priv *p = ps->p;

	if (p->gfile) {
		report(&ps->c, ps->c.line, "duplicate section [global] (first at %s:%d)",
		    p->gfile, p->gline);
		use_junk(ps, SC_GLOBAL);
		return;
	}
	if (!(p->gfile = sdup(&ps->c, ps->c.file, strlen(ps->c.file)))) {
		use_junk(ps, SC_GLOBAL);
		return;
	}
	p->gline = ps->c.line;
	ps->cur = (struct sect){ SC_GLOBAL, &p->pub, &p->gsrc };
}

static bool service_name_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789-_.", s[i]) || s[i] == '\0')
			return false;
	return n > 0;
}

static void open_service(struct parser *ps, const char *name, size_t n)
{
	struct config *cfg = &ps->p->pub;
	struct ctx *c = &ps->c;
	struct service *s;
	struct src *src;

	use_junk(ps, SC_SERVICE);
	if (!service_name_ok(name, n)) {
		report(c, c->line, "bad section name '%.*s': use letters, digits, "
		    "'-', '_' and '.'", (int)n, name);
		return;
	}
	for (size_t i = 0; i < cfg->nservices; i++) {
		s = &cfg->services[i];
		if (strlen(s->name) == n && memcmp(s->name, name, n) == 0) {
			report(c, c->line, "duplicate service '%.*s' (first at %s:%d)",
			    (int)n, name, s->file, s->line);
			return;
		}
	}
	/* Name and file first: a listed service always has both. */
	if (!(ps->junk_svc.name = sdup(c, name, n)) ||
	    !(ps->junk_svc.file = sdup(c, c->file, strlen(c->file))))
		return;
	if (!(src = grow(c, ps->p->ssrc, cfg->nservices, sizeof *src)))
		return;
	ps->p->ssrc = src;
	if (!(s = grow(c, cfg->services, cfg->nservices, sizeof *s)))
		return;
	cfg->services = s;
	s += cfg->nservices;
	s->name = ps->junk_svc.name;
	s->file = ps->junk_svc.file;
	s->line = c->line;
	memset(&ps->junk_svc, 0, sizeof ps->junk_svc);
	ps->cur = (struct sect){ SC_SERVICE, s, &src[cfg->nservices++] };
}

static void trim(const char **s, size_t *n)
{
	while (*n && (**s == ' ' || **s == '\t'))
		(*s)++, (*n)--;
	while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
		(*n)--;
}

static void header(struct parser *ps, const char *s, size_t n)
{
	junk_drop(ps);
	if (n < 2 || s[n - 1] != ']') {
		report(&ps->c, ps->c.line, "bad section header: expected [name]");
		use_junk(ps, SC_SERVICE);
		return;
	}
	s++;
	n -= 2;
	trim(&s, &n);
	if (n == 6 && memcmp(s, "global", 6) == 0)
		open_global(ps);
	else
		open_service(ps, s, n);
}

static int find_key(const char *s, size_t n)
{
	for (int k = 0; k < K_COUNT; k++)
		if (strlen(keys[k].name) == n && memcmp(keys[k].name, s, n) == 0)
			return k;
	return -1;
}

/* Returns the row the line may set, or -1 after reporting why not. */
static int check_key(struct parser *ps, const char *s, size_t n)
{
	struct ctx *c = &ps->c;
	int k = find_key(s, n);

	if (k < 0)
		report(c, c->line, "unknown key '%.*s'", (int)n, s);
	else if (ps->cur.scope == SC_NONE)
		report(c, c->line, "key '%s' outside any section", NAME(k));
	else if (keys[k].scope == SC_GLOBAL && ps->cur.scope != SC_GLOBAL)
		report(c, c->line, "key '%s' belongs in [global]", NAME(k));
	else if (keys[k].scope == SC_SERVICE && ps->cur.scope != SC_SERVICE)
		report(c, c->line, "key '%s' belongs in a service section, "
		    "not in [global]", NAME(k));
	else if (ps->cur.src->line[k] && !(keys[k].flags & F_REPEAT))
		report(c, c->line, "duplicate key '%s' (first at line %d)",
		    NAME(k), ps->cur.src->line[k]);
	else
		return k;
	return -1;
}

static void assignment(struct parser *ps, const char *s, size_t n)
{
	const char *eq = memchr(s, '=', n), *v;
	size_t kn, vn;
	char *val;
	int k;

	if (!eq) {
		report(&ps->c, ps->c.line, "expected 'key = value' or '[section]'");
		return;
	}
	kn = (size_t)(eq - s);
	v = eq + 1;
	vn = n - kn - 1;
	trim(&s, &kn);
	trim(&v, &vn);
	if ((k = check_key(ps, s, kn)) < 0)
		return;
	ps->cur.src->line[k] = ps->c.line;
	if (vn == 0) {
		report(&ps->c, ps->c.line, "empty value for key '%s'", NAME(k));
		ps->cur.src->bad[k] = true;
	} else if ((val = sdup(&ps->c, v, vn))) {
		if (!setters[keys[k].type](&ps->c, &keys[k], &ps->cur, val))
			ps->cur.src->bad[k] = true;
		free(val);
	}
}

static bool has_control(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
			return true;
	return false;
}

static void parse_line(struct parser *ps, const char *s, size_t n)
{
	if (memchr(s, '\0', n)) {
		report(&ps->c, ps->c.line, "NUL byte in line");
		return;
	}
	if (n && s[n - 1] == '\r')
		n--;
	for (size_t i = 0; i < n; i++)
		if (s[i] == ';' || s[i] == '#')
			n = i;
	trim(&s, &n);
	if (n == 0)
		return;
	if (has_control(s, n))
		report(&ps->c, ps->c.line, "control character in line");
	else if (s[0] == '[')
		header(ps, s, n);
	else
		assignment(ps, s, n);
}

struct config *config_new(void)
{
	struct priv *p = calloc(1, sizeof *p);

	return p ? &p->pub : NULL;
}

int config_parse(struct config *cfg, const char *name, const char *text,
    size_t len, FILE *err)
{
	struct parser ps = { .p = priv_of(cfg), .c = { err, name, 0, 0 } };
	size_t i = 0;

	ps.cur.scope = SC_NONE;
	while (text && i < len) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t n = nl ? (size_t)(nl - (text + i)) : len - i;

		ps.c.line++;
		parse_line(&ps, text + i, n);
		i += n + 1;
	}
	junk_drop(&ps);
	return ps.c.nerr;
}

static void apply_defaults(struct ctx *c, struct sect *sc)
{
	for (int k = 0; k < K_COUNT; k++)
		if (keys[k].scope == sc->scope && keys[k].def && !sc->src->line[k])
			setters[keys[k].type](c, &keys[k], sc, keys[k].def);
}

/* The word a refusable key holds, to match against unbuilt[]. */
static const char *current_word(const struct sect *sc, const struct key *k)
{
	bool b;
	int i;

	if (k->type == T_BOOL) {
		memcpy(&b, field(sc, k), sizeof b);
		return k->words[b];
	}
	if (k->type != T_ENUM)
		return NULL;
	memcpy(&i, field(sc, k), sizeof i);
	for (int n = 0; k->words[n]; n++)
		if (n == i)
			return k->words[n];
	return NULL;
}

static void check_unbuilt(struct ctx *c, const struct sect *sc)
{
	for (size_t i = 0; i < sizeof unbuilt / sizeof unbuilt[0]; i++) {
		const struct key *k;
		int line;
		const char *w;

		if (unbuilt[i].key == K_COUNT)
			continue;
		k = &keys[unbuilt[i].key];
		line = sc->src->line[unbuilt[i].key];
		if (k->scope != sc->scope || !line || sc->src->bad[unbuilt[i].key])
			continue;
		if (!unbuilt[i].value)
			report(c, line, "%s is not supported in this build", k->name);
		else if ((w = current_word(sc, k)) && !strcmp(w, unbuilt[i].value))
			report(c, line, "%s = %s is not supported in this build",
			    k->name, w);
	}
}

static int line_or_header(const struct service *s, const struct src *src,
    enum kid k)
{
	return src->line[k] ? src->line[k] : s->line;
}

static void finish_listen(struct ctx *c, struct service *s, struct src *src,
    int tls_min)
{
	bool tls_known = !src->bad[K_LISTEN_TLS];

	for (size_t i = 0; i < s->ncerts; i++)
		if (s->certs[i].cert && !s->certs[i].key)
			s->certs[i].key = sdup(c, s->certs[i].cert,
			    strlen(s->certs[i].cert));
	if (tls_known && s->listen_tls != MODE_PLAIN && !s->ncerts)
		report(c, line_or_header(s, src, K_LISTEN_TLS), "%s = %s needs %s",
		    NAME(K_LISTEN_TLS), config_mode_name(s->listen_tls),
		    NAME(K_LISTEN_CERT));
	if (!src->line[K_LISTEN_MIN_VERSION])
		s->listen_min_version = tls_min;
	if (!src->bad[K_PROXY_PROTOCOL] && s->proxy_protocol &&
	    !src->line[K_PROXY_FROM])
		report(c, src->line[K_PROXY_PROTOCOL], "%s = yes needs %s: the "
		    "load balancers that may name the client", NAME(K_PROXY_PROTOCOL),
		    NAME(K_PROXY_FROM));
	if (!s->proxy_protocol && src->line[K_PROXY_FROM])
		report(c, src->line[K_PROXY_FROM], "%s is set but %s = no",
		    NAME(K_PROXY_FROM), NAME(K_PROXY_PROTOCOL));
}

/*
 * upstream = mx: never an open relay (relay_from required), never
 * plaintext (starttls by default, implicit allowed), DANE by default
 * (RFC 7672 is written for MX delivery). Keys that name one upstream
 * host make no sense when every transaction picks its own.
 */
static void finish_mx(struct ctx *c, struct service *s, struct src *src)
{
	static const enum kid one_host[] = { K_UPSTREAM_NAME, K_UPSTREAM_PIN,
		K_UPSTREAM_PROXY_PROTOCOL, K_UPSTREAM_XCLIENT, K_PROXY_PROTOCOL };
	char port[8];

	if (!s->upstream_mx) {
		if (src->line[K_UPSTREAM_PORT])
			report(c, src->line[K_UPSTREAM_PORT], "%s is set but %s is not mx",
			    NAME(K_UPSTREAM_PORT), NAME(K_UPSTREAM));
		if (src->line[K_RELAY_FROM])
			report(c, src->line[K_RELAY_FROM], "%s is set but %s is not mx",
			    NAME(K_RELAY_FROM), NAME(K_UPSTREAM));
		return;
	}
	if (!src->line[K_RELAY_FROM])
		report(c, line_or_header(s, src, K_UPSTREAM), "%s = mx needs %s: the "
		    "clients that may relay (never an open relay)", NAME(K_UPSTREAM),
		    NAME(K_RELAY_FROM));
	if (!src->line[K_UPSTREAM_TLS])
		s->upstream_tls = MODE_STARTTLS;
	else if (!src->bad[K_UPSTREAM_TLS] && s->upstream_tls == MODE_PLAIN)
		report(c, src->line[K_UPSTREAM_TLS], "%s = plain is refused with %s = mx: "
		    "mail to other domains goes out over TLS (starttls or implicit)",
		    NAME(K_UPSTREAM_TLS), NAME(K_UPSTREAM));
	if (!src->line[K_UPSTREAM_VERIFY])
		s->upstream_verify = VERIFY_DANE;
	for (size_t i = 0; i < sizeof one_host / sizeof one_host[0]; i++)
		if (src->line[one_host[i]])
			report(c, src->line[one_host[i]], "%s is not supported with %s = mx",
			    NAME(one_host[i]), NAME(K_UPSTREAM));
	free(s->upstream_port);
	snprintf(port, sizeof port, "%u", (unsigned)s->mx_port);
	s->upstream_port = sdup(c, port, strlen(port));
}

static void finish_upstream(struct ctx *c, struct service *s, struct src *src,
    int tls_min)
{
	finish_mx(c, s, src);
	if (!s->upstream_name && s->upstream_host)
		s->upstream_name = sdup(c, s->upstream_host,
		    strlen(s->upstream_host));
	if (src->line[K_UPSTREAM_KEY] && !src->line[K_UPSTREAM_CERT])
		report(c, src->line[K_UPSTREAM_KEY], "%s is set but %s is not",
		    NAME(K_UPSTREAM_KEY), NAME(K_UPSTREAM_CERT));
	if (!s->upstream_key && s->upstream_cert)
		s->upstream_key = sdup(c, s->upstream_cert, strlen(s->upstream_cert));
	if (!src->line[K_UPSTREAM_MIN_VERSION])
		s->upstream_min_version = tls_min;
	/* TLSA records hang off a host name (RFC 7672 2.2.3). */
	if (!src->bad[K_UPSTREAM_VERIFY] && s->upstream_host &&
	    (s->upstream_verify == VERIFY_DANE || s->upstream_verify == VERIFY_DANE_ONLY) &&
	    (strchr(s->upstream_host, ':') || strspn(s->upstream_host, "0123456789.") ==
	    strlen(s->upstream_host)))
		report(c, line_or_header(s, src, K_UPSTREAM_VERIFY), "%s = %s needs a "
		    "host name in %s, not an address: DANE looks up TLSA records "
		    "for the name", NAME(K_UPSTREAM_VERIFY),
		    config_verify_name(s->upstream_verify), NAME(K_UPSTREAM));
}

/*
 * Keys the chosen mode would ignore. A security setting that silently does
 * nothing is worse than an error: the reader of the file believes it holds.
 * A row refuses `key` when `mode` (explicitly set or defaulted) holds the
 * word `is`; keys left at their defaults are never refused.
 */
static const struct { enum kid key, mode; int is; const char *why; } ignored[] = {
	{ K_LISTEN_CERT, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_KEY, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_CLIENT_CA, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_PLAIN_FROM, K_LISTEN_TLS, MODE_PLAIN, "a plain listener lets everyone send without TLS" },
	{ K_LISTEN_PLAIN_FROM, K_LISTEN_TLS, MODE_IMPLICIT, "an implicit listener has no plaintext phase" },
	{ K_LISTEN_CIPHERS, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_MIN_VERSION, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_VERIFY, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_NAME, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CA, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_PIN, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CERT, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_KEY, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CIPHERS, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_MIN_VERSION, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CA, K_UPSTREAM_VERIFY, VERIFY_ENCRYPT, "no certificate is checked" },
	{ K_UPSTREAM_NAME, K_UPSTREAM_VERIFY, VERIFY_ENCRYPT, "no name is checked" },
	{ K_LISTEN_CIPHERS, K_LISTEN_MIN_VERSION, CONFIG_TLS13, "the list is of TLS 1.2 suites" },
	{ K_UPSTREAM_CIPHERS, K_UPSTREAM_MIN_VERSION, CONFIG_TLS13, "the list is of TLS 1.2 suites" },
};

static void check_ignored(struct ctx *c, const struct service *s,
    const struct src *src)
{
	for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
		const struct key *k = &keys[ignored[i].key], *m = &keys[ignored[i].mode];
		int v, line = src->line[ignored[i].key];

		if (!line || src->bad[ignored[i].mode] || src->bad[ignored[i].key])
			continue;
		memcpy(&v, (const char *)s + m->off, sizeof v);
		if (v != ignored[i].is)
			continue;
		/* One message per key: the first row that refuses it. */
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++) {
			int vj;

			memcpy(&vj, (const char *)s + keys[ignored[j].mode].off, sizeof vj);
			seen = ignored[j].key == ignored[i].key && vj == ignored[j].is &&
			    !src->bad[ignored[j].mode];
		}
		if (seen)
			continue;
		report(c, line, "%s is set but %s = %s%s%s%s", k->name, m->name,
		    m->type == T_VERSION ? m->words[ignored[i].is - CONFIG_TLS12] :
		    m->words[ignored[i].is],
		    src->line[ignored[i].mode] ? "" : " (by default)",
		    ignored[i].why ? ": " : "", ignored[i].why ? ignored[i].why : "");
	}
}

static void finish_service(struct ctx *c, struct config *cfg, size_t i)
{
	struct service *s = &cfg->services[i];
	struct src *src = &priv_of(cfg)->ssrc[i];
	struct sect sc = { SC_SERVICE, s, src };

	c->file = s->file;
	c->line = s->line;
	apply_defaults(c, &sc);
	for (int k = 0; k < K_COUNT; k++)
		if ((keys[k].flags & F_REQUIRED) && !src->line[k])
			report(c, s->line, "service '%s': missing required key '%s'",
			    s->name, NAME(k));
	finish_listen(c, s, src, cfg->tls_min_version);
	finish_upstream(c, s, src, cfg->tls_min_version);
	check_ignored(c, s, src);
	check_unbuilt(c, &sc);
}

static bool same_addr(const struct sockaddr_text *a,
    const struct sockaddr_text *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* Two binds of one address would fail at start; say so at check time. */
static void check_listen_unique(struct ctx *c, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nservices; i++) {
		const struct service *s = &cfg->services[i];

		c->file = s->file;
		for (size_t j = 0; j < s->nlisten; j++)
			for (size_t i2 = 0; i2 <= i; i2++) {
				const struct service *o = &cfg->services[i2];
				size_t end = i2 == i ? j : o->nlisten;

				for (size_t j2 = 0; j2 < end; j2++)
					if (same_addr(&s->listen[j], &o->listen[j2]))
						report(c, s->line, "service '%s': listen "
						    "address %s is already used by "
						    "service '%s'", s->name,
						    s->listen[j].text, o->name);
			}
	}
}

/* tls_min_version is only a default: refuse it when no hop takes it. */
static void check_tls_default(struct ctx *c, const struct config *cfg,
    const struct priv *p)
{
	int line = p->gsrc.line[K_TLS_MIN_VERSION];

	if (!line || p->gsrc.bad[K_TLS_MIN_VERSION])
		return;
	for (size_t i = 0; i < cfg->nservices; i++) {
		const struct service *s = &cfg->services[i];
		const struct src *src = &p->ssrc[i];

		if ((s->listen_tls != MODE_PLAIN && !src->line[K_LISTEN_MIN_VERSION]) ||
		    (s->upstream_tls != MODE_PLAIN && !src->line[K_UPSTREAM_MIN_VERSION]))
			return;
	}
	c->file = p->gfile;
	report(c, line, "%s is set but no TLS hop takes it (every hop is %s or "
	    "sets its own minimum)", NAME(K_TLS_MIN_VERSION), w_mode[MODE_PLAIN]);
}

/* Ticket keys serve TLS listeners only: refuse them where there is none. */
static void check_ticket_keys(struct ctx *c, const struct config *cfg,
    const struct priv *p)
{
	int line = p->gsrc.line[K_TLS_TICKET_KEYS];

	if (!line)
		return;
	for (size_t i = 0; i < cfg->nservices; i++)
		if (cfg->services[i].listen_tls != MODE_PLAIN)
			return;
	c->file = p->gfile;
	report(c, line, "%s is set but no listener uses TLS", NAME(K_TLS_TICKET_KEYS));
}

int config_finish(struct config *cfg, const char *where, FILE *err)
{
	struct priv *p = priv_of(cfg);
	struct ctx c = { err, p->gfile ? p->gfile : where, 0, 0 };
	struct sect g = { SC_GLOBAL, cfg, &p->gsrc };

	apply_defaults(&c, &g);
	check_unbuilt(&c, &g);
	for (size_t i = 0; i < cfg->nservices; i++)
		finish_service(&c, cfg, i);
	check_listen_unique(&c, cfg);
	if (cfg->nservices) {
		check_tls_default(&c, cfg, p);
		check_ticket_keys(&c, cfg, p);
	}
	c.file = where;
	if (cfg->nservices == 0)
		report(&c, 0, "no service defined");
	return c.nerr;
}

void config_free(struct config *cfg)
{
	struct priv *p;

	if (!cfg)
		return;
	p = priv_of(cfg);
	for (size_t i = 0; i < cfg->nservices; i++)
		service_fields_free(&cfg->services[i]);
	free(cfg->services);
	global_fields_free(cfg);
	free(p->ssrc);
	free(p->gfile);
	free(p);
}

static int conf_name(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return d->d_name[0] != '.' && n > 5 &&
	    strcmp(d->d_name + n - 5, ".conf") == 0;
}

/* Byte order, whatever the locale: file order must not depend on LANG. */
static int name_order(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

/* The whole file, or NULL with errno set. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL, *nb;
	size_t cap = 0;
	int e = 0;

	*len = 0;
	if (!f)
		return NULL;
	while (!e && !feof(f)) {
		if (*len == cap) {
			if (!(nb = realloc(buf, cap * 2 + 4096))) {
				e = ENOMEM;
				break;
			}
			buf = nb;
			cap = cap * 2 + 4096;
		}
		*len += fread(buf + *len, 1, cap - *len, f);
		if (ferror(f))
			e = errno ? errno : EIO;
	}
	fclose(f);
	if (e) {
		free(buf);
		buf = NULL;
		errno = e;
	}
	return buf;
}

static int load_file(struct config *cfg, const char *dir, const char *name,
    FILE *err)
{
	struct ctx c = { err, NULL, 0, 0 };
	struct stat st;
	size_t len;
	char *path, *text = NULL;
	int n = 0;

	if (asprintf(&path, "%s/%s", dir, name) < 0) {
		c.file = dir;
		report(&c, 0, "out of memory");
		return 1;
	}
	c.file = path;
	/* stat first: opening a FIFO named x.conf would block. A directory
	 * is passed over; a FIFO or a device is refused, not ignored. */
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		n = 0;
	else if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		report(&c, 0, "not a regular file");
	else if ((text = slurp(path, &len)))
		n = config_parse(cfg, path, text, len, err);
	else
		report(&c, 0, "cannot read: %s", strerror(errno));
	free(text);
	free(path);
	return n + c.nerr;
}

struct config *config_load(const char *dir, FILE *err)
{
	struct ctx c = { err, dir, 0, 0 };
	struct dirent **list;
	struct config *cfg;
	int n, nerr = 0;

	if ((n = scandir(dir, &list, conf_name, name_order)) < 0) {
		report(&c, 0, "cannot read: %s", strerror(errno));
		return NULL;
	}
	if (!(cfg = config_new()))
		report(&c, 0, "out of memory");
	for (int i = 0; i < n; i++) {
		if (cfg)
			nerr += load_file(cfg, dir, list[i]->d_name, err);
		free(list[i]);
	}
	free(list);
	if (cfg && n == 0)
		report(&c, 0, "no .conf file");
	else if (cfg)
		nerr += config_finish(cfg, dir, err);
	if (cfg && nerr + c.nerr == 0)
		return cfg;
	config_free(cfg);
	return NULL;
}

bool config_key_where(const struct config *cfg, const struct service *svc,
    const char *key, size_t index, const char **file, int *line)
{
	const struct priv *p = (const struct priv *)(const void *)cfg;
	int k = find_key(key, strlen(key));
	const struct src *src;
	size_t si;

	*file = p->gfile ? p->gfile : "[global]";
	*line = p->gline;
	if (k < 0)
		return false;
	if (!svc) {
		*line = p->gsrc.line[k] ? p->gsrc.line[k] : p->gline;
		return p->gsrc.line[k] != 0;
	}
	si = (size_t)(svc - cfg->services);
	if (si >= cfg->nservices)
		return false;
	src = &p->ssrc[si];
	*file = svc->file;
	*line = src->line[k];
	if ((k == K_LISTEN_CERT || k == K_LISTEN_KEY) && index < svc->ncerts)
		*line = k == K_LISTEN_CERT ? svc->certs[index].cert_line :
		    svc->certs[index].key_line;
	if (*line)
		return true;
	*line = svc->line;
	return false;
}

const char *config_mode_name(enum hop_mode m)
{
	return (unsigned)m <= MODE_IMPLICIT ? w_mode[m] : "?";
}

const char *config_verify_name(enum verify_level v)
{
	return (unsigned)v <= VERIFY_DANE_ONLY ? w_verify[v] : "?";
}

/* The client's address as the family the CIDRs are stored in. */
static bool sockaddr_bytes(const struct sockaddr *sa, sa_family_t *fam,
    uint8_t a[16])
{
	struct sockaddr_in s4;
	struct sockaddr_in6 s6;

	if (sa->sa_family == AF_INET) {
		memcpy(&s4, sa, sizeof s4);
		memcpy(a, &s4.sin_addr, 4);
		*fam = AF_INET;
		return true;
	}
	if (sa->sa_family != AF_INET6)
		return false;
	memcpy(&s6, sa, sizeof s6);
	memcpy(a, &s6.sin6_addr, 16);
	*fam = AF_INET6;
	if (memcmp(a, v4mapped, 12) == 0) {
		memmove(a, a + 12, 4);
		*fam = AF_INET;
	}
	return true;
}

static bool prefix_match(const uint8_t *net, const uint8_t *a, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	uint8_t mask = (uint8_t)(0xff00u >> rest);

	return memcmp(net, a, full) == 0 &&
	    (rest == 0 || (a[full] & mask) == net[full]);
}

bool config_cidrs_match(const struct cidrs *list, const struct sockaddr *sa)
{
	uint8_t a[16];
	sa_family_t fam;

	if (!list || !sa)
		return false;
	if (list->any)
		return true;
	if (!sockaddr_bytes(sa, &fam, a))
		return false;
	for (size_t i = 0; i < list->n; i++)
		if (list->v[i].family == fam &&
		    prefix_match(list->v[i].addr, a, list->v[i].bits))
			return true;
	return false;
}

bool config_plain_allowed(const struct service *svc, const struct sockaddr *sa)
{
	return svc && config_cidrs_match(&svc->plain_from, sa);
}

bool config_proxy_trusted(const struct service *svc, const struct sockaddr *sa)
{
	return svc && config_cidrs_match(&svc->proxy_from, sa);
}
