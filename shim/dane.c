/*
 * dane: TLSA records and matching (see dane.h). Input comes from DNS and
 * from the peer's certificates, both hostile: lengths are checked, nothing
 * is copied, nothing is allocated.
 */
#include "dane.h"

#include <string.h>

bool dane_parse(const uint8_t *rdata, size_t len, struct dane_tlsa *out)
{
	/* Usage, selector, matching type, and at least one byte of data. */
	if (rdata == NULL || len < 4)
		return false;
	out->usage = rdata[0];
	out->selector = rdata[1];
	out->mtype = rdata[2];
	out->data = rdata + 3;
	out->len = len - 3;
	return true;
}

static size_t digest_len(uint8_t mtype)
{
	return mtype == DANE_SHA256 ? 32 : mtype == DANE_SHA512 ? 64 : 0;
}

bool dane_usable(const struct dane_tlsa *r)
{
	if (r->usage != DANE_TA && r->usage != DANE_EE)
		return false;
	if (r->selector != DANE_SEL_CERT && r->selector != DANE_SEL_SPKI)
		return false;
	if (r->mtype == DANE_FULL)
		return r->len > 0;
	return digest_len(r->mtype) != 0 && r->len == digest_len(r->mtype);
}

bool dane_match(const struct dane_tlsa *r, const struct dane_cert *c,
    dane_digest_fn *digest)
{
	const uint8_t *p = r->selector == DANE_SEL_CERT ? c->der : c->spki;
	size_t n = r->selector == DANE_SEL_CERT ? c->der_len : c->spki_len;
	uint8_t md[DANE_DIGEST_MAX];

	if (p == NULL || n == 0 || r->selector > DANE_SEL_SPKI)
		return false;
	if (r->mtype == DANE_FULL)
		return r->len == n && memcmp(r->data, p, n) == 0;
	if (digest_len(r->mtype) == 0 || r->len != digest_len(r->mtype))
		return false;
	digest((enum dane_mtype)r->mtype, p, n, md);
	return memcmp(r->data, md, r->len) == 0;
}

void dane_check(const struct dane_tlsa *recs, size_t nrecs,
    const struct dane_cert *chain, size_t nchain, dane_digest_fn *digest,
    struct dane_result *out)
{
	memset(out, 0, sizeof(*out));
	if (nchain > DANE_DEPTH_MAX)
		nchain = DANE_DEPTH_MAX;
	for (size_t i = 0; i < nrecs; i++) {
		const struct dane_tlsa *r = &recs[i];

		if (!dane_usable(r))
			continue;
		out->usable++;
		if (r->usage == DANE_EE) {
			if (nchain > 0 && !out->ee && dane_match(r, &chain[0], digest))
				out->ee = true;
			continue;
		}
		for (size_t d = 1; d < nchain; d++)
			if (!(out->ta & (1u << d)) && dane_match(r, &chain[d], digest))
				out->ta |= 1u << d;
	}
}
