/* libFuzzer: TLSA records and a chain, both from the input; the matcher
 * must never read outside them, and its verdicts must agree with
 * dane_match() record by record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dane.h"

static void digest(enum dane_mtype mtype, const uint8_t *p, size_t n,
    uint8_t *out)
{
	uint8_t acc = (uint8_t)mtype;

	for (size_t i = 0; i < n; i++)
		acc = (uint8_t)(acc * 31 + p[i]);
	memset(out, acc, DANE_DIGEST_MAX);
}

/* Input: [nrecs][len rdata]... [ncerts][len der][len spki]... (len: 1 byte). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dane_tlsa recs[8];
	struct dane_cert chain[DANE_DEPTH_MAX + 2];
	struct dane_result res;
	size_t off = 0, nrecs = 0, ncerts = 0, want;

	if (size < 2)
		return 0;
	want = data[off++] % 9;
	while (nrecs < want && off < size) {
		size_t len = data[off++];
		if (len > size - off)
			len = size - off;
		if (dane_parse(data + off, len, &recs[nrecs]))
			nrecs++;
		off += len;
	}
	want = off < size ? data[off++] % (DANE_DEPTH_MAX + 3) : 0;
	while (ncerts < want && off + 2 <= size) {
		size_t dl = data[off], sl = data[off + 1];
		off += 2;
		if (dl > size - off)
			dl = size - off;
		chain[ncerts].der = data + off;
		chain[ncerts].der_len = dl;
		off += dl;
		if (sl > size - off)
			sl = size - off;
		chain[ncerts].spki = sl ? data + off : NULL;
		chain[ncerts].spki_len = sl;
		off += sl;
		ncerts++;
	}
	dane_check(recs, nrecs, chain, ncerts, digest, &res);
	bool ee = false;
	unsigned usable = 0;
	for (size_t i = 0; i < nrecs; i++) {
		if (!dane_usable(&recs[i]))
			continue;
		usable++;
		if (recs[i].usage == DANE_EE && ncerts && dane_match(&recs[i], &chain[0], digest))
			ee = true;
	}
	if (ee != res.ee || usable != res.usable || (res.ta & 1u))
		abort();
	return 0;
}
