/*
 * smtp_int.h: what the three parts of the SMTP state machine share
 * (smtp_client.c reads the client, smtp_server.c the upstream's replies,
 * smtp_setup.c the upstream STARTTLS dialogue and the session's life).
 * Not for use outside them.
 *
 * Each reader has one state field and one enter function; nothing else
 * writes that field. A dead state is final: entering anything from it
 * is ignored, so no later call can bring a closed session back.
 */
#ifndef MAILSHIM_SMTP_INT_H
#define MAILSHIM_SMTP_INT_H

#include "smtp.h"

/* Client side reading modes (cstate). */
enum {
	C_CMD = 0,  /* command lines (where a session starts) */
	C_WAIT,     /* DATA or AUTH forwarded: its reply decides what follows */
	C_BODY,     /* DATA body, up to CRLF.CRLF */
	C_CHUNK,    /* BDAT chunk: chunk_left bytes nobody reads */
	C_DISCARD,  /* chunk of a BDAT refused here: dropped */
	C_SASL,     /* one SASL response line */
	C_SKIP,     /* the rest of an overlong line: dropped */
	C_TLS,      /* STARTTLS answered; the handshake comes next */
	C_DEAD,
};

/* Server side (sstate): whole replies, or nothing more. */
enum { S_REPLY = 0, S_DEAD };

/* Upstream STARTTLS dialogue (setup). */
enum { SETUP_NONE = 0, SETUP_GREETING, SETUP_EHLO, SETUP_STARTTLS, SETUP_TLS,
	SETUP_FAILED };

/* The XCLIENT exchange (xclient): off, or waiting for the client's first
 * EHLO/HELO, the shim's EHLO sent, its reply in (send XCLIENT), XCLIENT
 * sent, done (later EHLOs go on as they are). */
enum { XC_OFF = 0, XC_WANT, XC_EHLO, XC_READY, XC_SENT, XC_DONE };

/* What waits for a reply (queue entries); K_XEHLO and K_XCLIENT are the
 * shim's own commands, their replies are not relayed. */
enum { K_NONE, K_GREETING, K_EHLO, K_HELO, K_DATA, K_DOT, K_BDAT, K_AUTH,
	K_AUTHC, K_QUIT, K_OTHER, K_XEHLO, K_XCLIENT };

struct text {
	const char *s;
	size_t len;
};

#define TEXT(x) { x, sizeof(x) - 1 }

/* The state changes (smtp_client.c, smtp_server.c, smtp_setup.c). */
void smtp_client_enter(struct smtp *s, uint8_t to);
void smtp_server_enter(struct smtp *s, uint8_t to);
void smtp_setup_enter(struct smtp *s, uint8_t to);

/* The XCLIENT exchange (smtp_xclient.c): the client's EHLO or HELO while
 * it is under way, and the replies to the shim's own commands (the one
 * gathered at p[0], reply_len and reply_code). */
bool smtp_xclient_pending(const struct smtp *s);
struct smtp_result smtp_xclient_greet(struct smtp *s);
bool smtp_xclient_owed(const struct smtp *s);
struct smtp_result smtp_xclient_reply(struct smtp *s, const uint8_t *p);

/* Verdicts (smtp_setup.c). */
struct smtp_result smtp_verdict(enum smtp_verdict v, size_t n);
struct smtp_result smtp_answer(enum smtp_verdict v, size_t n,
    const struct text *t, const char *reason);
/* PASS n bytes, or MORE when n is 0. */
struct smtp_result smtp_pass(size_t n);
/* A CLOSE ends both directions: nothing read afterwards can be trusted. */
struct smtp_result smtp_die(struct smtp *s, const struct text *t,
    const char *reason);
struct smtp_result smtp_dead(void);

/* The queue of commands waiting for replies (smtp_setup.c). */
void smtp_qpush(struct smtp *s, uint8_t kind);
uint8_t smtp_qfront(const struct smtp *s);
uint8_t smtp_qpop(struct smtp *s);

/* Policy of the listen hop (smtp_setup.c). */
bool smtp_tls_offered(const struct smtp *s);
bool smtp_tls_required(const struct smtp *s);

/* A DATA body, up to its end-of-data line (smtp_body.c). */
struct smtp_result smtp_body(struct smtp *s, const uint8_t *p, size_t len);

/* Bytes (smtp_client.c). */
bool smtp_space(uint8_t c);
bool smtp_same(const uint8_t *p, const char *w, size_t n);
size_t smtp_clean_len(const uint8_t *p, size_t n, bool complete);

/* Replies (smtp_server.c). gather: one whole reply at p[0], resumed
 * after the lines already checked (reply_len); on G_DONE reply_len is its
 * length and reply_code its code. */
enum { G_MORE, G_DONE, G_BAD, G_LONG };
int smtp_gather(struct smtp *s, const uint8_t *p, size_t len);
void smtp_reply_reset(struct smtp *s);
/* A keyword line of the checked multi-line reply p[0..n) starts with the
 * keyword word (case-insensitive, a whole word). */
bool smtp_offers(const uint8_t *p, size_t n, const char *word);

extern const struct text smtp_t_malformed;
extern const char smtp_why_malformed[], smtp_why_long[];

#endif
