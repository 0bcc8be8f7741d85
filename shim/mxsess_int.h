/*
 * mxsess_int: what the parts of the outbound relay's session share.
 * mxsess.c owns the session and the client's side (greeting, the
 * command lines, the body), mxsess_cmd.c the client's commands and the
 * transaction's log line; mxhop.c binds a transaction to an MX host and
 * drives that hop (MX, address and TLSA lookups, connect, EHLO, STARTTLS,
 * the policy check, MAIL FROM and RCPT replayed, DATA and its end).
 */
#ifndef MAILSHIM_MXSESS_INT_H
#define MAILSHIM_MXSESS_INT_H

#include "mxsess.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "dns.h"
#include "endpoint.h"
#include "handshake.h"
#include "log.h"
#include "metrics.h"
#include "reason.h"
#include "relay.h"
#include "route.h"
#include "verify.h"

#define MX_MAGIC 0x6d78736eu
#define GONE (-1)
#define TURNS 32
#define LINGER_MS 2000
#define ADDR_MAX 8
#define RCPT_MAX 1000
/* The whole search for a first RCPT's MX host (lookups, every host and
 * address): under the 5 minutes a sender waits for the RCPT's reply (RFC
 * 5321 4.5.3.2, Postfix's smtp_rcpt_timeout). */
#define MX_SEARCH_MS (240u * 1000u)
#define LIT(s) s, sizeof(s) - 1

enum cl_state { CL_HS, CL_STARTTLS, CL_READY, CL_CLOSING, CL_LINGER };
enum phase { PH_CMD, PH_WAIT, PH_BODY };
enum up_state { U_NONE, U_DNS, U_CONNECT, U_GREET, U_EHLO1, U_STARTTLS, U_HS, U_EHLO2,
	U_MAIL, U_RCPT, U_READY, U_DATA, U_DOT };

struct mxsess {
	uint32_t magic, id;
	uint8_t cl_state, phase, up_state;
	bool helo, plain_allowed, tls_up, up_lost, greeted;
	struct worker *w;
	struct svc_rt *svc;
	struct mxsess *prev, *next;
	struct endpoint cl, up;
	struct pump cin, cout, uin, uout;   /* client in/out, upstream in/out */
	ev_timer timer;
	ev_idle again;
	ev_tstamp start, tx_start, touched;
	ev_tstamp search_end;               /* the deadline of the MX search */
	const char *cl_ver, *cl_cipher, *up_ver, *up_auth;
	unsigned ntx;                       /* transactions logged */
	/* The transaction. */
	bool tx, bound, delivered;
	bool discard;                       /* the MX is gone: the body is read, dropped */
	uint64_t skip;                      /* bytes of a refused BDAT's chunk still to drop */
	struct route_mail mail;
	char dom[ROUTE_NAME_MAX];
	unsigned nrcpt;
	char rcpt[600];                     /* the RCPT being bound or relayed */
	size_t rcpt_len;
	uint64_t body_bytes;
	struct route_body body;
	enum reason tx_why;
	char tx_detail[420];
	/* Binding: the MX hosts, one host's addresses. */
	struct dns_query *q;
	struct route_mx mx[ROUTE_MX_MAX];
	size_t nmx, imx;
	bool mx_secure, addr_secure;
	bool implicit_mx;                   /* no MX records: the domain itself */
	uint8_t addr_step;
	struct sockaddr_storage addr[ADDR_MAX];
	size_t naddr, iaddr;
	struct verify_session verify;
	struct route_ext ext;
	enum reason fwhy;                   /* the best failure of this RCPT */
	int frank;
	char fdetail[400];
	char host[ROUTE_NAME_MAX];          /* the MX host in use */
	char up_text[64];
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} peer;
};

/* mxsess.c: the session. */
void mx_up_io_cb(struct ev_loop *loop, ev_io *io, int revents);  /* MX socket events */
void mx_step(struct mxsess *s);          /* run the session's turns, arm its sockets */
void mx_resume(struct mxsess *s, int r); /* after a DNS answer's step r: -1 closes */
void mx_set_timer(struct mxsess *s, uint32_t ms);   /* the one deadline, from now */
int mx_reply(struct mxsess *s, const char *r, size_t n);  /* to the client; -1: no room */
int mx_say(struct mxsess *s, const char *r);
int mx_answered(struct mxsess *s);       /* the MX work for a command is done */
void mx_tx_end(struct mxsess *s);        /* log the transaction, QUIT the MX */

/* mxsess_cmd.c: the client's commands. */
int mx_command(struct mxsess *s, const char *line, size_t len);  /* one line, CRLF and all */
int mx_close_after(struct mxsess *s, const char *r);  /* reply r (or none), then close */
const char *mx_helo_name(const struct mxsess *s, char *out, size_t len);  /* the name we greet with */
void mx_log_tx(struct mxsess *s, enum reason why, const char *detail);  /* the log line */
int mx_body_lost(struct mxsess *s);      /* the MX left before answering the body */
int mx_body_dropped(struct mxsess *s);   /* the end of a body the MX never got */

/* mxhop.c: the MX hop. Each returns 1 on progress, 0 when it waits, and
 * -1 when out of memory (the session then closes). */
void mx_up_enter(struct mxsess *s, enum up_state st);
void mx_up_close(struct mxsess *s, bool quit);   /* QUIT (if at a boundary) and close */
int mx_up_io(struct mxsess *s);          /* the MX socket's turn */
int mx_up_broke(struct mxsess *s, enum reason why, const char *detail);  /* reset, timeout */
int mx_send_up(struct mxsess *s, const char *p, size_t n, enum up_state next);
void mx_up_timer(struct mxsess *s, uint32_t ms);  /* a wait for the MX (its deadline) */
int mx_addr_connect(struct mxsess *s);   /* connect to the host's next address */
void mx_addr_text(const struct sockaddr *a, char *out, size_t len);

/* mxroute.c: the choice of MX host, the same returns. */
int mx_bind_start(struct mxsess *s);     /* first RCPT of s->dom: find an MX */
int mx_host_next(struct mxsess *s);      /* the next host, or the RCPT's answer */
int mx_host_fail(struct mxsess *s, enum reason why, const char *detail);  /* then the next */
void mx_note(struct mxsess *s, enum reason why, const char *detail);  /* keep the worst */
int mx_rcpt_final(struct mxsess *s, const char *r, size_t n, enum reason why,
    const char *detail);                 /* answer the RCPT, let the MX go */

#endif
