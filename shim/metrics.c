/* metrics: shared counters and their Prometheus text (see metrics.h). */
#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const char *const ciphers[METRICS_CIPHERS] = {
	"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
	"TLS_CHACHA20_POLY1305_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
};

static const char *const codes[METRICS_CODES] = {
	"starttls-not-supported", "certificate-host-mismatch",
	"certificate-expired", "certificate-not-trusted", "validation-failure",
	"tlsa-invalid", "dnssec-invalid", "dane-required", "other",
};

static const char *const auths[METRICS_AUTHS] = {
	"none", "encrypt", "ca", "pin", "dane-ee", "dane-ta",
};

static const char *const results[MR_COUNT] = { "ok", "refused", "error" };
static const char *const hops[MH_COUNT] = { "listen", "upstream" };
static const char *const versions[MV_COUNT] = { "TLSv1.2", "TLSv1.3", "other" };

/* Upper bounds in microseconds; the last bucket is +Inf. */
static const uint64_t hs_bounds[METRICS_HS_BUCKETS - 1] = {
	1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 5000000,
};
static const uint64_t sess_bounds[METRICS_SESS_BUCKETS - 1] = {
	10000, 50000, 100000, 500000, 1000000, 5000000, 10000000, 30000000,
	60000000, 300000000, 1800000000,
};

static unsigned index_of(const char *const *table, unsigned n, const char *s,
    unsigned other)
{
	for (unsigned i = 0; s != NULL && i < n; i++)
		if (table[i] != NULL && strcmp(table[i], s) == 0)
			return i;
	return other;
}

unsigned metrics_cipher_index(const char *name)
{
	return index_of(ciphers, METRICS_CIPHERS, name, METRICS_CIPHERS);
}

unsigned metrics_code_index(const char *type)
{
	return index_of(codes, METRICS_CODES, type, METRICS_CODES - 1);
}

unsigned metrics_auth_index(const char *auth)
{
	return index_of(auths, METRICS_AUTHS, auth, 0);
}

enum metrics_version metrics_version_index(const char *v)
{
	return (enum metrics_version)index_of(versions, MV_OTHER, v, MV_OTHER);
}

int metrics_service_slot(struct metrics *m, const char *name)
{
	unsigned i;

	for (i = 0; i < m->nservices; i++)
		if (strncmp(m->service[i], name, METRICS_NAME) == 0)
			return (int)i;
	if (m->nservices == METRICS_SERVICES || strlen(name) >= METRICS_NAME)
		return -1;
	/* The name is in place before a reader can count it. */
	snprintf(m->service[i], METRICS_NAME, "%s", name);
	__atomic_store_n(&m->nservices, i + 1, __ATOMIC_RELEASE);
	return (int)i;
}

void metrics_add(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

void metrics_gauge(int64_t *g, int64_t d)
{
	__atomic_fetch_add(g, d, __ATOMIC_RELAXED);
}

static void observe(struct metrics_hist *h, const uint64_t *bounds,
    unsigned nb, uint64_t us)
{
	unsigned i = 0;

	while (i < nb - 1 && us > bounds[i])
		i++;
	metrics_add(&h->bucket[i], 1);
	metrics_add(&h->count, 1);
	metrics_add(&h->sum_us, us);
}

void metrics_observe_hs(struct metrics_hist *h, uint64_t us)
{
	observe(h, hs_bounds, METRICS_HS_BUCKETS, us);
}

void metrics_observe_session(struct metrics_hist *h, uint64_t us)
{
	observe(h, sess_bounds, METRICS_SESS_BUCKETS, us);
}

/* ---- rendering ---- */

struct out {
	char *p;
	size_t len, cap;
};

__attribute__((format(printf, 2, 3)))
static void put(struct out *o, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if ((size_t)n >= sizeof(tmp))
		n = sizeof(tmp) - 1;
	if (o->len + (size_t)n <= o->cap)
		memcpy(o->p + o->len, tmp, (size_t)n);
	o->len += (size_t)n;
}

static void head(struct out *o, const char *name, const char *type,
    const char *help)
{
	put(o, "# HELP mailshim_%s %s\n# TYPE mailshim_%s %s\n", name, help, name, type);
}

static uint64_t ld(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Sum one uint64_t field at byte offset off of every worker slot. */
static uint64_t sum(const struct metrics *m, unsigned nw, size_t off)
{
	uint64_t s = 0;

	for (unsigned i = 0; i < nw; i++)
		s += ld((const uint64_t *)(const void *)((const char *)&m->w[i] + off));
	return s;
}

#define SUM(field) sum(m, nw, offsetof(struct metrics_worker, field))

static void hist(struct out *o, const struct metrics *m, unsigned nw,
    const char *name, const char *label, size_t off, const uint64_t *bounds,
    unsigned nb)
{
	uint64_t cum = 0;

	for (unsigned b = 0; b < nb; b++) {
		cum += sum(m, nw, off + offsetof(struct metrics_hist, bucket) +
		    b * sizeof(uint64_t));
		if (b < nb - 1)
			put(o, "mailshim_%s_bucket{%s%sle=\"%g\"} %llu\n", name, label,
			    *label ? "," : "", bounds[b] / 1e6, (unsigned long long)cum);
		else
			put(o, "mailshim_%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, label,
			    *label ? "," : "", (unsigned long long)cum);
	}
	put(o, "mailshim_%s_sum%s%s%s %.6f\n", name, *label ? "{" : "", label,
	    *label ? "}" : "", sum(m, nw, off + offsetof(struct metrics_hist, sum_us)) / 1e6);
	put(o, "mailshim_%s_count%s%s%s %llu\n", name, *label ? "{" : "", label,
	    *label ? "}" : "", (unsigned long long)
	    sum(m, nw, off + offsetof(struct metrics_hist, count)));
}

static void render_sessions(struct out *o, const struct metrics *m, unsigned nw,
    unsigned ns)
{
	int64_t active = 0;

	head(o, "sessions_total", "counter", "Finished sessions by service and result.");
	for (unsigned s = 0; s < ns; s++)
		for (unsigned r = 0; r < MR_COUNT; r++)
			put(o, "mailshim_sessions_total{service=\"%s\",result=\"%s\"} %llu\n",
			    m->service[s], results[r], (unsigned long long)
			    SUM(svc[s].sessions[r]));
	head(o, "bytes_total", "counter", "Bytes relayed by service and direction.");
	for (unsigned s = 0; s < ns; s++) {
		put(o, "mailshim_bytes_total{service=\"%s\",direction=\"in\"} %llu\n",
		    m->service[s], (unsigned long long)SUM(svc[s].bytes_in));
		put(o, "mailshim_bytes_total{service=\"%s\",direction=\"out\"} %llu\n",
		    m->service[s], (unsigned long long)SUM(svc[s].bytes_out));
	}
	for (unsigned i = 0; i < METRICS_PROCS; i++)
		active += __atomic_load_n(&m->active[i], __ATOMIC_RELAXED);
	head(o, "active_sessions", "gauge", "Sessions open now.");
	put(o, "mailshim_active_sessions %lld\n", (long long)active);
}

static void render_tls(struct out *o, const struct metrics *m, unsigned nw)
{
	head(o, "tls_handshakes_total", "counter",
	    "Completed TLS handshakes by hop, version and cipher.");
	for (unsigned h = 0; h < MH_COUNT; h++)
		for (unsigned v = 0; v < MV_COUNT; v++)
			for (unsigned c = 0; c <= METRICS_CIPHERS; c++) {
				uint64_t n = SUM(handshakes[h][v][c]);
				if (n == 0)
					continue;
				put(o, "mailshim_tls_handshakes_total{hop=\"%s\",version=\"%s\","
				    "cipher=\"%s\"} %llu\n", hops[h], versions[v],
				    c < METRICS_CIPHERS ? ciphers[c] : "other",
				    (unsigned long long)n);
			}
	head(o, "refusals_total", "counter",
	    "Sessions refused by a TLS policy, by RFC 8460 result type.");
	for (unsigned c = 0; c < METRICS_CODES; c++)
		put(o, "mailshim_refusals_total{reason_code=\"%s\"} %llu\n", codes[c],
		    (unsigned long long)SUM(refusals[c]));
	head(o, "upstream_auth_total", "counter",
	    "Upstream hops by how the server was authenticated.");
	for (unsigned a = 0; a < METRICS_AUTHS; a++)
		put(o, "mailshim_upstream_auth_total{auth=\"%s\"} %llu\n", auths[a],
		    (unsigned long long)SUM(auth[a]));
}

size_t metrics_render(const struct metrics *m, unsigned nworkers, char *out,
    size_t cap)
{
	struct out o = { out, 0, cap };
	unsigned nw = nworkers < METRICS_WORKERS ? nworkers : METRICS_WORKERS;
	unsigned ns = __atomic_load_n(&m->nservices, __ATOMIC_ACQUIRE);
	char label[32];

	render_sessions(&o, m, nw, ns);
	render_tls(&o, m, nw);
	head(&o, "handshake_seconds", "histogram", "TLS handshake time by hop.");
	for (unsigned h = 0; h < MH_COUNT; h++) {
		snprintf(label, sizeof(label), "hop=\"%s\"", hops[h]);
		hist(&o, m, nw, "handshake_seconds", label,
		    offsetof(struct metrics_worker, handshake[h]), hs_bounds,
		    METRICS_HS_BUCKETS);
	}
	head(&o, "session_seconds", "histogram", "Session duration.");
	hist(&o, m, nw, "session_seconds", "", offsetof(struct metrics_worker, session),
	    sess_bounds, METRICS_SESS_BUCKETS);
	head(&o, "reloads_total", "counter", "Configuration reloads by outcome.");
	put(&o, "mailshim_reloads_total{result=\"ok\"} %llu\n",
	    (unsigned long long)ld(&m->reloads_ok));
	put(&o, "mailshim_reloads_total{result=\"failed\"} %llu\n",
	    (unsigned long long)ld(&m->reloads_failed));
	head(&o, "config_generation", "gauge", "Configuration loads in force so far (1 = the first).");
	put(&o, "mailshim_config_generation %llu\n", (unsigned long long)ld(&m->generation));
	head(&o, "up", "gauge", "1 while serving, 0 while stopping.");
	put(&o, "mailshim_up %d\n", __atomic_load_n(&m->stopping, __ATOMIC_RELAXED) ? 0 : 1);
	if (o.len < cap)
		out[o.len] = '\0';
	return o.len;
}
