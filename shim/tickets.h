/*
 * tickets: the session ticket key file of tls_ticket_keys, in the two
 * formats other servers use, so one file can be shared by every machine
 * of a fleet. Pure: bytes in, keys out, no I/O and no TLS library.
 *
 * - Binary (nginx's ssl_session_ticket_key): 48 bytes, one AES-128 key
 *   laid out name(16) AES(16) HMAC(16); or N x 80 bytes, N AES-256 keys
 *   each laid out name(16) HMAC(32) AES(32), as nginx splits an 80-byte
 *   file. Several keys are concatenated files (cat new old > keys); a
 *   48-byte key stands alone (240 bytes would be five 48-byte keys or
 *   three 80-byte ones).
 * - Text (haproxy's tls-ticket-keys): one base64 key per line, 48 or 80
 *   bytes decoded, laid out as haproxy does: name(16) AES(16|32)
 *   HMAC(16|32). Blank lines are skipped; sizes may be mixed.
 *
 * A file of printable ASCII and line breaks only is text; any other is
 * binary. Either way the first key encrypts new tickets and every key
 * decrypts (newest first, the reverse of haproxy's order).
 */
#ifndef MAILSHIM_TICKETS_H
#define MAILSHIM_TICKETS_H

#include <stddef.h>
#include <stdint.h>

#define TICKETS_MAX 16
#define TICKET_NAME_LEN 16

struct ticket_key {
	uint8_t name[TICKET_NAME_LEN];
	uint8_t aes[32];
	uint8_t hmac[32];
	uint8_t size;            /* 48: AES-128-CBC, 16-byte HMAC-SHA256 key;
	                          * 80: AES-256-CBC, 32-byte HMAC key */
};

struct tickets {
	struct ticket_key k[TICKETS_MAX];   /* [0] encrypts */
	size_t n;
};

/*
 * Parse a key file's bytes into out. 0 on success; -1 with a message in
 * err ("line 3: not valid base64") when the file is not a key file.
 */
int tickets_parse(const uint8_t *p, size_t len, struct tickets *out, char *err,
    size_t errlen);

/* Length of the AES key and of the HMAC key of k: 16 or 32. */
size_t tickets_key_len(const struct ticket_key *k);

#endif
