/*
 * smtp: the pure SMTP state machine of one relayed session. Bytes in,
 * verdicts out; no I/O, no libev, no TLS library, no allocation. The caller
 * (the session, conn_relay.c) owns the buffers and performs what a verdict says.
 *
 * Two directions share one struct smtp:
 *  - smtp_client(): bytes the mail client sent, in order. Commands are
 *    tracked through pipelining (RFC 2920), DATA bodies up to CRLF.CRLF,
 *    BDAT chunks (RFC 3030) and SASL exchanges, so no byte of a message body
 *    or of an AUTH response is ever taken for a command. A command line is
 *    read as Postfix's smtpd reads it: the verb ends at any white space
 *    (space, HT, VT, FF), case does not matter. A line that a server could
 *    read otherwise (white space before the verb, a bare CR, a NUL) is
 *    refused with 500 and never forwarded. XCLIENT and XFORWARD are
 *    answered here and never forwarded: the client's identity is the
 *    shim's to tell.
 *  - smtp_server(): bytes the upstream sent, in order. Replies are
 *    collected whole (at most SMTP_REPLY_MAX bytes) and matched to the
 *    commands waiting for them, so the client gets a reply whole or not at
 *    all; a positive EHLO reply is rewritten (STARTTLS added or removed,
 *    XCLIENT and XFORWARD removed, AUTH hidden before TLS when required).
 * Upstream STARTTLS (the shim is the client there) has its own small
 * dialogue: smtp_setup(). With upstream_xclient (smtp_xclient_on()) the
 * client's first EHLO or HELO waits while the shim tells the upstream who
 * the client is (smtp_xclient.c).
 *
 * Every verdict says how many input bytes it covers (n). Bytes not covered
 * stay in the caller's buffer and are offered again, with more, next call.
 */
#ifndef MAILSHIM_SMTP_H
#define MAILSHIM_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest command or reply line accepted, CRLF included. */
#define SMTP_LINE_MAX 4096
/* Commands that may wait for replies at once (pipelining depth). */
#define SMTP_QUEUE 64
/* Longest reply relayed (whole reply, all lines); a longer one ends the
 * session with 421. */
#define SMTP_REPLY_MAX 8192
/* The EHLO rewrite's input bound: scratch is SMTP_EHLO_MAX + 64 bytes. */
#define SMTP_EHLO_MAX SMTP_REPLY_MAX
/* Longest XCLIENT line sent, CRLF included (RFC 5321's command limit,
 * which XCLIENT_README asks clients to keep). */
#define SMTP_XCLIENT_MAX 512
/* Longest HELO value put into XCLIENT (Postfix refuses longer ones). */
#define SMTP_XCLIENT_HELO_MAX 255
/* Largest BDAT chunk when the upstream's EHLO reply gives no SIZE (1 GiB:
 * any server's parser holds it, even in 32 bits). A larger chunk, or one
 * over the advertised SIZE, gets 552 and ends the session. */
#define SMTP_CHUNK_MAX ((uint64_t)1 << 30)

enum smtp_verdict {
	SMTP_MORE,     /* nothing complete: read more (n = 0) */
	SMTP_PASS,     /* forward the n bytes unchanged */
	SMTP_REPLY,    /* drop the n bytes; write reply/reply_len to the client */
	SMTP_STARTTLS, /* drop the n bytes (the STARTTLS line); write reply (the
	                  220) to the client, then start TLS on the listen hop.
	                  Any byte after those n in the same buffer is an
	                  injection attempt: the caller must drop the session. */
	SMTP_HOLD,     /* wait: replies must reach the client first, or the
	                  reply to DATA/AUTH decides how to read what follows.
	                  Call again after smtp_server() made progress. (n = 0) */
	SMTP_CLOSE,    /* the session must end: write reply (may be NULL) to the
	                  client, log reason, close both hops. n bytes covered. */
	/* smtp_setup() only: */
	SMTP_SEND_EHLO,     /* the n bytes were the greeting (220): keep a copy
	                       for the client, send "EHLO <helo_name>\r\n" */
	SMTP_SEND_STARTTLS, /* EHLO reply covered: send "STARTTLS\r\n" */
	SMTP_START_TLS,     /* the 220 to STARTTLS covered, and nothing follows:
	                       start the TLS handshake on the upstream hop */
	SMTP_REFUSE,        /* the upstream fails the policy: reason says why
	                       (also from smtp_server(): the XCLIENT exchange
	                       failed; write reply to the client and close) */
	/* smtp_client() with XCLIENT (n = 0: the client's EHLO or HELO line
	 * stays where it is and is offered again once the exchange is done): */
	SMTP_UP_EHLO,       /* send "EHLO <helo_name>\r\n" to the upstream */
	SMTP_UP_XCLIENT,    /* send the line smtp_xclient_line() makes of the
	                       client's line (at p) to the upstream */
};

struct smtp_result {
	enum smtp_verdict v;
	size_t n;              /* input bytes covered */
	const char *reply;     /* bytes to write to the client, or NULL */
	size_t reply_len;
	const char *reason;    /* plain words, for the log (CLOSE, REFUSE) */
};

enum smtp_listen { SMTP_LISTEN_PLAIN, SMTP_LISTEN_STARTTLS, SMTP_LISTEN_IMPLICIT };

/* The state of one session; small, embedded in the connection. */
struct smtp {
	/* Policy, fixed at init. */
	uint8_t listen_mode;      /* enum smtp_listen */
	bool plain_allowed;       /* client is in listen_plain_from */
	/* Listen hop. */
	bool listen_tls;          /* TLS is up on the listen hop */
	bool need_ehlo;           /* after STARTTLS: nothing but EHLO/HELO/...
	                           * until the upstream takes one */
	bool authed;              /* an AUTH succeeded: no STARTTLS after it */
	/* Client side reader. */
	uint8_t cstate;           /* internal: command, body, chunk, ... */
	uint8_t hist[2];          /* internal: last two body bytes passed */
	uint64_t chunk_left;      /* bytes of the current BDAT chunk */
	bool chunk_last;          /* current BDAT chunk is LAST */
	/* Server side reader. */
	uint8_t sstate;           /* internal */
	uint8_t setup;            /* internal: smtp_setup() phase */
	uint8_t xclient;          /* internal: the XCLIENT exchange's phase */
	bool xclient_name;        /* the upstream's XCLIENT takes NAME */
	uint16_t reply_code;      /* code of the reply being read, 0 if none */
	size_t reply_len;         /* bytes of the reply being read so far */
	bool reply_starttls;      /* setup: EHLO reply has STARTTLS */
	bool up_chunking;         /* the upstream's EHLO reply offered CHUNKING */
	uint64_t up_size;         /* its SIZE, 0 if none (SMTP_CHUNK_MAX then) */
	bool up_authenticated;    /* upstream hop TLS, its server authenticated */
	bool requiretls;          /* REQUIRETLS was offered to the client */
	bool quit_done;           /* the upstream answered QUIT with 221 */
	bool up_421;              /* the upstream sent a 421 (it closes next) */
	/* Commands waiting for replies, oldest first (ring buffer). */
	uint8_t q[SMTP_QUEUE];
	uint8_t qhead, qlen;
};

/*
 * Start a session. upstream_setup: the upstream hop uses STARTTLS, so
 * smtp_setup() runs first and the greeting is delivered by the caller once
 * TLS is up (no greeting is expected from smtp_server()).
 */
void smtp_init(struct smtp *s, enum smtp_listen listen_mode,
    bool plain_allowed, bool upstream_setup);

/*
 * Tell the upstream who the client is (upstream_xclient), right after
 * smtp_init(): nothing but EHLO, HELO, NOOP, RSET and QUIT goes on before
 * the exchange is done, and an upstream that does not take it gets the
 * session refused (SMTP_REFUSE from smtp_server()).
 */
void smtp_xclient_on(struct smtp *s);

/*
 * The XCLIENT line for the client's EHLO or HELO line p[0..len) (the
 * bytes offered with SMTP_UP_XCLIENT): addr is the client's numeric
 * address (v6: IPv6, sent with the IPV6: prefix), port its port. Writes
 * at most SMTP_XCLIENT_MAX bytes to out and returns how many; 0 when p
 * holds no EHLO or HELO line.
 */
size_t smtp_xclient_line(const struct smtp *s, const uint8_t *p, size_t len,
    const char *addr, bool v6, unsigned port, char *out);

/*
 * RFC 3461 xtext: bytes 33..126 but '+' and '=' as they are, every other
 * byte as "+HH" (upper-case hex). Writes whole encodings only, while they
 * fit in cap; returns the length the whole encoding takes.
 */
size_t smtp_xtext(const uint8_t *in, size_t n, char *out, size_t cap);

/* Bytes from the client. */
struct smtp_result smtp_client(struct smtp *s, const uint8_t *p, size_t len);

/*
 * Bytes from the upstream, once the relay runs. A rewritten EHLO reply is
 * composed in scratch (at least SMTP_EHLO_MAX + 64 bytes, owned by the
 * caller and shared by all sessions of a worker) and returned as SMTP_REPLY
 * covering the original reply's n bytes; the caller copies it if it cannot
 * write it at once. Every other reply the shim writes is a static string.
 */
struct smtp_result smtp_server(struct smtp *s, const uint8_t *p, size_t len,
    char *scratch);

/* Upstream STARTTLS dialogue: bytes from the upstream before its TLS. */
struct smtp_result smtp_setup(struct smtp *s, const uint8_t *p, size_t len);

/* TLS came up on the listen hop (after SMTP_STARTTLS and the handshake). */
void smtp_listen_tls_up(struct smtp *s);

/* TLS came up on the upstream hop (after SMTP_START_TLS): the relay runs. */
void smtp_upstream_tls_up(struct smtp *s);

/*
 * The upstream hop is TLS and its server was authenticated (ca, pin,
 * dane-ee, dane-ta): REQUIRETLS (RFC 8689) may be offered to the client
 * once its own hop is TLS too and the upstream offers it.
 */
void smtp_upstream_authenticated(struct smtp *s);

/* Replies still owed to the client by the upstream. */
size_t smtp_pending(const struct smtp *s);

/*
 * The upstream answered QUIT with 221 (RFC 5321 4.1.1.10: it closes the
 * channel next). The verdict that covered that reply covered nothing
 * after it; the session is over once the reply has reached the client.
 */
bool smtp_quit_done(const struct smtp *s);

/* A BDAT line, its line end left out, in RFC 3030's one plain spelling:
 * "BDAT" (any case), one space, the size without leading zeros, " LAST"
 * (any case) or nothing. Fills chunk and last; false for any other
 * spelling (where the chunk ends is then unknown). */
bool smtp_bdat_parse(const uint8_t *p, size_t len, uint64_t *chunk, bool *last);

/* The client is in a DATA body or a BDAT chunk: a session that ends now
 * ends with a message cut short. */
bool smtp_mid_message(const struct smtp *s);

/* A 421 of the upstream's (it closes next, RFC 5321 3.8) was relayed: the
 * client has been told, and needs no reply of the shim's when it goes. */
bool smtp_upstream_closing(const struct smtp *s);

#endif
