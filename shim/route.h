/*
 * route: the pure parts of the outbound relay (upstream = mx): the
 * client's MAIL and RCPT arguments, a recipient's domain, MX records in
 * the order RFC 5321 5.1 tries them, an MX's EHLO extensions and what they
 * allow of the held MAIL FROM, whole replies, and the end of a DATA body
 * (refusing the bare CR/LF spellings of it, as smtp_client.c does). No
 * I/O, no libev, no TLS library; mxsess.c drives the sessions.
 */
#ifndef MAILSHIM_ROUTE_H
#define MAILSHIM_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROUTE_NAME_MAX 256
#define ROUTE_MX_MAX 16

/* The verbs the relay answers; anything else is ROUTE_V_OTHER. */
enum route_verb {
	ROUTE_V_OTHER, ROUTE_V_EHLO, ROUTE_V_HELO, ROUTE_V_STARTTLS, ROUTE_V_MAIL,
	ROUTE_V_RCPT, ROUTE_V_DATA, ROUTE_V_RSET, ROUTE_V_NOOP, ROUTE_V_QUIT,
	ROUTE_V_VRFY, ROUTE_V_HELP, ROUTE_V_BDAT, ROUTE_V_AUTH,
};

/* The verb of a command line (CRLF included or not), read as Postfix's
 * smtpd reads it; *args points after the verb's white space. */
enum route_verb route_verb(const char *line, size_t len, const char **args);


/* MAIL FROM parameters the relay can honour; others are refused (555). */
struct route_mail {
	uint64_t size;            /* SIZE=, 0: none given */
	uint8_t body;             /* 0 none, 1 BODY=7BIT, 2 BODY=8BITMIME */
	bool smtputf8;
	char path[ROUTE_NAME_MAX * 2];   /* the reverse-path, <...> included */
};

/* Parse "FROM:<path> params" (args of MAIL). 0 ok; otherwise a reply. */
const char *route_mail_parse(const char *args, size_t len, struct route_mail *m);

/* Parse "TO:<path> params" (args of RCPT): the domain, lower case, with no
 * final dot. NULL ok; otherwise the reply to give. */
const char *route_rcpt_domain(const char *args, size_t len, char *dom, size_t dlen);

/* What an MX's EHLO reply offers. */
struct route_ext {
	bool starttls, eightbit, smtputf8, pipelining, size;
	uint64_t size_max;        /* 0: no limit given */
};

void route_ehlo(const char *reply, size_t len, struct route_ext *e);

/*
 * The held MAIL FROM against the chosen MX: NULL when it can be replayed
 * (the line written to out, SIZE and BODY kept only where the MX offers
 * them), else the reply RFC 1870, 6152 and 6531 prescribe.
 */
const char *route_mail_line(const struct route_mail *m, const struct route_ext *e,
    char *out, size_t outlen);

/* One MX record, from its rdata (preference, uncompressed name). */
struct route_mx {
	uint16_t pref;
	char host[ROUTE_NAME_MAX];   /* lower case, no final dot; "" null MX */
};

/* false: a record too short or with a broken name. */
bool route_mx_parse(const uint8_t *rdata, size_t len, struct route_mx *mx);

/* Of more than ROUTE_MX_MAX records, the most preferred: mx holds *n
 * (at most ROUTE_MX_MAX); one comes in, in place of the least preferred
 * when it is more preferred than that one. */
void route_mx_keep(struct route_mx *mx, size_t *n, const struct route_mx *one);

/* Sort by preference, equal preferences in random order (rnd: one random
 * word per record); null MX entries are dropped. Returns the count. */
size_t route_mx_order(struct route_mx *mx, size_t n, const uint32_t *rnd);

/*
 * A whole reply at the start of p: its length (0: not complete yet) and
 * its code. -1: not a reply (bad syntax, or longer than max).
 */
long route_reply(const uint8_t *p, size_t len, size_t max, int *code);

/* The DATA body scanner. */
struct route_body {
	uint8_t hist[2];          /* the last two bytes passed */
};

enum { ROUTE_BODY_PASS, ROUTE_BODY_END, ROUTE_BODY_BAD };

/* Start of a body: as if it followed a CRLF. */
void route_body_init(struct route_body *b);

/*
 * Look at p: PASS (*n bytes may go, all of them body; more to come), END
 * (*n bytes go, the last being the CRLF.CRLF), or BAD (a bare CR or LF
 * around a dot line: *why says so). PASS with *n == 0: need more bytes.
 */
int route_body_scan(struct route_body *b, const uint8_t *p, size_t len, size_t *n,
    const char **why);

#endif
