/*
 * conn_log: a session's one log line (the fields of the contract) and
 * its counters (metrics.h).
 */
#include "conn_int.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const result_names[] = { "ok", "refused", "error" };

static void peer_text(const struct conn *c, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (c->peer.sa.sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &c->peer.in6.sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(c->peer.in6.sin6_port));
	} else {
		inet_ntop(AF_INET, &c->peer.in.sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(c->peer.in.sin_port));
	}
}

void log_session(struct conn *c, enum reason why, const char *detail)
{
	char line[1400], client[64], words[400] = "", code[64] = "";
	char subject[256], cert[300] = "";
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	int n;

	peer_text(c, client, sizeof(client));
	if (why != R_NONE) {
		reason_format(why, detail, words, sizeof(words));
		log_unquote(words);
	}
	if (rpt != NULL)
		snprintf(code, sizeof(code), " reason_code=%s", rpt);
	/* Only a listener that asks for client certificates verifies them. */
	if (c->cl.ssl != NULL && c->svc->svc->listen_client_ca != NULL &&
	    strcmp(c->cl_ver, "none") != 0 &&
	    tls_peer_subject(c->cl.ssl, subject, sizeof(subject)) != NULL) {
		log_unquote(subject);
		snprintf(cert, sizeof(cert), " client_cert=\"%s\"", subject);
	}
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s "
	    "upstream=%s upstream_tls=%s upstream_auth=%s bytes_in=%llu "
	    "bytes_out=%llu ms=%lld%s result=%s%s%s%s%s",
	    c->id, c->svc->svc->name, client, c->cl_ver, c->cl_cipher,
	    c->up_text, c->up_ver, c->up_auth,
	    (unsigned long long)c->c2u.in, (unsigned long long)c->u2c.out,
	    (long long)((ev_now(c->w->loop) - c->start) * 1000.0), cert,
	    result_names[res], why != R_NONE ? " reason=\"" : "", words,
	    why != R_NONE ? "\"" : "", code);
	if (n > 0)
		log_line(LEVEL_INFO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* A hop's handshake is done: count it by version and cipher, and time it. */
void count_handshake(struct conn *c, enum metrics_hop hop, SSL *ssl)
{
	struct metrics_worker *mw = c->w->mw;

	if (mw == NULL)
		return;
	metrics_add(&mw->handshakes[hop][metrics_version_index(tls_version(ssl))]
	    [metrics_cipher_index(tls_cipher(ssl))], 1);
	metrics_observe_hs(&mw->handshake[hop],
	    (uint64_t)((ev_now(c->w->loop) - c->hs_start[hop]) * 1e6));
}

void count_session(struct conn *c, enum reason why)
{
	struct metrics_worker *mw = c->w->mw;
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	struct metrics_svc *ms;

	if (c->w->active != NULL)
		metrics_gauge(c->w->active, -1);
	if (mw == NULL || c->svc->mslot < 0)
		return;
	ms = &mw->svc[c->svc->mslot];
	metrics_add(&ms->sessions[res == RES_OK ? MR_OK : res == RES_REFUSED ? MR_REFUSED :
	    MR_ERROR], 1);
	metrics_add(&ms->bytes_in, c->c2u.in);
	metrics_add(&ms->bytes_out, c->u2c.out);
	metrics_observe_session(&mw->session, (uint64_t)((ev_now(c->w->loop) - c->start) * 1e6));
	if (res == RES_REFUSED && rpt != NULL)
		metrics_add(&mw->refusals[metrics_code_index(rpt)], 1);
	if (strcmp(c->up_auth, "none") != 0)
		metrics_add(&mw->auth[metrics_auth_index(c->up_auth)], 1);
}
