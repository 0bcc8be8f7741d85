/* mxsess: the outbound relay's session (mxsess.h). */
#include "mxsess.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "dns.h"
#include "endpoint.h"
#include "handshake.h"
#include "log.h"
#include "metrics.h"
#include "reason.h"
#include "relay.h"
#include "route.h"
#include "verify.h"

#define MX_MAGIC 0x6d78736eu
#define GONE (-1)
#define TURNS 32
#define LINGER_MS 2000
#define ADDR_MAX 8
#define RCPT_MAX 1000
#define LIT(s) s, sizeof(s) - 1

enum cl_state { CL_HS, CL_STARTTLS, CL_READY, CL_CLOSING, CL_LINGER };
enum phase { PH_CMD, PH_WAIT, PH_BODY };
enum up_state { U_NONE, U_DNS, U_CONNECT, U_GREET, U_EHLO1, U_STARTTLS, U_HS, U_EHLO2,
	U_MAIL, U_RCPT, U_READY, U_DATA, U_DOT };

static const char *const up_names[] = { "none", "dns", "connect", "greet", "ehlo",
	"starttls", "handshake", "ehlo-tls", "mail", "rcpt", "ready", "data", "dot" };

struct mxsess {
	uint32_t magic, id;
	uint8_t cl_state, phase, up_state;
	bool helo, plain_allowed, tls_up, up_lost, greeted;
	struct worker *w;
	struct svc_rt *svc;
	struct mxsess *prev, *next;
	struct endpoint cl, up;
	struct pump cin, cout, uin, uout;   /* client in/out, upstream in/out */
	ev_timer timer;
	ev_idle again;
	ev_tstamp start, tx_start;
	const char *cl_ver, *cl_cipher, *up_ver, *up_auth;
	unsigned ntx;                       /* transactions logged */
	/* The transaction. */
	bool tx, bound, delivered;
	struct route_mail mail;
	char dom[ROUTE_NAME_MAX];
	unsigned nrcpt;
	char rcpt[600];                     /* the RCPT being bound or relayed */
	size_t rcpt_len;
	uint64_t body_bytes;
	struct route_body body;
	enum reason tx_why;
	char tx_detail[420];
	/* Binding: the MX hosts, one host's addresses. */
	struct dns_query *q;
	struct route_mx mx[ROUTE_MX_MAX];
	size_t nmx, imx;
	bool mx_secure, addr_secure;
	uint8_t addr_step;
	struct sockaddr_storage addr[ADDR_MAX];
	size_t naddr, iaddr;
	struct verify_session verify;
	struct route_ext ext;
	enum reason fwhy;                   /* the best failure of this RCPT */
	int frank;
	char fdetail[400];
	char host[ROUTE_NAME_MAX];          /* the MX host in use */
	char up_text[64];
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} peer;
};

static void step(struct mxsess *s);
static int host_next(struct mxsess *s);
static int addr_connect(struct mxsess *s);

static const char *const result_names[] = { "ok", "refused", "error" };

static void up_enter(struct mxsess *s, enum up_state st)
{
	if (log_enabled(LEVEL_DEBUG))
		log_msg(LEVEL_DEBUG, "conn=%08x mx %s -> %s", s->id, up_names[s->up_state],
		    up_names[st]);
	s->up_state = (uint8_t)st;
	s->up.rd_wait = s->up.wr_wait = 0;
}

static void set_timer(struct mxsess *s, uint32_t ms)
{
	ev_timer_stop(s->w->loop, &s->timer);
	ev_timer_set(&s->timer, ms / 1000.0, 0.);
	ev_timer_start(s->w->loop, &s->timer);
}

static void addr_text(const struct sockaddr *a, char *out, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)a;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(out, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)a;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(out, len, "%s:%u", ip, ntohs(s4->sin_port));
	}
}

static void unquote(char *p)
{
	for (; *p != '\0'; p++)
		if (*p == '"' || *p == '\\' || *p == '\n' || *p == '\r')
			*p = '\'';
}

/* One line per transaction (and one for a session that had none). */
static void log_tx(struct mxsess *s, enum reason why, const char *detail)
{
	char line[1400], client[64], words[400] = "", code[64] = "";
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	ev_tstamp from = s->tx ? s->tx_start : s->start;
	int n;

	addr_text(&s->peer.sa, client, sizeof(client));
	if (why != R_NONE) {
		reason_format(why, detail, words, sizeof(words));
		unquote(words);
	}
	if (rpt != NULL)
		snprintf(code, sizeof(code), " reason_code=%s", rpt);
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s mx=%s "
	    "upstream=%s rcpts=%u upstream_tls=%s upstream_auth=%s bytes_in=%llu ms=%lld "
	    "result=%s%s%s%s%s",
	    s->id, s->svc->svc->name, client, s->cl_ver, s->cl_cipher,
	    s->host[0] ? s->host : "none", s->up_text[0] ? s->up_text : "none", s->nrcpt,
	    s->up_ver, s->up_auth, (unsigned long long)s->body_bytes,
	    (long long)((ev_now(s->w->loop) - from) * 1000.0), result_names[res],
	    why != R_NONE ? " reason=\"" : "", words, why != R_NONE ? "\"" : "", code);
	if (n > 0)
		log_line(LEVEL_INFO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	s->ntx++;
	if (s->w->mw != NULL && s->svc->mslot >= 0) {
		struct metrics_svc *ms = &s->w->mw->svc[s->svc->mslot];
		metrics_add(&ms->sessions[res == RES_OK ? MR_OK : res == RES_REFUSED ?
		    MR_REFUSED : MR_ERROR], 1);
		metrics_add(&ms->bytes_in, s->body_bytes);
		if (res == RES_REFUSED && rpt != NULL)
			metrics_add(&s->w->mw->refusals[metrics_code_index(rpt)], 1);
		if (strcmp(s->up_auth, "none") != 0)
			metrics_add(&s->w->mw->auth[metrics_auth_index(s->up_auth)], 1);
	}
}

/* ---- the upstream (MX) hop ---- */

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents);

/* The MX session ends: QUIT when it is at a command boundary. */
static void up_close(struct mxsess *s, bool quit)
{
	dns_cancel(s->q);
	s->q = NULL;
	if (s->up.fd >= 0) {
		if (quit && s->up_state >= U_GREET && s->up_state != U_HS &&
		    pump_approved(&s->uout) == 0) {
			(void)ep_write(&s->up, "QUIT\r\n", 6);
			(void)ep_shutdown(&s->up);
		}
		ep_close(&s->up, s->w->loop);
	}
	ep_init(&s->up, -1);
	pump_free(&s->uin);
	pump_free(&s->uout);
	s->uin.eof = s->uout.eof = false;
	/* Body bytes not yet out have nowhere to go. */
	if (s->cin.b != NULL && s->cin.b->fwd > 0)
		buf_written(s->cin.b, s->cin.b->fwd);
	/* The verify session (TLSA records) belongs to the host, not to one
	 * of its addresses: it lives until the next host's lookup. */
	s->tls_up = false;
	up_enter(s, U_NONE);
}

static int reply(struct mxsess *s, const char *r, size_t n)
{
	if (pump_insert(&s->cout, r, n) < 0)
		return -1;
	return 0;
}

static int say(struct mxsess *s, const char *r)
{
	return reply(s, r, strlen(r));
}

static int send_up(struct mxsess *s, const char *p, size_t n, enum up_state next)
{
	if (pump_insert(&s->uout, p, n) < 0)
		return -1;
	up_enter(s, next);
	set_timer(s, s->svc->svc->timeout_reply_ms);
	return 1;
}

/* Keep the most telling failure of the hosts tried for this RCPT. */
static void note(struct mxsess *s, enum reason why, const char *detail)
{
	int rank;

	switch (why) {
	case R_UP_TLSA_INVALID: case R_UP_DANE_REQUIRED: case R_UP_CERT_HOST:
	case R_UP_CERT_EXPIRED: case R_UP_CERT_UNTRUSTED: case R_UP_CERT_INVALID:
	case R_UP_TLS_FAILED: case R_UP_TLS_VERSION: case R_UP_TLS_CIPHER:
		rank = 5;
		break;
	case R_UP_NO_STARTTLS: case R_UP_INJECTION:
		rank = 4;
		break;
	case R_UP_DNSSEC_INVALID:
		rank = 3;
		break;
	case R_MX_GREETING:
		rank = 2;
		break;
	default:
		rank = 1;
	}
	log_msg(LEVEL_INFO, "conn=%08x mx %s (%s): %s%s%s; trying the next", s->id, s->host,
	    s->up_text[0] ? s->up_text : "-", reason_name(why), detail ? ": " : "",
	    detail ? detail : "");
	if (rank < s->frank)
		return;
	s->frank = rank;
	s->fwhy = why;
	snprintf(s->fdetail, sizeof(s->fdetail), "%s: %s", s->host, detail ? detail : "");
}

/* The RCPT's answer is in: the client may go on. */
static int answered(struct mxsess *s)
{
	s->phase = PH_CMD;
	set_timer(s, s->svc->svc->timeout_idle_ms);
	return 1;
}

/* No MX host would take the RCPT: say why, honestly and temporarily. */
static int rcpt_failed(struct mxsess *s)
{
	const char *r;
	char text[400];

	switch (s->frank) {
	case 5:
		r = "451 4.7.5 No MX host of the domain passed TLS authentication";
		break;
	case 4:
		r = "451 4.7.4 No MX host of the domain offers STARTTLS";
		break;
	case 3:
		r = "451 4.4.3 DNSSEC lookup for the MX hosts failed";
		break;
	case 2:
		r = "451 4.4.0 Every MX host of the domain refused the session";
		break;
	default:
		r = "451 4.4.1 No MX host of the domain answered";
	}
	snprintf(text, sizeof(text), "%s\r\n", r);
	up_close(s, false);
	s->tx_why = s->frank ? s->fwhy : R_UP_CONNECT;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", s->fdetail);
	if (say(s, text) < 0)
		return -1;
	return answered(s);
}

/* The answer to the RCPT comes from here, and the MX is let go. */
static int rcpt_final(struct mxsess *s, const char *r, size_t n, enum reason why,
    const char *detail)
{
	up_close(s, true);
	s->tx_why = why;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", detail ? detail : "");
	if (reply(s, r, n) < 0)
		return -1;
	return answered(s);
}

/* This host failed: the next one. */
static int host_fail(struct mxsess *s, enum reason why, const char *detail)
{
	note(s, why, detail);
	up_close(s, why != R_UP_CONNECT && why != R_UP_LOST);
	s->imx++;
	return host_next(s);
}

static void on_tlsa(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	const uint8_t *rd[64];
	size_t len[64], n = 0;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	if (a->status == DNS_BOGUS || a->status == DNS_FAIL || a->status == DNS_TIMEOUT) {
		char why[400];
		snprintf(why, sizeof(why), "TLSA lookup %s: %s", a->name,
		    dns_status_name(a->status));
		r = host_fail(s, R_UP_DNSSEC_INVALID, why);
	} else {
		if (a->status == DNS_INSECURE || a->nrr == 0) {
			verify_set_tlsa_state(&s->verify, TLSA_NONE, "no TLSA records");
		} else {
			for (size_t i = 0; i < a->nrr && n < 64; i++, n++) {
				rd[n] = a->rr[i].data;
				len[n] = a->rr[i].len;
			}
			verify_set_tlsa(&s->verify, rd, len, n, s->host);
		}
		if (s->verify.tlsa == TLSA_NONE &&
		    s->svc->svc->upstream_verify == VERIFY_DANE_ONLY)
			r = host_fail(s, R_UP_DANE_REQUIRED, "no DNSSEC-secure TLSA records");
		else
			r = addr_connect(s);
	}
	if (r >= 0)
		step(s);
}

/* The host's addresses are in: TLSA where DANE applies, then connect. */
static int addrs_done(struct mxsess *s)
{
	const struct service *svc = s->svc->svc;
	char q[300];

	if (s->naddr == 0)
		return host_fail(s, R_UP_RESOLVE, "no address records");
	verify_session_free(&s->verify);
	verify_session_init(&s->verify, svc);
	s->verify.name = s->host;
	s->iaddr = 0;
	if (s->verify.tlsa == TLSA_NOT_WANTED)
		return addr_connect(s);
	/* RFC 7672 2.2: TLSA only behind a secure MX RRset and secure
	 * address records; the base name is the MX host itself. */
	if (!s->mx_secure || !s->addr_secure) {
		verify_set_tlsa_state(&s->verify, TLSA_NONE,
		    "MX or address records not DNSSEC-signed");
		if (svc->upstream_verify == VERIFY_DANE_ONLY)
			return host_fail(s, R_UP_DANE_REQUIRED, "MX or address records "
			    "not DNSSEC-signed");
		return addr_connect(s);
	}
	snprintf(q, sizeof(q), "_%u._tcp.%s", (unsigned)svc->mx_port, s->host);
	s->q = dns_lookup(s->w->dns, q, DNS_TYPE_TLSA, on_tlsa, s);
	if (s->q == NULL)
		return host_fail(s, R_NO_MEMORY, NULL);
	return 0;
}

static void on_addr(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	if (a->status == DNS_SECURE || a->status == DNS_INSECURE) {
		if (a->nrr > 0 && a->status != DNS_SECURE)
			s->addr_secure = false;
		s->naddr += dns_addrs(a, (uint16_t)s->svc->svc->mx_port, s->addr + s->naddr,
		    ADDR_MAX - s->naddr);
	} else if (a->status == DNS_BOGUS) {
		s->addr_secure = false;
		note(s, R_UP_DNSSEC_INVALID, "address records bogus");
	}
	if (s->addr_step++ == 0) {
		s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_AAAA, on_addr, s);
		r = s->q == NULL ? host_fail(s, R_NO_MEMORY, NULL) : 0;
	} else {
		r = addrs_done(s);
	}
	if (r >= 0)
		step(s);
}

static int host_next(struct mxsess *s)
{
	if (s->imx >= s->nmx)
		return rcpt_failed(s);
	snprintf(s->host, sizeof(s->host), "%s", s->mx[s->imx].host);
	s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
	s->naddr = s->iaddr = 0;
	s->addr_step = 0;
	s->addr_secure = true;
	up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_A, on_addr, s);
	if (s->q == NULL)
		return rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	set_timer(s, s->w->cfg->timeout_dns_ms * 3);
	return 0;
}

static void on_mx(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	uint32_t rnd[ROUTE_MX_MAX] = { 0 };
	size_t n = 0;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	snprintf(s->host, sizeof(s->host), "%s", s->dom);
	if (a->status != DNS_SECURE && a->status != DNS_INSECURE) {
		char why[400];
		snprintf(why, sizeof(why), "MX lookup %s: %s", s->dom, dns_status_name(a->status));
		s->host[0] = '\0';
		r = rcpt_final(s, LIT("451 4.4.3 MX lookup for the recipient domain failed\r\n"),
		    a->status == DNS_BOGUS ? R_UP_DNSSEC_INVALID : R_MX_LOOKUP, why);
	} else if (a->nxdomain) {
		s->host[0] = '\0';
		r = rcpt_final(s, LIT("550 5.1.2 The recipient domain does not exist\r\n"),
		    R_MX_NO_DOMAIN, s->dom);
	} else {
		s->mx_secure = a->status == DNS_SECURE;
		for (size_t i = 0; i < a->nrr && n < ROUTE_MX_MAX; i++)
			if (route_mx_parse(a->rr[i].data, a->rr[i].len, &s->mx[n]))
				n++;
		if (a->nrr == 0) {
			/* RFC 5321 5.1: no MX, the domain itself (implicit MX). */
			s->mx[0].pref = 0;
			snprintf(s->mx[0].host, sizeof(s->mx[0].host), "%s", s->dom);
			n = 1;
		}
		(void)getrandom(rnd, sizeof(rnd), GRND_NONBLOCK);
		s->nmx = route_mx_order(s->mx, n, rnd);
		s->imx = 0;
		if (s->nmx == 0) {
			/* RFC 7505: a null MX, the domain takes no mail. */
			r = rcpt_final(s, LIT("556 5.1.10 The recipient domain accepts no "
			    "mail (null MX)\r\n"), R_MX_NULL, s->dom);
		} else {
			r = host_next(s);
		}
	}
	if (r >= 0)
		step(s);
}

/* The first RCPT for a domain: find its MX hosts. */
static int bind_start(struct mxsess *s)
{
	s->phase = PH_WAIT;
	s->frank = 0;
	s->fwhy = R_NONE;
	s->fdetail[0] = '\0';
	up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->dom, DNS_TYPE_MX, on_mx, s);
	if (s->q == NULL)
		return rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	set_timer(s, s->w->cfg->timeout_dns_ms * 2);
	return 0;
}

static int addr_connect(struct mxsess *s)
{
	const struct sockaddr_storage *a;
	int fd, one = 1;

	if (s->iaddr >= s->naddr) {
		s->imx++;
		return host_next(s);
	}
	a = &s->addr[s->iaddr++];
	addr_text((const struct sockaddr *)a, s->up_text, sizeof(s->up_text));
	fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return host_fail(s, R_UP_SOCKET, strerror(errno));
	ep_init(&s->up, fd);
	ev_init(&s->up.io, up_io_cb);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	up_enter(s, U_CONNECT);
	set_timer(s, s->svc->svc->timeout_connect_ms);
	if (connect(fd, (const struct sockaddr *)a, a->ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in)) < 0) {
		if (errno != EINPROGRESS) {
			note(s, R_UP_CONNECT, strerror(errno));
			up_close(s, false);
			return addr_connect(s);
		}
		s->up.wr_wait = EV_WRITE;
	}
	return 1;
}

static int tls_start(struct mxsess *s)
{
	s->up.ssl = tls_new_upstream(&s->svc->tls, s->up.fd, s->host);
	if (s->up.ssl == NULL || verify_attach(s->up.ssl, &s->verify) < 0)
		return host_fail(s, R_UP_TLS_START, NULL);
	hs_watch(&s->up);
	up_enter(s, U_HS);
	set_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

static int connected(struct mxsess *s)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (s->up.wr_wait)
		return 0;
	if (getsockopt(s->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		note(s, R_UP_CONNECT, strerror(err));
		up_close(s, false);
		return addr_connect(s);
	}
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT)
		return tls_start(s);
	up_enter(s, U_GREET);
	set_timer(s, s->svc->svc->timeout_reply_ms);
	return 1;
}

/* The policy check said yes during the handshake (verify.c). */
static int handshake(struct mxsess *s)
{
	struct fail f;
	int r = hs_step(&s->up, true, s->svc->svc->upstream_min_version, &f);
	static const enum reason rows[] = {
		[VF_NOT_TRUSTED] = R_UP_CERT_UNTRUSTED, [VF_HOST_MISMATCH] = R_UP_CERT_HOST,
		[VF_EXPIRED] = R_UP_CERT_EXPIRED, [VF_NO_PIN] = R_UP_PIN,
		[VF_TLSA_INVALID] = R_UP_TLSA_INVALID, [VF_DANE_REQUIRED] = R_UP_DANE_REQUIRED,
		[VF_DNSSEC_INVALID] = R_UP_DNSSEC_INVALID, [VF_VALIDATION] = R_UP_CERT_INVALID,
		[VF_INTERNAL] = R_UP_TLS_FAILED,
	};

	if (r == 0)
		return 0;
	if (r < 0) {
		if (s->verify.fail != VF_OK && s->verify.fail < sizeof(rows) / sizeof(rows[0]))
			return host_fail(s, rows[s->verify.fail], s->verify.detail);
		return host_fail(s, f.why, f.detail);
	}
	s->up_ver = tls_version(s->up.ssl);
	s->up_auth = verify_auth_name((enum verify_auth)s->verify.auth);
	s->tls_up = true;
	if (s->svc->svc->upstream_tls == MODE_IMPLICIT) {
		up_enter(s, U_GREET);
		set_timer(s, s->svc->svc->timeout_reply_ms);
		return 1;
	}
	return send_up(s, s->svc->ehlo, s->svc->ehlo_len, U_EHLO2);
}

/* The MX's final EHLO reply: replay MAIL FROM as it allows. */
static int mail_replay(struct mxsess *s, const char *p, size_t n)
{
	char line[ROUTE_NAME_MAX * 2 + 80];
	const char *refuse;

	route_ehlo(p, n, &s->ext);
	refuse = route_mail_line(&s->mail, &s->ext, line, sizeof(line));
	if (refuse != NULL)
		return rcpt_final(s, refuse, strlen(refuse), R_MX_UNSUPPORTED, refuse);
	return send_up(s, line, strlen(line), U_MAIL);
}

static void tx_end(struct mxsess *s);

/* One whole reply of the MX, by what it answers. */
static int up_reply(struct mxsess *s, int code, const char *p, size_t n)
{
	char why[120];

	snprintf(why, sizeof(why), "%.*s", (int)(n > 100 ? 100 : n - 2), p);
	switch (s->up_state) {
	case U_GREET:
		if (code != 220)
			return host_fail(s, R_MX_GREETING, why);
		return send_up(s, s->svc->ehlo, s->svc->ehlo_len,
		    s->tls_up ? U_EHLO2 : U_EHLO1);
	case U_EHLO1:
		if (code / 100 != 2)
			return host_fail(s, R_UP_NO_STARTTLS, why);
		route_ehlo(p, n, &s->ext);
		if (!s->ext.starttls)
			return host_fail(s, R_UP_NO_STARTTLS, "MX offered no STARTTLS");
		return send_up(s, LIT("STARTTLS\r\n"), U_STARTTLS);
	case U_STARTTLS:
		if (code != 220)
			return host_fail(s, R_UP_NO_STARTTLS, why);
		/* Bytes after the 220 and before TLS: an injection. */
		if (pump_unseen(&s->uin) > 0)
			return host_fail(s, R_UP_INJECTION, NULL);
		pump_free(&s->uin);
		return tls_start(s);
	case U_EHLO2:
		if (code / 100 != 2)
			return host_fail(s, R_MX_GREETING, why);
		return mail_replay(s, p, n);
	case U_MAIL:
		if (code / 100 != 2)
			return rcpt_final(s, p, n, R_NONE, NULL);
		return send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	case U_RCPT:
		if (reply(s, p, n) < 0)
			return -1;
		if (code / 100 == 2) {
			s->bound = true;
			s->nrcpt++;
		} else if (!s->bound) {
			up_close(s, true);
			return answered(s);
		}
		up_enter(s, U_READY);
		return answered(s);
	case U_DATA:
		if (reply(s, p, n) < 0)
			return -1;
		if (code != 354) {
			up_enter(s, U_READY);
			return answered(s);
		}
		route_body_init(&s->body);
		s->phase = PH_BODY;
		up_enter(s, U_DOT);
		set_timer(s, s->svc->svc->timeout_idle_ms);
		return 1;
	case U_DOT:
		if (reply(s, p, n) < 0)
			return -1;
		s->delivered = code / 100 == 2;
		if (!s->delivered)
			snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
		tx_end(s);
		return answered(s);
	default:
		/* Unasked (a 421 before closing): the MX is gone. */
		s->up_lost = true;
		up_close(s, false);
		return 1;
	}
}

/* The MX hop broke (reset, close, timeout). */
static int up_broke(struct mxsess *s, enum reason why, const char *detail)
{
	switch (s->up_state) {
	case U_CONNECT:
		note(s, why, detail);
		up_close(s, false);
		return addr_connect(s);
	case U_GREET: case U_EHLO1: case U_STARTTLS: case U_HS: case U_EHLO2: case U_MAIL:
		return host_fail(s, why, detail);
	case U_DNS:
		return rcpt_final(s, LIT("451 4.4.3 DNS lookup timed out\r\n"), R_MX_LOOKUP,
		    "timeout");
	case U_RCPT: case U_DATA: case U_DOT:
		s->up_lost = true;
		s->tx_why = why;
		up_close(s, false);
		if (say(s, "451 4.4.2 The MX host closed the connection or timed out\r\n") < 0)
			return -1;
		return answered(s);
	default:
		s->up_lost = true;
		up_close(s, false);
		return 1;
	}
}

static int up_io(struct mxsess *s)
{
	uint8_t rbuf[SMTP_REPLY_MAX];
	int progress = 0, r, code;
	long n;

	if (s->up.fd < 0)
		return 0;
	if (s->up_state == U_CONNECT)
		return connected(s);
	if (s->up_state == U_HS)
		return handshake(s);
	r = pump_write(&s->uout, &s->up);
	if (r == PUMP_ERROR)
		return up_broke(s, R_UP_LOST, strerror(s->up.err));
	progress |= r > 0;
	if (pump_approved(&s->uout) == 0) {
		r = pump_write(&s->cin, &s->up);
		if (r == PUMP_ERROR)
			return up_broke(s, R_UP_LOST, strerror(s->up.err));
		progress |= r > 0;
	}
	r = pump_read(&s->uin, &s->up);
	if (r == PUMP_ERROR || r == PUMP_NOMEM)
		return up_broke(s, R_UP_LOST, s->up.err ? strerror(s->up.err) : NULL);
	progress |= r > 0;
	while (s->up.fd >= 0 && pump_unseen(&s->uin) > 0) {
		n = route_reply(s->uin.b->data + s->uin.b->off + s->uin.b->fwd,
		    pump_unseen(&s->uin), sizeof(rbuf), &code);
		if (n < 0)
			return up_broke(s, R_UP_SMTP, "MX sent a broken reply");
		if (n == 0)
			break;
		memcpy(rbuf, s->uin.b->data + s->uin.b->off + s->uin.b->fwd, (size_t)n);
		buf_cut(s->uin.b, (size_t)n);
		if ((r = up_reply(s, code, (const char *)rbuf, (size_t)n)) < 0)
			return r;
		progress = 1;
	}
	if (s->up.fd >= 0 && s->uin.eof)
		return up_broke(s, R_UP_LOST, "MX closed the connection");
	return progress;
}

/* ---- the transaction ---- */

static void tx_end(struct mxsess *s)
{
	if (!s->tx)
		return;
	if (s->delivered)
		log_tx(s, R_NONE, NULL);
	else if (s->tx_why != R_NONE)
		log_tx(s, s->tx_why, s->tx_detail);
	else if (s->tx_detail[0] != '\0')
		log_tx(s, R_UP_SMTP, s->tx_detail);
	else
		log_tx(s, R_NONE, NULL);
	up_close(s, true);
	s->tx = s->bound = s->delivered = s->up_lost = false;
	s->nrcpt = 0;
	s->body_bytes = 0;
	s->tx_why = R_NONE;
	s->tx_detail[0] = '\0';
	s->host[0] = s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
}

/* ---- the client's commands ---- */

static const char r_ok[] = "250 2.0.0 Ok\r\n";

static int ehlo_reply(struct mxsess *s, const char *name, bool ehlo)
{
	char out[600];
	const struct service *svc = s->svc->svc;
	bool offer_tls = svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL;
	int n;

	if (!ehlo) {
		n = snprintf(out, sizeof(out), "250 %s\r\n", name);
		return reply(s, out, (size_t)n);
	}
	/* Only what every MX can be held to: no CHUNKING (an MX without it
	 * could not take BDAT), no DSN, no AUTH (relay_from decides). */
	n = snprintf(out, sizeof(out), "250-%s\r\n250-PIPELINING\r\n250-SIZE\r\n"
	    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n%s"
	    "250 LIMITS RCPTDOMAINMAX=1\r\n", name, offer_tls ? "250-STARTTLS\r\n" : "");
	return reply(s, out, (size_t)n);
}

static const char *helo_name(const struct mxsess *s, char *out, size_t len)
{
	/* svc->ehlo is "EHLO name\r\n". */
	snprintf(out, len, "%.*s", (int)(s->svc->ehlo_len > 7 ? s->svc->ehlo_len - 7 : 0),
	    s->svc->ehlo + 5);
	return out;
}

static int cmd_rcpt(struct mxsess *s, const char *line, size_t len, const char *args)
{
	char dom[ROUTE_NAME_MAX];
	const char *bad;

	if (!s->tx)
		return say(s, "503 5.5.1 MAIL first\r\n");
	bad = route_rcpt_domain(args, (size_t)(line + len - args), dom, sizeof(dom));
	if (bad != NULL)
		return say(s, bad);
	if (s->nrcpt >= RCPT_MAX)
		return say(s, "452 4.5.3 Too many recipients\r\n");
	if (len + 2 > sizeof(s->rcpt))
		return say(s, "501 5.5.4 Recipient address too long\r\n");
	/* The line as the client wrote it (CRLF ended). */
	memcpy(s->rcpt, line, len);
	s->rcpt_len = len;
	if (s->rcpt_len < 2 || s->rcpt[s->rcpt_len - 2] != '\r') {
		s->rcpt[s->rcpt_len - 1] = '\r';
		s->rcpt[s->rcpt_len++] = '\n';
	}
	if (s->bound) {
		if (strcmp(dom, s->dom) != 0)
			return say(s, "452 4.5.3 One recipient domain per transaction "
			    "(RCPTDOMAINMAX=1), send the others separately\r\n");
		if (s->up_lost || s->up.fd < 0)
			return say(s, "451 4.4.2 The MX host closed the connection\r\n");
		s->phase = PH_WAIT;
		return send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	}
	snprintf(s->dom, sizeof(s->dom), "%s", dom);
	return bind_start(s);
}

static int cmd_data(struct mxsess *s)
{
	if (!s->tx)
		return say(s, "503 5.5.1 MAIL first\r\n");
	if (!s->bound || s->nrcpt == 0)
		return say(s, "554 5.5.1 No valid recipients\r\n");
	if (s->up_lost || s->up.fd < 0)
		return say(s, "451 4.4.2 The MX host closed the connection\r\n");
	s->phase = PH_WAIT;
	return send_up(s, LIT("DATA\r\n"), U_DATA);
}

static int cmd_mail(struct mxsess *s, const char *line, size_t len, const char *args)
{
	const char *bad;

	if (!s->helo)
		return say(s, "503 5.5.1 Send EHLO first\r\n");
	if (s->tx)
		return say(s, "503 5.5.1 Nested MAIL command\r\n");
	bad = route_mail_parse(args, (size_t)(line + len - args), &s->mail);
	if (bad != NULL)
		return say(s, bad);
	s->tx = true;
	s->tx_start = ev_now(s->w->loop);
	return say(s, "250 2.1.0 Ok\r\n");
}

/* The last reply (if it fits) and a clean close; never fails. */
static int close_after(struct mxsess *s, const char *r)
{
	if (r != NULL)
		(void)say(s, r);
	s->cl_state = CL_CLOSING;
	set_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

static int command(struct mxsess *s, const char *line, size_t len)
{
	const struct service *svc = s->svc->svc;
	const char *args;
	enum route_verb v = route_verb(line, len, &args);
	char name[300];

	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len >= 2 ? len - 2 : 0) != NULL ||
	    (len >= 2 && line[len - 2] != '\r') || (len > 0 && (line[0] == ' ' ||
	    line[0] == '\t')))
		return say(s, "500 5.5.2 Bad command line\r\n");
	if (svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL && !s->plain_allowed &&
	    v != ROUTE_V_EHLO && v != ROUTE_V_HELO && v != ROUTE_V_STARTTLS &&
	    v != ROUTE_V_NOOP && v != ROUTE_V_RSET && v != ROUTE_V_QUIT)
		return say(s, "530 5.7.0 Must issue a STARTTLS command first\r\n");
	switch (v) {
	case ROUTE_V_EHLO:
	case ROUTE_V_HELO:
		if (*args == '\r' || *args == '\n' || *args == '\0')
			return say(s, "501 5.5.4 A domain is needed\r\n");
		tx_end(s);
		s->helo = true;
		return ehlo_reply(s, helo_name(s, name, sizeof(name)), v == ROUTE_V_EHLO);
	case ROUTE_V_STARTTLS:
		if (svc->listen_tls != MODE_STARTTLS || s->cl.ssl != NULL)
			return say(s, "502 5.5.1 STARTTLS is not offered\r\n");
		if (pump_unseen(&s->cin) > len)
			return -2;        /* pipelined after STARTTLS: injection */
		tx_end(s);
		s->cl_state = CL_STARTTLS;
		return say(s, "220 2.0.0 Ready to start TLS\r\n");
	case ROUTE_V_MAIL:
		return cmd_mail(s, line, len, args);
	case ROUTE_V_RCPT:
		return cmd_rcpt(s, line, len, args);
	case ROUTE_V_DATA:
		return cmd_data(s);
	case ROUTE_V_RSET:
		tx_end(s);
		return say(s, r_ok);
	case ROUTE_V_NOOP:
		return say(s, r_ok);
	case ROUTE_V_QUIT:
		tx_end(s);
		return close_after(s, "221 2.0.0 Bye\r\n");
	case ROUTE_V_VRFY:
		return say(s, "252 2.0.0 Send some mail, I will try my best\r\n");
	case ROUTE_V_HELP:
		return say(s, "214 2.0.0 mailshim outbound relay\r\n");
	case ROUTE_V_BDAT:
		return say(s, "502 5.5.1 CHUNKING is not offered\r\n");
	case ROUTE_V_AUTH:
		return say(s, "502 5.5.1 AUTH is not offered\r\n");
	default:
		return say(s, "500 5.5.2 Command not recognized\r\n");
	}
}

static void sess_close(struct mxsess *s, enum reason why, const char *detail);

/* Commands out of the client's bytes, one at a time: a command that
 * waits for the MX holds the ones pipelined behind it. */
static int client_parse(struct mxsess *s)
{
	int progress = 0, r;

	while (s->cl_state == CL_READY && s->phase == PH_CMD && pump_unseen(&s->cin) > 0 &&
	    pump_room(&s->cout) >= 1024) {
		const char *p = (const char *)s->cin.b->data + s->cin.b->off + s->cin.b->fwd;
		size_t len = pump_unseen(&s->cin);
		const char *nl = memchr(p, '\n', len);

		if (nl == NULL) {
			if (len >= SMTP_LINE_MAX)
				return close_after(s, "500 5.5.2 Line too long\r\n");
			break;
		}
		len = (size_t)(nl - p) + 1;
		if (len > SMTP_LINE_MAX) {
			return close_after(s, "500 5.5.2 Line too long\r\n");
		}
		r = command(s, p, len);
		if (r == -2) {
			sess_close(s, R_CL_INJECTION, NULL);
			return GONE;
		}
		if (r < 0 && s->magic == MX_MAGIC) {
			sess_close(s, R_NO_MEMORY, NULL);
			return GONE;
		}
		if (s->cin.b != NULL)
			buf_cut(s->cin.b, len);
		progress = 1;
	}
	return progress;
}

/* The body goes to the MX as it is, up to and with its CRLF.CRLF. */
static int body_scan(struct mxsess *s)
{
	const char *why = NULL;
	size_t n = 0;
	int r;

	if (s->phase != PH_BODY || pump_unseen(&s->cin) == 0)
		return 0;
	r = route_body_scan(&s->body, s->cin.b->data + s->cin.b->off + s->cin.b->fwd,
	    pump_unseen(&s->cin), &n, &why);
	if (r == ROUTE_BODY_BAD) {
		/* The MX never sees an end: it drops the partial message. */
		s->tx_why = R_CL_SMTP;
		snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", why);
		up_close(s, false);
		tx_end(s);
		return close_after(s, "554 5.5.2 Bare CR or LF around end-of-data refused\r\n");
	}
	s->cin.b->fwd += (uint32_t)n;
	s->body_bytes += n;
	if (r == ROUTE_BODY_END) {
		s->phase = PH_WAIT;
		set_timer(s, s->svc->svc->timeout_reply_ms);
	}
	return n > 0;
}

/* ---- the session ---- */

static void sess_close(struct mxsess *s, enum reason why, const char *detail)
{
	struct worker *w = s->w;

	if (s->tx) {
		if (s->tx_why == R_NONE && !s->delivered)
			s->tx_why = why;
		tx_end(s);
	} else if (s->ntx == 0 || why != R_NONE) {
		log_tx(s, why, detail);
	}
	up_close(s, false);
	verify_session_free(&s->verify);
	ep_close(&s->cl, w->loop);
	pump_free(&s->cin);
	pump_free(&s->cout);
	ev_timer_stop(w->loop, &s->timer);
	ev_idle_stop(w->loop, &s->again);
	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->mx_live = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	if (w->active != NULL)
		metrics_gauge(w->active, -1);
	if (--s->svc->gen->refs == 0 && s->svc->gen->retired)
		generation_free(s->svc->gen);
	s->magic = 0;
	free(s);
	w->nconns--;
	if (w->on_conn_done != NULL)
		w->on_conn_done(w);
}

static int greet(struct mxsess *s)
{
	char name[300], out[400];
	int n;

	helo_name(s, name, sizeof(name));
	s->greeted = true;
	/* Never an open relay: the sending MTA is known by its address. */
	if (!config_cidrs_match(&s->svc->svc->relay_from, &s->peer.sa)) {
		n = snprintf(out, sizeof(out), "554 5.7.1 %s relaying denied\r\n", name);
		log_tx(s, R_RELAY_DENIED, NULL);
		(void)reply(s, out, (size_t)n);
		return close_after(s, NULL);
	}
	n = snprintf(out, sizeof(out), "220 %s ESMTP mailshim\r\n", name);
	set_timer(s, s->svc->svc->timeout_idle_ms);
	return reply(s, out, (size_t)n) < 0 ? -1 : 1;
}

static int client_hs(struct mxsess *s)
{
	struct fail f;
	int r = hs_step(&s->cl, false, s->svc->svc->listen_min_version, &f);

	if (r == 0)
		return 0;
	if (r < 0) {
		sess_close(s, f.why, f.detail);
		return GONE;
	}
	s->cl_ver = tls_version(s->cl.ssl);
	s->cl_cipher = tls_cipher(s->cl.ssl);
	s->cl_state = CL_READY;
	/* What the client said before TLS is forgotten (RFC 3207 4.2). */
	s->helo = false;
	if (!s->greeted) {
		if (greet(s) < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return GONE;
		}
		return 1;
	}
	set_timer(s, s->svc->svc->timeout_idle_ms);
	return 1;
}

static int client_io(struct mxsess *s)
{
	int progress = 0, r;

	switch (s->cl_state) {
	case CL_HS:
		return client_hs(s);
	case CL_STARTTLS:
		r = pump_write(&s->cout, &s->cl);
		if (r == PUMP_ERROR) {
			sess_close(s, R_CL_LOST, NULL);
			return GONE;
		}
		if (pump_approved(&s->cout) > 0)
			return r > 0;
		pump_free(&s->cin);
		s->cl.ssl = tls_new_listen(&s->svc->tls, s->cl.fd);
		if (s->cl.ssl == NULL) {
			sess_close(s, R_CL_TLS_START, NULL);
			return GONE;
		}
		hs_watch(&s->cl);
		s->cl_state = CL_HS;
		s->cl.rd_wait = s->cl.wr_wait = 0;
		set_timer(s, s->svc->svc->timeout_handshake_ms);
		return 1;
	case CL_LINGER: {
		uint8_t sink[4096];
		ssize_t n = ep_read(&s->cl, sink, sizeof(sink));
		if (n == EP_AGAIN)
			return 0;
		if (n <= 0) {
			sess_close(s, R_NONE, NULL);
			return GONE;
		}
		return 1;
	}
	default:
		break;
	}
	if (s->cl_state == CL_READY && pump_can_read(&s->cin)) {
		r = pump_read(&s->cin, &s->cl);
		if (r == PUMP_ERROR || r == PUMP_NOMEM) {
			sess_close(s, r == PUMP_NOMEM ? R_NO_BUFFER : R_CL_LOST,
			    s->cl.err ? strerror(s->cl.err) : NULL);
			return GONE;
		}
		progress |= r > 0;
	}
	if ((r = body_scan(s)) < 0)
		return r;
	progress |= r;
	if ((r = client_parse(s)) < 0)
		return r;
	progress |= r;
	r = pump_write(&s->cout, &s->cl);
	if (r == PUMP_ERROR) {
		sess_close(s, R_CL_LOST, s->cl.err ? strerror(s->cl.err) : NULL);
		return GONE;
	}
	progress |= r > 0;
	if (s->cl_state == CL_CLOSING && pump_approved(&s->cout) == 0) {
		if (ep_shutdown(&s->cl) == EP_AGAIN)
			return progress;
		s->cl_state = CL_LINGER;
		s->cl.rd_wait = 0;
		set_timer(s, LINGER_MS);
		return 1;
	}
	/* The client left: what it had said is all there is. */
	if (s->cl_state == CL_READY && s->cin.eof && s->phase == PH_CMD &&
	    pump_unseen(&s->cin) == 0 && pump_approved(&s->cout) == 0) {
		sess_close(s, R_NONE, NULL);
		return GONE;
	}
	if (s->cl_state == CL_READY && s->cin.eof && s->phase == PH_BODY) {
		sess_close(s, R_CL_LOST, "client left during DATA");
		return GONE;
	}
	return progress;
}

static int cl_events(struct mxsess *s)
{
	struct endpoint *e = &s->cl;

	switch (s->cl_state) {
	case CL_HS:
		return ep_want(e, false, true);
	case CL_STARTTLS:
	case CL_CLOSING:
		return ep_want(e, false, true);
	case CL_LINGER:
		return ep_want(e, true, false);
	default:
		return ep_want(e, pump_can_read(&s->cin), pump_approved(&s->cout) > 0);
	}
}

static int up_events(struct mxsess *s)
{
	struct endpoint *e = &s->up;

	switch (s->up_state) {
	case U_NONE:
	case U_DNS:
		return 0;
	case U_CONNECT:
	case U_HS:
		return ep_want(e, false, true);
	default:
		return ep_want(e, pump_can_read(&s->uin),
		    pump_approved(&s->uout) > 0 || pump_approved(&s->cin) > 0);
	}
}

static void step(struct mxsess *s)
{
	int i, r = 1;

	for (i = 0; i < TURNS && r > 0; i++) {
		int a = client_io(s), b;
		if (a == GONE)
			return;
		b = up_io(s);
		if (b < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
		r = a | b;
	}
	if (r > 0 || ep_pending(&s->cl) || (s->up.fd >= 0 && ep_pending(&s->up)))
		ev_idle_start(s->w->loop, &s->again);
	pump_trim(&s->cin);
	pump_trim(&s->cout);
	pump_trim(&s->uin);
	pump_trim(&s->uout);
	ep_watch(&s->cl, s->w->loop, cl_events(s));
	if (s->up.fd >= 0)
		ep_watch(&s->up, s->w->loop, up_events(s));
}

static void cl_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)io - offsetof(struct mxsess, cl.io));

	(void)loop;
	assert(s->magic == MX_MAGIC);
	ep_ready(&s->cl, revents);
	step(s);
}

static void up_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)io - offsetof(struct mxsess, up.io));

	(void)loop;
	assert(s->magic == MX_MAGIC);
	ep_ready(&s->up, revents);
	step(s);
}

static void again_cb(struct ev_loop *loop, ev_idle *idle, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)idle - offsetof(struct mxsess, again));

	(void)revents;
	assert(s->magic == MX_MAGIC);
	ev_idle_stop(loop, idle);
	step(s);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct mxsess *s = (struct mxsess *)((char *)t - offsetof(struct mxsess, timer));
	int r;

	(void)loop;
	(void)revents;
	assert(s->magic == MX_MAGIC);
	if (s->cl_state != CL_READY) {
		sess_close(s, s->cl_state == CL_HS ? R_CL_HANDSHAKE_TIMEOUT : R_NONE, NULL);
		return;
	}
	if (s->phase == PH_WAIT) {
		r = up_broke(s, s->up_state == U_CONNECT ? R_UP_CONNECT_TIMEOUT :
		    s->up_state == U_HS ? R_UP_HANDSHAKE_TIMEOUT : R_REPLY_TIMEOUT, "timeout");
		if (r < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
		step(s);
		return;
	}
	if (close_after(s, "421 4.4.2 Idle timeout, closing\r\n") > 0) {
		if (s->tx)
			s->tx_why = R_IDLE_TIMEOUT;
		tx_end(s);
		step(s);
	}
}

void mxsess_start(struct worker *w, struct svc_rt *svc, int fd,
    const struct sockaddr *peer, socklen_t peerlen)
{
	const struct service *sv = svc->svc;
	struct mxsess *s = calloc(1, sizeof(*s));
	int one = 1, r;

	if (s == NULL) {
		log_msg(LEVEL_WARN, "out of memory: dropping a client of service %s", sv->name);
		close(fd);
		return;
	}
	s->magic = MX_MAGIC;
	s->id = w->next_id++;
	svc->gen->refs++;
	s->w = w;
	s->svc = svc;
	s->start = ev_now(w->loop);
	s->cl_ver = s->cl_cipher = s->up_ver = s->up_auth = "none";
	memcpy(&s->peer, peer, peerlen < sizeof(s->peer) ? peerlen : sizeof(s->peer));
	s->plain_allowed = config_plain_allowed(sv, peer);
	ep_init(&s->cl, fd);
	ev_init(&s->cl.io, cl_io_cb);
	ep_init(&s->up, -1);
	ev_init(&s->timer, timer_cb);
	ev_idle_init(&s->again, again_cb);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	s->next = w->mx_live;
	if (w->mx_live != NULL)
		w->mx_live->prev = s;
	w->mx_live = s;
	w->nconns++;
	if (w->active != NULL)
		metrics_gauge(w->active, 1);
	if (sv->listen_tls == MODE_IMPLICIT) {
		s->cl.ssl = tls_new_listen(&svc->tls, fd);
		if (s->cl.ssl == NULL) {
			sess_close(s, R_CL_TLS_START, NULL);
			return;
		}
		hs_watch(&s->cl);
		s->cl_state = CL_HS;
		set_timer(s, sv->timeout_handshake_ms);
	} else {
		s->cl_state = CL_READY;
		r = greet(s);
		if (r < 0) {
			sess_close(s, R_NO_MEMORY, NULL);
			return;
		}
	}
	step(s);
}

void mxsess_close_all(struct worker *w)
{
	while (w->mx_live != NULL)
		sess_close(w->mx_live, R_SHUTDOWN, NULL);
}
