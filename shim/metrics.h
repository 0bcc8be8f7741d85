/*
 * metrics: counters of every worker in one block of memory shared with
 * the supervisor (mapped before the workers are forked), and their
 * rendering as Prometheus text (format 0.0.4). Each worker writes only
 * its own slot, with relaxed atomic adds, and the supervisor sums the
 * slots when scraped: no lock, no message, nothing on the hot path but an
 * add. A slot belongs to a worker number, not a process, so a worker that
 * dies and is restarted goes on counting where it stopped: counters never
 * go down. Pure: the mapping itself is made by the caller.
 */
#ifndef MAILSHIM_METRICS_H
#define MAILSHIM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_WORKERS 64
#define METRICS_SERVICES 64
#define METRICS_NAME 64
/* Worker processes alive at once (a reload's old ones included). */
#define METRICS_PROCS 256

enum metrics_result { MR_OK, MR_REFUSED, MR_ERROR, MR_COUNT };
enum metrics_hop { MH_LISTEN, MH_UPSTREAM, MH_COUNT };
enum metrics_version { MV_TLS12, MV_TLS13, MV_OTHER, MV_COUNT };

/* Ciphers counted by name (the rest as "other"); see metrics.c. */
#define METRICS_CIPHERS 8
/* RFC 8460 result types (plus "other"). */
#define METRICS_CODES 9
/* upstream_auth kinds: none encrypt ca pin dane-ee dane-ta. */
#define METRICS_AUTHS 6
/* Histogram buckets (the last is +Inf). */
#define METRICS_HS_BUCKETS 12
#define METRICS_SESS_BUCKETS 12

struct metrics_hist {
	uint64_t bucket[METRICS_SESS_BUCKETS > METRICS_HS_BUCKETS ?
	    METRICS_SESS_BUCKETS : METRICS_HS_BUCKETS];
	uint64_t count;
	uint64_t sum_us;
};

struct metrics_svc {
	uint64_t sessions[MR_COUNT];
	uint64_t bytes_in, bytes_out;       /* client -> upstream, back */
};

struct metrics_worker {
	struct metrics_svc svc[METRICS_SERVICES];
	uint64_t handshakes[MH_COUNT][MV_COUNT][METRICS_CIPHERS + 1];
	uint64_t refusals[METRICS_CODES];
	uint64_t auth[METRICS_AUTHS];
	struct metrics_hist handshake[MH_COUNT];
	struct metrics_hist session;
};

/* The shared block. Service names are assigned slots by the supervisor
 * at each load (a name keeps its slot across reloads). */
struct metrics {
	uint64_t reloads_ok, reloads_failed;
	uint64_t generation;
	int64_t stopping;
	uint32_t nservices;
	char service[METRICS_SERVICES][METRICS_NAME];
	/* Sessions open now, one gauge per worker process: the supervisor
	 * zeroes a process's gauge when it reaps it, so a worker killed with
	 * its sessions open leaves no phantom count behind. */
	int64_t active[METRICS_PROCS];
	struct metrics_worker w[METRICS_WORKERS];
};

/* A service name's slot, assigned on first sight; -1 when all are taken. */
int metrics_service_slot(struct metrics *m, const char *name);

/* Lookups for the label tables; never fail ("other" is the last index). */
unsigned metrics_cipher_index(const char *standard_name);
unsigned metrics_code_index(const char *rfc8460_type);
unsigned metrics_auth_index(const char *auth);
enum metrics_version metrics_version_index(const char *version);

/* Counting, from the worker that owns w. */
void metrics_add(uint64_t *counter, uint64_t n);
void metrics_gauge(int64_t *gauge, int64_t delta);
void metrics_observe_hs(struct metrics_hist *h, uint64_t us);
void metrics_observe_session(struct metrics_hist *h, uint64_t us);

/*
 * Prometheus text of every worker summed. Returns the length written, or
 * the length needed (> cap) when out is too small: call again with more.
 */
size_t metrics_render(const struct metrics *m, unsigned nworkers, char *out,
    size_t cap);

#endif
