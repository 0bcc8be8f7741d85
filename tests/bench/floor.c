/* floor.c: the cost of whole TLS 1.3 handshakes with BoringSSL, in
 * memory, with no socket and no event loop: the floor the benchmarks
 * compare a proxy's CPU per session with.
 *
 *   floor CERT KEY N [TICKETS]
 *
 * Runs N handshakes between a server and a client in this process, over
 * a BIO pair, and prints one key=value line:
 *
 *   hs_server_us  CPU per handshake on the server side: SSL_new, the
 *                 handshake (ClientHello in; ServerHello to Finished and
 *                 the session tickets out; the client's Finished in) and
 *                 SSL_free
 *   hs_client_us  the same on the client side, with the chain and the
 *                 name of the server's certificate checked against CERT
 *                 (the upstream hop of STARTTLS -> STARTTLS), and the
 *                 tickets read
 *
 * The server is set up as mailshim's listen hop: the same versions,
 * curves and cipher list (shim/tls_policy.h), server preference, session
 * tickets (TICKETS of them a handshake; default: BoringSSL's own number), its
 * handshake configuration shed. The client offers X25519 only, as the
 * bench's load client does. Each side's time is its thread's CPU time
 * around its own calls, less the cost of reading the clock.
 *
 * Built against OpenSSL instead (build/bench/floor-openssl, the library
 * stunnel, hitch and haproxy link), the same program gives the floor of
 * the peers' library: the same policy, with BoringSSL's TLS 1.3 suite
 * order set, so both negotiate TLS_AES_128_GCM_SHA256 with X25519.
 *
 * Exit 0 on success, 1 when a handshake failed, 2 on usage errors.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tls_policy.h"

#ifdef OPENSSL_IS_BORINGSSL
#define LIBRARY "BoringSSL"
#define set_ciphers(ctx) SSL_CTX_set_strict_cipher_list(ctx, TLS_DEFAULT_CIPHERS)
#define shed_config(ssl) SSL_set_shed_handshake_config(ssl, 1)
#define group_name(ssl) SSL_get_curve_name(SSL_get_curve_id(ssl))
#else
/* BoringSSL's TLS 1.3 suites, in its order (OpenSSL's puts AES-256 first). */
#define LIBRARY "OpenSSL-" OPENSSL_VERSION_STR
#define set_ciphers(ctx) (SSL_CTX_set_cipher_list(ctx, TLS_DEFAULT_CIPHERS) && \
	SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:" \
	    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"))
#define shed_config(ssl) ((void)(ssl))
#define group_name(ssl) SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl))
#endif

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void die(const char *what)
{
	fprintf(stderr, "floor: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

/* One step of one side: its time goes to *acc. 1: handshake done; 0: it
 * waits for the other side. */
static int step(SSL *ssl, double *acc, long *calls)
{
	double t0 = now_us();
	int r = SSL_do_handshake(ssl);

	*acc += now_us() - t0;
	(*calls)++;
	if (r == 1)
		return 1;
	if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
		die("handshake failed");
	return 0;
}

int main(int argc, char **argv)
{
	SSL_CTX *sctx, *cctx;
	long n, i;
	int tickets = -1, j;
	long scalls = 0, ccalls = 0;
	double srv = 0, cli = 0, clock_cost, t0;
	uint8_t buf[64];

	if (argc < 4 || argc > 5 || (n = atol(argv[3])) <= 0) {
		fprintf(stderr, "usage: floor CERT KEY N [TICKETS]\n");
		return 2;
	}
	if (argc == 5)
		tickets = atoi(argv[4]);

	sctx = SSL_CTX_new(TLS_method());
	cctx = SSL_CTX_new(TLS_method());
	if (sctx == NULL || cctx == NULL ||
	    !SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION) ||
	    !SSL_CTX_set_max_proto_version(sctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set1_curves_list(sctx, TLS_CURVES) ||
	    !set_ciphers(sctx) ||
	    SSL_CTX_use_certificate_chain_file(sctx, argv[1]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1 ||
	    !SSL_CTX_set_session_id_context(sctx, (const uint8_t *)"floor", 5) ||
	    (tickets >= 0 && !SSL_CTX_set_num_tickets(sctx, (size_t)tickets)))
		die("cannot set up the server");
	SSL_CTX_set_options(sctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(sctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	    SSL_MODE_ENABLE_PARTIAL_WRITE);

	if (!SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set1_curves_list(cctx, "X25519") ||
	    SSL_CTX_load_verify_locations(cctx, argv[1], NULL) != 1)
		die("cannot set up the client");
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_OFF);

	/* what reading the clock costs: taken off every timed call */
	t0 = now_us();
	for (j = 0; j < 1000; j++)
		(void)now_us();
	clock_cost = (now_us() - t0) / 1001;

	for (i = 0; i < n; i++) {
		BIO *sb, *cb;
		SSL *s, *c;
		int sdone = 0, cdone = 0;
		double t;

		if (!BIO_new_bio_pair(&sb, 0, &cb, 0))
			die("no BIO pair");
		t = now_us();
		s = SSL_new(sctx);
		if (s == NULL)
			die("SSL_new");
		shed_config(s);
		SSL_set_accept_state(s);
		SSL_set_bio(s, sb, sb);
		srv += now_us() - t;
		scalls++;

		t = now_us();
		c = SSL_new(cctx);
		if (c == NULL || !SSL_set_tlsext_host_name(c, "localhost") ||
		    !X509_VERIFY_PARAM_set1_host(SSL_get0_param(c), "localhost", 9))
			die("client SSL_new");
		SSL_set_connect_state(c);
		SSL_set_bio(c, cb, cb);
		cli += now_us() - t;
		ccalls++;

		for (j = 0; j < 8 && !(sdone && cdone); j++) {
			if (!cdone)
				cdone = step(c, &cli, &ccalls);
			if (!sdone)
				sdone = step(s, &srv, &scalls);
		}
		if (!(sdone && cdone))
			die("handshake did not finish");
		/* the client reads the tickets (nothing else is there) */
		t = now_us();
		if (SSL_read(c, buf, sizeof(buf)) > 0 ||
		    SSL_get_error(c, -1) != SSL_ERROR_WANT_READ)
			die("unexpected data after the handshake");
		cli += now_us() - t;
		ccalls++;
		if (i == 0)
			printf("library=%s version=%s cipher=%s group=%s ", LIBRARY,
			    SSL_get_version(s), SSL_CIPHER_standard_name(SSL_get_current_cipher(s)),
			    group_name(s));

		t = now_us();
		SSL_free(s);
		srv += now_us() - t;
		t = now_us();
		SSL_free(c);
		cli += now_us() - t;
		scalls++;
		ccalls++;
	}
	srv -= clock_cost * (double)scalls;
	cli -= clock_cost * (double)ccalls;
	printf("tickets=%d n=%ld hs_server_us=%.1f hs_client_us=%.1f clock_us=%.3f\n",
	    tickets, n, srv / n, cli / n, clock_cost);
	SSL_CTX_free(sctx);
	SSL_CTX_free(cctx);
	return 0;
}
