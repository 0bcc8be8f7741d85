/* dane: TLSA parsing, usability and matching against a chain. The digest
 * here is a stand-in (the real SHA-2 comes from the TLS library in verify.c,
 * tested end to end with a signed zone); what is tested is which bytes
 * are hashed and compared, and which records count. */
#include "dane.h"
#include "unit.h"

static void fake_digest(enum dane_mtype mtype, const uint8_t *p, size_t n,
    uint8_t *out)
{
	size_t len = mtype == DANE_SHA256 ? 32 : 64;
	uint8_t acc = (uint8_t)(mtype * 7);

	for (size_t i = 0; i < n; i++)
		acc = (uint8_t)(acc * 31 + p[i]);
	for (size_t i = 0; i < len; i++)
		out[i] = (uint8_t)(acc + i);
}

static const uint8_t leaf_der[] = "leaf certificate DER";
static const uint8_t leaf_spki[] = "leaf SPKI";
static const uint8_t ca_der[] = "CA certificate DER";
static const uint8_t ca_spki[] = "CA SPKI";
static const uint8_t root_der[] = "root certificate DER";

static const struct dane_cert chain[] = {
	{ leaf_der, sizeof(leaf_der), leaf_spki, sizeof(leaf_spki) },
	{ ca_der, sizeof(ca_der), ca_spki, sizeof(ca_spki) },
	{ root_der, sizeof(root_der), NULL, 0 },
};

/* A record for (usage, selector, mtype) of what: built into buf. */
static struct dane_tlsa rec(uint8_t *buf, uint8_t u, uint8_t s, uint8_t m,
    const uint8_t *what, size_t n)
{
	struct dane_tlsa r;
	size_t len = 3;

	buf[0] = u;
	buf[1] = s;
	buf[2] = m;
	if (m == DANE_FULL) {
		memcpy(buf + 3, what, n);
		len += n;
	} else {
		fake_digest((enum dane_mtype)m, what, n, buf + 3);
		len += m == DANE_SHA256 ? 32 : 64;
	}
	CHECK(dane_parse(buf, len, &r));
	return r;
}

static void test_parse(void)
{
	const uint8_t rd[] = { 3, 1, 1, 0xaa, 0xbb };
	struct dane_tlsa r;

	CHECK(dane_parse(rd, sizeof(rd), &r));
	CHECK_EQ(r.usage, 3);
	CHECK_EQ(r.selector, 1);
	CHECK_EQ(r.mtype, 1);
	CHECK_EQ(r.len, 2);
	CHECK(r.data == rd + 3);
	CHECK(!dane_parse(rd, 3, &r));
	CHECK(!dane_parse(rd, 0, &r));
	CHECK(!dane_parse(NULL, 5, &r));
}

static void test_usable(void)
{
	uint8_t b[80];
	struct dane_tlsa r;

	for (unsigned u = 0; u < 5; u++)
		for (unsigned s = 0; s < 3; s++)
			for (unsigned m = 0; m < 4; m++) {
				memset(b, 0, sizeof(b));
				b[0] = (uint8_t)u;
				b[1] = (uint8_t)s;
				b[2] = (uint8_t)m;
				/* The right length for SHA-256 and SHA-512. */
				size_t len = 3 + (m == 2 ? 64 : 32);
				CHECK(dane_parse(b, len, &r));
				CHECK_EQ(dane_usable(&r), (u == 2 || u == 3) && s <= 1 && m <= 2);
			}
	/* A digest of the wrong length is unusable, not a mismatch. */
	b[0] = 3; b[1] = 1; b[2] = 1;
	CHECK(dane_parse(b, 3 + 31, &r) && !dane_usable(&r));
	CHECK(dane_parse(b, 3 + 64, &r) && !dane_usable(&r));
	b[2] = 2;
	CHECK(dane_parse(b, 3 + 32, &r) && !dane_usable(&r));
	b[2] = 0;
	CHECK(dane_parse(b, 4, &r) && dane_usable(&r));
}

static void test_match(void)
{
	uint8_t b[128];
	struct dane_tlsa r;

	r = rec(b, 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	CHECK(dane_match(&r, &chain[0], fake_digest));
	CHECK(!dane_match(&r, &chain[1], fake_digest));
	r = rec(b, 3, 0, 2, leaf_der, sizeof(leaf_der));
	CHECK(dane_match(&r, &chain[0], fake_digest));
	r = rec(b, 3, 0, 0, leaf_der, sizeof(leaf_der));
	CHECK(dane_match(&r, &chain[0], fake_digest));
	/* Full data: same length and bytes, not a prefix. */
	r = rec(b, 3, 0, 0, leaf_der, sizeof(leaf_der) - 1);
	CHECK(!dane_match(&r, &chain[0], fake_digest));
	/* One flipped byte. */
	r = rec(b, 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	b[10] ^= 1;
	CHECK(!dane_match(&r, &chain[0], fake_digest));
	/* Selector 1 with no SPKI known never matches. */
	r = rec(b, 2, 1, 1, root_der, sizeof(root_der));
	CHECK(!dane_match(&r, &chain[2], fake_digest));
}

static void test_check(void)
{
	uint8_t b[6][128];
	struct dane_tlsa r[6];
	struct dane_result res;

	/* 3 1 1 matching the leaf. */
	r[0] = rec(b[0], 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	dane_check(r, 1, chain, 3, fake_digest, &res);
	CHECK(res.ee && res.ta == 0 && res.usable == 1);
	/* DANE-EE of the CA does not match the leaf. */
	r[0] = rec(b[0], 3, 1, 1, ca_spki, sizeof(ca_spki));
	dane_check(r, 1, chain, 3, fake_digest, &res);
	CHECK(!res.ee && res.ta == 0 && res.usable == 1);
	/* DANE-TA of the CA matches at depth 1, of the root at depth 2; a
	 * DANE-TA naming the leaf is no trust anchor. */
	r[0] = rec(b[0], 2, 0, 1, ca_der, sizeof(ca_der));
	r[1] = rec(b[1], 2, 0, 2, root_der, sizeof(root_der));
	r[2] = rec(b[2], 2, 1, 1, leaf_spki, sizeof(leaf_spki));
	dane_check(r, 3, chain, 3, fake_digest, &res);
	CHECK(!res.ee && res.ta == ((1u << 1) | (1u << 2)) && res.usable == 3);
	/* Rollover: a stale record beside the current one still matches. */
	r[0] = rec(b[0], 3, 1, 1, ca_spki, sizeof(ca_spki));
	r[1] = rec(b[1], 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	dane_check(r, 2, chain, 3, fake_digest, &res);
	CHECK(res.ee && res.usable == 2);
	/* Only unusable records: PKIX-TA, PKIX-EE, unknown selector/mtype. */
	r[0] = rec(b[0], 0, 0, 1, ca_der, sizeof(ca_der));
	r[1] = rec(b[1], 1, 1, 1, leaf_spki, sizeof(leaf_spki));
	r[2] = rec(b[2], 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	b[2][1] = 2;
	r[2].selector = 2;
	r[3] = rec(b[3], 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	r[3].mtype = 9;
	dane_check(r, 4, chain, 3, fake_digest, &res);
	CHECK(!res.ee && res.ta == 0 && res.usable == 0);
	/* An empty chain matches nothing. */
	r[0] = rec(b[0], 3, 1, 1, leaf_spki, sizeof(leaf_spki));
	dane_check(r, 1, chain, 0, fake_digest, &res);
	CHECK(!res.ee && res.usable == 1);
}

int main(void)
{
	test_parse();
	test_usable();
	test_match();
	test_check();
	return unit_done("test_dane");
}
