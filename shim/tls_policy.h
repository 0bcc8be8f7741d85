/* tls_policy.h: the TLS defaults both hops take when none are configured.
 * A plain header of constants, so that what measures the shim's TLS (the
 * bench's floor) sets up the same policy. */
#ifndef MAILSHIM_TLS_POLICY_H
#define MAILSHIM_TLS_POLICY_H

/* TLS 1.2 suites: forward secret AEADs only, the same policy on both
 * hops. TLS 1.3 suites are all AEAD and fixed. */
#define TLS_DEFAULT_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Key-exchange groups, in order of preference. */
#define TLS_CURVES "X25519:P-256:P-384"

#endif
