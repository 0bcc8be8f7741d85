/* mxroute: which MX host a relay session's RCPT goes to: the MX, address
 * and TLSA lookups, the next host when one fails, and the RCPT's answer
 * when none would take it (mxsess_int.h). */
#include "mxsess_int.h"

/* Keep the most telling failure of the hosts tried for this RCPT. */
void mx_note(struct mxsess *s, enum reason why, const char *detail)
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
	mx_up_close(s, false);
	s->tx_why = s->frank ? s->fwhy : R_UP_CONNECT;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", s->fdetail);
	if (mx_say(s, text) < 0)
		return -1;
	return mx_answered(s);
}

/* The answer to the RCPT comes from here, and the MX is let go. */
int mx_rcpt_final(struct mxsess *s, const char *r, size_t n, enum reason why,
    const char *detail)
{
	mx_up_close(s, true);
	s->tx_why = why;
	snprintf(s->tx_detail, sizeof(s->tx_detail), "%s", detail ? detail : "");
	if (mx_reply(s, r, n) < 0)
		return -1;
	return mx_answered(s);
}

/* This host failed: the next one. */
int mx_host_fail(struct mxsess *s, enum reason why, const char *detail)
{
	mx_note(s, why, detail);
	mx_up_close(s, why != R_UP_CONNECT && why != R_UP_LOST);
	s->imx++;
	return mx_host_next(s);
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
		r = mx_host_fail(s, R_UP_DNSSEC_INVALID, why);
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
			r = mx_host_fail(s, R_UP_DANE_REQUIRED, "no DNSSEC-secure TLSA records");
		else
			r = mx_addr_connect(s);
	}
	mx_resume(s, r);
}

/* The host's addresses are in: TLSA where DANE applies, then connect. */
static int addrs_done(struct mxsess *s)
{
	const struct service *svc = s->svc->svc;
	char q[300];

	/* No MX and, definitively, no address either: no host takes mail
	 * for the domain (RFC 5321 5.1). */
	if (s->naddr == 0 && s->implicit_mx)
		return mx_rcpt_final(s, LIT("550 5.1.2 The recipient domain has no MX and no "
		    "address records\r\n"), R_MX_NO_DOMAIN, s->dom);
	if (s->naddr == 0)
		return mx_host_fail(s, R_UP_RESOLVE, "no address records");
	verify_session_free(&s->verify);
	verify_session_init(&s->verify, svc);
	s->verify.name = s->host;
	s->iaddr = 0;
	if (s->verify.tlsa == TLSA_NOT_WANTED)
		return mx_addr_connect(s);
	/* RFC 7672 2.2: TLSA only behind a secure MX RRset and secure
	 * address records; the base name is the MX host itself. */
	if (!s->mx_secure || !s->addr_secure) {
		verify_set_tlsa_state(&s->verify, TLSA_NONE,
		    "MX or address records not DNSSEC-signed");
		if (svc->upstream_verify == VERIFY_DANE_ONLY)
			return mx_host_fail(s, R_UP_DANE_REQUIRED, "MX or address records "
			    "not DNSSEC-signed");
		return mx_addr_connect(s);
	}
	snprintf(q, sizeof(q), "_%u._tcp.%s", (unsigned)svc->mx_port, s->host);
	s->q = dns_lookup(s->w->dns, q, DNS_TYPE_TLSA, on_tlsa, s);
	if (s->q == NULL)
		return mx_host_fail(s, R_NO_MEMORY, NULL);
	return 0;
}

/* A or AAAA of the host is bogus, SERVFAIL or timed out: the host fails,
 * its other family's addresses are not used. RFC 7672 2.1.1: such an
 * answer is never taken as unsigned (a way round DANE), and the upstream
 * lookup (upname.c, uplookup.c) fails the same way. */
static int addr_failed(struct mxsess *s, const struct dns_answer *a)
{
	const struct service *svc = s->svc->svc;
	bool dane = svc->upstream_verify == VERIFY_DANE ||
	    svc->upstream_verify == VERIFY_DANE_ONLY;
	char why[400];

	snprintf(why, sizeof(why), "%s lookup %s: %s%s%s",
	    a->rrtype == DNS_TYPE_AAAA ? "AAAA" : "A", s->host, dns_status_name(a->status),
	    a->status == DNS_BOGUS ? ": " : "", a->status == DNS_BOGUS ? dns_why_bogus(a) : "");
	return mx_host_fail(s, dane ? R_UP_DNSSEC_INVALID : R_UP_RESOLVE, why);
}

static void on_addr(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	if (a->status != DNS_SECURE && a->status != DNS_INSECURE) {
		mx_resume(s, addr_failed(s, a));
		return;
	}
	if (a->nrr > 0 && a->status != DNS_SECURE)
		s->addr_secure = false;
	s->naddr += dns_addrs(a, (uint16_t)s->svc->svc->mx_port, s->addr + s->naddr,
	    ADDR_MAX - s->naddr);
	if (s->addr_step++ == 0) {
		s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_AAAA, on_addr, s);
		r = s->q == NULL ? mx_host_fail(s, R_NO_MEMORY, NULL) : 0;
	} else {
		r = addrs_done(s);
	}
	mx_resume(s, r);
}

int mx_host_next(struct mxsess *s)
{
	if (s->imx >= s->nmx)
		return rcpt_failed(s);
	snprintf(s->host, sizeof(s->host), "%s", s->mx[s->imx].host);
	s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
	s->naddr = s->iaddr = 0;
	s->addr_step = 0;
	s->addr_secure = true;
	mx_up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->host, DNS_TYPE_A, on_addr, s);
	if (s->q == NULL)
		return mx_rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	mx_up_timer(s, s->w->cfg->timeout_dns_ms * 3);
	return 0;
}

static void on_mx(const struct dns_answer *a, void *arg)
{
	struct mxsess *s = arg;
	uint32_t rnd[ROUTE_MX_MAX] = { 0 };
	struct route_mx one;
	size_t n = 0;
	bool null_mx = false;
	int r;

	assert(s->magic == MX_MAGIC);
	s->q = NULL;
	snprintf(s->host, sizeof(s->host), "%s", s->dom);
	if (a->status != DNS_SECURE && a->status != DNS_INSECURE) {
		char why[400];
		snprintf(why, sizeof(why), "MX lookup %s: %s", s->dom, dns_status_name(a->status));
		s->host[0] = '\0';
		r = mx_rcpt_final(s, LIT("451 4.4.3 MX lookup for the recipient domain failed\r\n"),
		    a->status == DNS_BOGUS ? R_UP_DNSSEC_INVALID : R_MX_LOOKUP, why);
	} else if (a->nxdomain) {
		s->host[0] = '\0';
		r = mx_rcpt_final(s, LIT("550 5.1.2 The recipient domain does not exist\r\n"),
		    R_MX_NO_DOMAIN, s->dom);
	} else {
		s->mx_secure = a->status == DNS_SECURE;
		for (size_t i = 0; i < a->nrr; i++) {
			if (!route_mx_parse(a->rr[i].data, a->rr[i].len, &one))
				continue;
			if (one.host[0] == '\0')
				null_mx = true;
			else
				route_mx_keep(s->mx, &n, &one);
		}
		s->implicit_mx = a->nrr == 0;
		if (a->nrr == 0) {
			/* RFC 5321 5.1: no MX, the domain itself (implicit MX). */
			s->mx[0].pref = 0;
			snprintf(s->mx[0].host, sizeof(s->mx[0].host), "%s", s->dom);
			n = 1;
		}
		(void)getrandom(rnd, sizeof(rnd), GRND_NONBLOCK);
		s->nmx = route_mx_order(s->mx, n, rnd);
		s->imx = 0;
		if (s->nmx == 0 && !null_mx) {
			/* Records, none of them readable: not a null MX. */
			s->host[0] = '\0';
			r = mx_rcpt_final(s, LIT("451 4.4.3 The MX records of the recipient domain "
			    "are broken\r\n"), R_MX_LOOKUP, "no MX record readable");
		} else if (s->nmx == 0) {
			/* RFC 7505: a null MX, the domain takes no mail. */
			r = mx_rcpt_final(s, LIT("556 5.1.10 The recipient domain accepts no "
			    "mail (null MX)\r\n"), R_MX_NULL, s->dom);
		} else {
			r = mx_host_next(s);
		}
	}
	mx_resume(s, r);
}

/* The first RCPT for a domain: find its MX hosts. */
int mx_bind_start(struct mxsess *s)
{
	s->phase = PH_WAIT;
	s->up_lost = false;
	s->search_end = ev_now(s->w->loop) + MX_SEARCH_MS / 1000.0;
	s->frank = 0;
	s->fwhy = R_NONE;
	s->fdetail[0] = '\0';
	mx_up_enter(s, U_DNS);
	s->q = dns_lookup(s->w->dns, s->dom, DNS_TYPE_MX, on_mx, s);
	if (s->q == NULL)
		return mx_rcpt_final(s, LIT("451 4.3.0 Out of memory\r\n"), R_NO_MEMORY, NULL);
	mx_up_timer(s, s->w->cfg->timeout_dns_ms * 2);
	return 0;
}
