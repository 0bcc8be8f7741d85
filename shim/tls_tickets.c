/* tls_tickets: session ticket keys, shared or from tls_ticket_keys (tls.h). */
#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "tls_int.h"
#include "tickets.h"

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/rand.h>

/*
 * Session ticket keys. Without tls_ticket_keys they are shared by every
 * worker and every configuration load, so a client resumes wherever the
 * kernel sends it: the supervisor makes them (tls_tickets_init) in a
 * MAP_SHARED page its workers inherit and rotates them
 * (tls_tickets_rotate); workers only read. New tickets use the current
 * key; the two before it still decrypt (a ticket they open is renewed
 * under the current one). A slot is rewritten only when it is the oldest:
 * a worker that reads it half-written fails the HMAC and does a full
 * handshake, nothing worse.
 *
 * With tls_ticket_keys the keys come from that file (tickets.c reads its
 * formats), once per load: every machine that shares the file resumes
 * the others' tickets, and the operator rotates them by replacing the
 * file and reloading. The listen contexts of the load point at them.
 */
#define TICKET_SLOTS 3

struct shared_key {
	uint8_t name[SSL_TICKET_KEY_NAME_LEN];
	uint8_t aes[32];
	uint8_t hmac[32];
};

struct shared_keys {
	atomic_uint cur;
	struct shared_key k[TICKET_SLOTS];
};

static struct shared_keys *shared;

_Static_assert(SSL_TICKET_KEY_NAME_LEN == TICKET_NAME_LEN, "ticket key names are 16 bytes");

int tls_tickets_init(void)
{
	void *p = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
	    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned i;

	if (p == MAP_FAILED)
		return -1;
	shared = p;
	atomic_init(&shared->cur, 0);
	for (i = 0; i < TICKET_SLOTS; i++)
		RAND_bytes((uint8_t *)&shared->k[i], sizeof(shared->k[i]));
	return 0;
}

void tls_tickets_rotate(void)
{
	unsigned next;

	if (shared == NULL)
		return;
	next = atomic_load(&shared->cur) + 1;
	RAND_bytes((uint8_t *)&shared->k[next % TICKET_SLOTS], sizeof(struct shared_key));
	atomic_store(&shared->cur, next);
}

static int shared_ticket_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx,
    HMAC_CTX *hctx, int encrypt)
{
	unsigned cur = atomic_load(&shared->cur), i;
	const struct shared_key *k;

	(void)ssl;
	if (encrypt) {
		k = &shared->k[cur % TICKET_SLOTS];
		memcpy(name, k->name, sizeof(k->name));
		if (!RAND_bytes(iv, 16) ||
		    !EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ||
		    !HMAC_Init_ex(hctx, k->hmac, sizeof(k->hmac), EVP_sha256(), NULL))
			return -1;
		return 1;
	}
	for (i = 0; i < TICKET_SLOTS; i++) {
		k = &shared->k[(cur - i) % TICKET_SLOTS];
		if (memcmp(name, k->name, sizeof(k->name)) != 0)
			continue;
		if (!HMAC_Init_ex(hctx, k->hmac, sizeof(k->hmac), EVP_sha256(), NULL) ||
		    !EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv))
			return -1;
		return i == 0 ? 1 : 2;
	}
	return 0;
}

/* A key of the file: AES-128 with a 16-byte HMAC key, or AES-256 with 32. */
static int file_key_init(const struct ticket_key *k, const uint8_t *iv,
    EVP_CIPHER_CTX *cctx, HMAC_CTX *hctx, int encrypt)
{
	size_t len = tickets_key_len(k);
	const EVP_CIPHER *cipher = len == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();

	if (!HMAC_Init_ex(hctx, k->hmac, len, EVP_sha256(), NULL))
		return -1;
	if (encrypt)
		return EVP_EncryptInit_ex(cctx, cipher, NULL, k->aes, iv) ? 0 : -1;
	return EVP_DecryptInit_ex(cctx, cipher, NULL, k->aes, iv) ? 0 : -1;
}

/* The first key of the file encrypts; any key decrypts, and a ticket of
 * an older one is renewed under the first. */
static int file_ticket_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx,
    HMAC_CTX *hctx, int encrypt)
{
	const struct tickets *tk = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	size_t i;

	if (tk == NULL || tk->n == 0)
		return -1;
	if (encrypt) {
		memcpy(name, tk->k[0].name, TICKET_NAME_LEN);
		if (!RAND_bytes(iv, 16) || file_key_init(&tk->k[0], iv, cctx, hctx, 1) < 0)
			return -1;
		return 1;
	}
	for (i = 0; i < tk->n; i++) {
		if (memcmp(name, tk->k[i].name, TICKET_NAME_LEN) != 0)
			continue;
		if (file_key_init(&tk->k[i], iv, cctx, hctx, 0) < 0)
			return -1;
		return i == 0 ? 1 : 2;
	}
	return 0;
}

void tls_tickets_use(SSL_CTX *ctx, const struct tickets *tk)
{
	if (tk != NULL) {
		SSL_CTX_set_app_data(ctx, (void *)tk);
		SSL_CTX_set_tlsext_ticket_key_cb(ctx, file_ticket_cb);
	} else if (shared != NULL) {
		SSL_CTX_set_tlsext_ticket_key_cb(ctx, shared_ticket_cb);
	}
}

struct tickets *tls_tickets_load(const struct config *cfg, FILE *err)
{
	const struct where w = { cfg, NULL, err };
	const char *path = cfg->tls_ticket_keys;
	BIO *bio = tls_key_file(&w, "tls_ticket_keys", 0, path);
	struct tickets *tk;
	const uint8_t *p;
	size_t len;
	char why[200];

	if (bio == NULL)
		return NULL;
	tk = OPENSSL_malloc(sizeof(*tk));
	if (tk == NULL || !BIO_mem_contents(bio, &p, &len)) {
		BIO_free(bio);
		OPENSSL_free(tk);
		return tls_key_fail(&w, "tls_ticket_keys", 0, path, "out of memory"), NULL;
	}
	if (tickets_parse(p, len, tk, why, sizeof(why)) < 0) {
		tls_tickets_free(tk);
		tk = NULL;
		tls_key_fail(&w, "tls_ticket_keys", 0, path, "%s", why);
	}
	/* The file's bytes are key material too. */
	OPENSSL_cleanse((void *)p, len);
	BIO_free(bio);
	return tk;
}

void tls_tickets_free(struct tickets *tk)
{
	if (tk == NULL)
		return;
	OPENSSL_cleanse(tk, sizeof(*tk));
	OPENSSL_free(tk);
}
