/* uplookup: addresses and TLSA records for one session (uplookup.h). */
#include "uplookup.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

static struct uplookup *of_wait(struct upname_wait *w)
{
	return (struct uplookup *)(void *)((char *)w - offsetof(struct uplookup, wait));
}

static int tlsa_at(struct uplookup *ul, const char *host);

static void on_tlsa(const struct dns_answer *a, void *arg)
{
	struct uplookup *ul = arg;
	struct verify_session *v = ul->v;
	const uint8_t *rd[64];
	size_t len[64], n = 0;

	ul->tlsa = NULL;
	if (a->status == DNS_BOGUS || a->status == DNS_FAIL || a->status == DNS_TIMEOUT) {
		char why[200];
		snprintf(why, sizeof(why), "TLSA lookup %s: %s%s%s", a->name,
		    dns_status_name(a->status), a->status == DNS_BOGUS ? ": " : "",
		    a->status == DNS_BOGUS ? dns_why_bogus(a) : "");
		verify_set_tlsa_state(v, TLSA_FAILED, why);
	} else if (a->status == DNS_INSECURE) {
		/* An insecure TLSA RRset is no TLSA RRset (RFC 7672 2.2). */
		verify_set_tlsa_state(v, TLSA_NONE, "TLSA records not DNSSEC-signed");
	} else if (a->nrr == 0) {
		/* Secure denial at the expanded name: the configured one next. */
		if (!ul->orig_tried && strcasecmp(ul->base, ul->svc->upstream_host) != 0) {
			ul->orig_tried = true;
			if (tlsa_at(ul, ul->svc->upstream_host) == 0)
				return;
			/* Not asked: a failed lookup (set by tlsa_at), never "none". */
		} else {
			verify_set_tlsa_state(v, TLSA_NONE, "no TLSA records");
		}
	} else {
		for (size_t i = 0; i < a->nrr && n < 64; i++, n++) {
			rd[n] = a->rr[i].data;
			len[n] = a->rr[i].len;
		}
		verify_set_tlsa(v, rd, len, n, ul->base);
	}
	ul->wake(ul);
}

/* Ask for the TLSA records at base name host: 0 asked, -1 not (the
 * outcome is then a failed lookup). */
static int tlsa_at(struct uplookup *ul, const char *host)
{
	char q[300];

	free(ul->base);
	if ((ul->base = strdup(host)) != NULL) {
		snprintf(q, sizeof(q), "_%s._tcp.%s", ul->svc->upstream_port, host);
		ul->tlsa = dns_lookup(ul->dns, q, DNS_TYPE_TLSA, on_tlsa, ul);
		if (ul->tlsa != NULL)
			return 0;
	}
	verify_set_tlsa_state(ul->v, TLSA_FAILED, "out of memory for a DNS lookup");
	return -1;
}

/* The addresses are in: decide about TLSA while the session connects. */
static int ready(struct uplookup *ul, struct fail *f)
{
	struct upname *u = ul->name;

	ul->next = 0;
	if (!ul->dane)
		return UPLOOKUP_READY;
	if (!u->secure) {
		/* No DNSSEC for the addresses: no TLSA either (RFC 7672 2.2.2). */
		verify_set_tlsa_state(ul->v, TLSA_NONE, "address records not DNSSEC-signed");
		return UPLOOKUP_READY;
	}
	(void)tlsa_at(ul, u->canon);
	(void)f;
	return UPLOOKUP_READY;
}

static int failed(struct uplookup *ul, struct fail *f)
{
	struct upname *u = ul->name;

	/* Under DANE a lookup that fails is a policy refusal: never a guess. */
	if (ul->dane && u->last != DNS_SECURE && u->last != DNS_INSECURE)
		return fail_set(f, R_UP_DNSSEC_INVALID, u->why), UPLOOKUP_FAIL;
	fail_set(f, R_UP_RESOLVE, u->why);
	return UPLOOKUP_FAIL;
}

static void on_name(struct upname_wait *w, bool ok)
{
	struct uplookup *ul = of_wait(w);

	(void)ok;
	ul->wake(ul);
}

int uplookup_start(struct uplookup *ul, struct fail *f)
{
	ul->dane = ul->svc->upstream_verify == VERIFY_DANE ||
	    ul->svc->upstream_verify == VERIFY_DANE_ONLY;
	ul->wait.cb = on_name;
	switch (upname_get(ul->name, &ul->wait)) {
	case UPNAME_READY:
		return ready(ul, f);
	case UPNAME_WAIT:
		return UPLOOKUP_WAIT;
	default:
		return failed(ul, f);
	}
}

int uplookup_resume(struct uplookup *ul, struct fail *f)
{
	if (ul->name->naddr == 0)
		return failed(ul, f);
	return ready(ul, f);
}

const struct sockaddr_storage *uplookup_next(struct uplookup *ul)
{
	if (ul->next >= ul->name->naddr)
		return NULL;
	return &ul->name->addr[ul->next++];
}

const char *uplookup_sni(const struct uplookup *ul)
{
	/* RFC 7672 2.2.3 (8.1 for MX): SNI is the TLSA base name. */
	return ul->dane && ul->base != NULL ? ul->base : NULL;
}

void uplookup_free(struct uplookup *ul)
{
	upname_cancel(&ul->wait);
	dns_cancel(ul->tlsa);
	ul->tlsa = NULL;
	free(ul->base);
	ul->base = NULL;
}
