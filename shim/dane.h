/*
 * dane: TLSA records and their matching as RFC 7672 (SMTP) and RFC 7671
 * (operational updates) say, with no TLS library: the caller hands in
 * each certificate of the peer's chain as DER (the whole certificate and
 * its SubjectPublicKeyInfo) and a digest function, and gets back which
 * records matched where. Chain and name checks for DANE-TA, which need
 * the TLS library, stay with the caller (verify.c); so does the decision
 * what an outcome means for the session.
 *
 * Usable here: usages DANE-TA(2) and DANE-EE(3), selectors Cert(0) and
 * SPKI(1), matching types Full(0), SHA2-256(1), SHA2-512(2) with the
 * digest's exact length. PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP
 * (RFC 7672 3.1.3), and so is every unknown parameter.
 */
#ifndef MAILSHIM_DANE_H
#define MAILSHIM_DANE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dane_usage { DANE_PKIX_TA = 0, DANE_PKIX_EE = 1, DANE_TA = 2, DANE_EE = 3 };
enum dane_selector { DANE_SEL_CERT = 0, DANE_SEL_SPKI = 1 };
enum dane_mtype { DANE_FULL = 0, DANE_SHA256 = 1, DANE_SHA512 = 2 };

/* Longest digest a matching type produces (SHA-512). */
#define DANE_DIGEST_MAX 64
/* Chain positions reported (deeper certificates are never matched). */
#define DANE_DEPTH_MAX 32

/* One TLSA record; data points into the RDATA it was parsed from. */
struct dane_tlsa {
	uint8_t usage, selector, mtype;
	const uint8_t *data;
	size_t len;
};

/* One certificate of the peer's chain, leaf first. */
struct dane_cert {
	const uint8_t *der;
	size_t der_len;
	const uint8_t *spki;
	size_t spki_len;
};

/* Writes the mtype digest of p[0..n) to out (DANE_DIGEST_MAX bytes room). */
typedef void dane_digest_fn(enum dane_mtype mtype, const uint8_t *p, size_t n,
    uint8_t *out);

struct dane_result {
	unsigned usable;      /* records usable at all */
	bool ee;              /* a DANE-EE record matched the leaf */
	uint32_t ta;          /* bit d: a DANE-TA record matched chain[d], d >= 1 */
};

/* Parse TLSA RDATA (RFC 6698 2.1); false if too short to be one. */
bool dane_parse(const uint8_t *rdata, size_t len, struct dane_tlsa *out);

/* Can this record authenticate an SMTP server here? */
bool dane_usable(const struct dane_tlsa *r);

/* Does the record's association data match the certificate? (Any usage.) */
bool dane_match(const struct dane_tlsa *r, const struct dane_cert *c,
    dane_digest_fn *digest);

/*
 * Match every usable record against the chain: DANE-EE against the leaf
 * only (its names and dates do not matter, RFC 7672 3.1.1), DANE-TA
 * against the certificates above it (RFC 7672 3.1.2: the server sends its
 * trust anchor). The caller still has to build a chain from the leaf to a
 * matched TA and check the name before DANE-TA authenticates anything.
 */
void dane_check(const struct dane_tlsa *recs, size_t nrecs,
    const struct dane_cert *chain, size_t nchain, dane_digest_fn *digest,
    struct dane_result *out);

#endif
