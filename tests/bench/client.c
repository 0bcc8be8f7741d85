/* client.c: the load generator of the benchmarks. One process, one epoll
 * loop, many concurrent implicit-TLS SMTP sessions against one proxy.
 *
 * It links the system's OpenSSL: it is a client of the proxies under
 * test, never part of mailshim. By default every session is a full TLS 1.3
 * handshake (no session cache, no resumption), one cipher suite and one
 * key-exchange group for all proxies, so each proxy does the same
 * cryptographic work.
 *
 *   client -m sessions -p PORT -n N -c CONC [-b BODY] [-t SECS]
 *       N sessions, CONC at a time: TLS handshake, greeting, EHLO, MAIL,
 *       RCPT, DATA with a BODY-byte message (default 2048), QUIT.
 *   client -m bulk -p PORT -n N -c N -b BYTES [-t SECS]
 *       the same transaction with a BYTES-byte body per session.
 *   client -m idle -p PORT -n N -c CONC [-t SECS]
 *       open N sessions (handshake done, greeting read), print
 *       "ready OK FAILED HELD" on stdout (HELD: sessions ready before the
 *       first failure), then stay idle until stdin reaches end of file or
 *       a line arrives, and close them all.
 *
 * Options of every mode:
 *   -s  STARTTLS: plain greeting, EHLO, STARTTLS, then the handshake and
 *       the transaction again from EHLO (instead of implicit TLS)
 *   -P  plain: no TLS at all (the upstream, reached directly)
 *   -r  offer a session ticket received earlier, each one once (resumption;
 *       a session finds none when all were used: a full handshake); the
 *       result line counts resumed handshakes
 *   -R  pace: in sessions mode start RATE sessions per second; in bulk
 *       mode send RATE MiB per second in all (0: as fast as possible)
 *
 * Each session's transaction time (greeting received -> QUIT's 221
 * received; it excludes the connect and an implicit-TLS handshake) gives
 * the lat_p50_us / lat_p99_us fields.
 *
 * At the end it prints one line of key=value results on stdout. Exit 0 when
 * every session succeeded, 1 when some failed, 2 on usage or setup errors,
 * 3 when the time limit (-t, default 120 s) ran out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum mode { M_SESSIONS, M_BULK, M_IDLE };

enum state {
	S_CONNECTING,
	S_HANDSHAKE,
	S_TLS,		/* STARTTLS accepted: handshake, then the next step */
	S_REPLY,	/* reading a reply, then the next step */
	S_SEND,		/* writing a command */
	S_BODY,		/* writing the message body */
	S_IDLE,
	S_DONE,
};

/* The SMTP dialogue: each step sends a line (or the body) and then waits
 * for a reply with the given code. Step 0 sends nothing (the greeting). */
struct step {
	const char *send;	/* NULL: the body */
	int expect;
};

static const struct step implicit_script[] = {
	{ "", 220 },
	{ "EHLO client.bench.test\r\n", 250 },
	{ "MAIL FROM:<sender@bench.test>\r\n", 250 },
	{ "RCPT TO:<rcpt@bench.test>\r\n", 250 },
	{ "DATA\r\n", 354 },
	{ NULL, 250 },
	{ "QUIT\r\n", 221 },
};

/* STARTTLS: the handshake follows the 220 of step 2. */
#define STARTTLS_STEP 2
static const struct step starttls_script[] = {
	{ "", 220 },
	{ "EHLO client.bench.test\r\n", 250 },
	{ "STARTTLS\r\n", 220 },
	{ "EHLO client.bench.test\r\n", 250 },
	{ "MAIL FROM:<sender@bench.test>\r\n", 250 },
	{ "RCPT TO:<rcpt@bench.test>\r\n", 250 },
	{ "DATA\r\n", 354 },
	{ NULL, 250 },
	{ "QUIT\r\n", 221 },
};

static const struct step *script = implicit_script;
static int nsteps = (int)(sizeof implicit_script / sizeof implicit_script[0]);

struct conn {
	int fd;
	SSL *ssl;
	enum state st;
	int step;
	char in[4096];
	size_t inlen;
	const char *out;
	size_t outlen, outoff;
	uint64_t body_left;	/* bytes of body still to write */
	int body_tail;		/* the final ".\r\n" is being written */
	int paused;		/* waits for the bulk pacer (not for epoll) */
	double t_greet;		/* when the greeting was complete */
	SSL_SESSION *offer;	/* -r: the ticket this session will offer */
};

static enum mode mode = M_SESSIONS;
static int port;
static long total = 100;
static int conc = 10;
static uint64_t body_bytes = 2048;
static double time_limit = 120;
static int starttls, plain, resume;
static double rate;		/* sessions/s, or MiB/s in bulk mode; 0: unpaced */

static SSL_CTX *ctx;
static int ep;
static struct sockaddr_in dst;
static long started, ok, failed, ready, dropped, resumed, held = -1;
static double t0;
/* -r: tickets received and not used yet; each is offered once (RFC 8446
 * C.4: a client should not reuse a ticket), the newest first. */
#define MAX_TICKETS 4096
static SSL_SESSION *tickets[MAX_TICKETS];
static int ntickets;
static uint64_t body_sent;	/* bulk bytes written by all sessions */
static struct conn **paused;	/* sessions waiting for the bulk pacer */
static int npaused;
static double *lat;		/* transaction times, one per session done */
static long nlat;
static int active;
static char *chunk;		/* body text, lines of 78 characters + CRLF */
static size_t chunk_len;
static const char *last_err = "";
static char cipher[64] = "-", group[64] = "-", version[32] = "-";

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("client: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static void conn_free(struct conn *c)
{
	if (c->ssl)
		SSL_free(c->ssl);
	if (c->offer)
		SSL_SESSION_free(c->offer);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
	active--;
}

static void conn_fail(struct conn *c, const char *why)
{
	last_err = why;
	if (held < 0)
		held = ready;
	if (c->st == S_IDLE)
		dropped++;
	else
		failed++;
	conn_free(c);
}

static void conn_finish(struct conn *c)
{
	/* One close_notify, no wait for the peer's: the session is over. */
	if (c->ssl)
		SSL_shutdown(c->ssl);
	lat[nlat++] = now() - c->t_greet;
	ok++;
	conn_free(c);
}

static int conn_start(void)
{
	struct conn *c = calloc(1, sizeof *c);
	if (!c)
		die("out of memory");
	started++;
	active++;
	if (resume && ntickets)
		c->offer = tickets[--ntickets];
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		last_err = "socket";
		if (held < 0)
			held = ready;
		failed++;
		if (c->offer)
			SSL_SESSION_free(c->offer);
		free(c);
		active--;
		return -1;
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
		conn_fail(c, "connect");
		return -1;
	}
	c->st = S_CONNECTING;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		conn_fail(c, "epoll_ctl");
		return -1;
	}
	return 0;
}

/* 1: a complete reply is in c->in (its code in *code), 0: not yet. */
static int reply_complete(struct conn *c, int *code)
{
	size_t start = 0;
	for (;;) {
		char *nl = memchr(c->in + start, '\n', c->inlen - start);
		if (!nl)
			return 0;
		size_t len = (size_t)(nl - (c->in + start)) + 1;
		const char *l = c->in + start;
		if (len >= 4 && l[3] == ' ') {
			*code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
			return 1;
		}
		if (len < 4 || l[3] != '-') {
			*code = -1;
			return 1;
		}
		start += len;
	}
}

static void record_params(SSL *ssl)
{
	if (cipher[0] != '-')
		return;
	snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(ssl));
	snprintf(version, sizeof version, "%s", SSL_get_version(ssl));
	int nid = SSL_get_negotiated_group(ssl);
	const char *g = nid ? OBJ_nid2sn(nid) : NULL;
	snprintf(group, sizeof group, "%s", g ? g : "?");
}

static void next_step(struct conn *c)
{
	c->step++;
	c->inlen = 0;
	if (c->step >= nsteps) {
		c->st = S_DONE;
		return;
	}
	if (starttls && c->step == STARTTLS_STEP + 1 && !c->ssl) {
		c->step--;	/* come back here once the handshake is done */
		c->st = S_TLS;
		return;
	}
	if (mode == M_IDLE && c->step == 1) {
		c->st = S_IDLE;
		ready++;
		return;
	}
	const struct step *s = &script[c->step];
	if (s->send) {
		c->out = s->send;
		c->outlen = strlen(s->send);
		c->outoff = 0;
		c->st = S_SEND;
	} else {
		c->body_left = body_bytes;
		c->body_tail = 0;
		c->outoff = 0;
		c->st = S_BODY;
	}
}

/* A TLS call's result in io_read/io_write's terms. */
static int tls_io(struct conn *c, int r)
{
	if (r > 0)
		return r;
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
		return 0;
	ERR_clear_error();
	return -1;
}

/* Plain or TLS I/O: >0 bytes, 0 would block, -1 failed (closed). */
static int io_read(struct conn *c, char *b, size_t n)
{
	if (!c->ssl) {
		ssize_t r = read(c->fd, b, n);
		if (r > 0)
			return (int)r;
		return (r < 0 && (errno == EAGAIN || errno == EINTR)) ? 0 : -1;
	}
	return tls_io(c, SSL_read(c->ssl, b, (int)n));
}

static int io_write(struct conn *c, const char *b, size_t n)
{
	if (!c->ssl) {
		ssize_t r = write(c->fd, b, n);
		if (r > 0)
			return (int)r;
		return (r < 0 && (errno == EAGAIN || errno == EINTR)) ? 0 : -1;
	}
	return tls_io(c, SSL_write(c->ssl, b, (int)n));
}

static void tls_begin(struct conn *c)
{
	c->ssl = SSL_new(ctx);
	if (!c->ssl)
		die("SSL_new");
	SSL_set_fd(c->ssl, c->fd);
	SSL_set_tlsext_host_name(c->ssl, "localhost");
	if (c->offer) {
		SSL_set_session(c->ssl, c->offer);
		SSL_SESSION_free(c->offer);
		c->offer = NULL;
	}
	SSL_set_connect_state(c->ssl);
}

/* The bulk pacer: 1 when the session may write now. */
static int pace_ok(void)
{
	if (rate <= 0)
		return 1;
	return (double)body_sent < (now() - t0) * rate * 1048576.0;
}

/* Runs one connection as far as it can go without blocking. */
static void conn_run(struct conn *c)
{
	if (c->paused)
		return;
	for (;;) {
		int r;
		switch (c->st) {
		case S_CONNECTING: {
			int err = 0;
			socklen_t l = sizeof err;
			getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
			if (err) {
				conn_fail(c, "connect refused");
				return;
			}
			c->step = 0;
			c->inlen = 0;
			if (plain || starttls) {
				c->st = S_REPLY;
				break;
			}
			tls_begin(c);
			c->st = S_HANDSHAKE;
			break;
		}
		case S_TLS:
			tls_begin(c);
			c->st = S_HANDSHAKE;
			break;
		case S_HANDSHAKE:
			r = SSL_do_handshake(c->ssl);
			if (r == 1) {
				record_params(c->ssl);
				if (SSL_session_reused(c->ssl))
					resumed++;
				if (starttls) {
					next_step(c);
				} else {
					c->step = 0;
					c->inlen = 0;
					c->st = S_REPLY;
				}
				break;
			}
			r = SSL_get_error(c->ssl, r);
			if (r == SSL_ERROR_WANT_READ || r == SSL_ERROR_WANT_WRITE)
				return;
			ERR_clear_error();
			conn_fail(c, "handshake");
			return;
		case S_REPLY:
		case S_IDLE: {
			if (c->inlen >= sizeof c->in - 1) {
				conn_fail(c, "reply too long");
				return;
			}
			r = io_read(c, c->in + c->inlen, sizeof c->in - 1 - c->inlen);
			if (r == 0)
				return;
			if (r < 0) {
				conn_fail(c, c->st == S_IDLE ? "idle session closed" : "read");
				return;
			}
			if (c->st == S_IDLE) {
				c->inlen = 0;	/* unexpected bytes: ignore */
				break;
			}
			c->inlen += (size_t)r;
			int code;
			if (!reply_complete(c, &code))
				break;
			if (code != script[c->step].expect) {
				conn_fail(c, "unexpected reply");
				return;
			}
			if (c->step == 0)
				c->t_greet = now();
			next_step(c);
			if (c->st == S_DONE) {
				conn_finish(c);
				return;
			}
			break;
		}
		case S_SEND:
			r = io_write(c, c->out + c->outoff, c->outlen - c->outoff);
			if (r == 0)
				return;
			if (r < 0) {
				conn_fail(c, "write");
				return;
			}
			c->outoff += (size_t)r;
			if (c->outoff == c->outlen) {
				c->inlen = 0;
				c->st = S_REPLY;
			}
			break;
		case S_BODY: {
			const char *p;
			size_t n;
			if (c->body_tail) {
				p = &".\r\n"[c->outoff];
				n = 3 - c->outoff;
			} else {
				/* The body is whole lines of chunk; the last write is cut
				 * at a line end so the message always ends in CRLF. */
				size_t off = c->outoff;
				n = chunk_len - off;
				if (n > c->body_left)
					n = (size_t)c->body_left;
				p = chunk + off;
			}
			if (n == 0) {
				c->body_tail = 1;
				c->outoff = 0;
				break;
			}
			if (!c->body_tail && !pace_ok()) {
				c->paused = 1;
				paused[npaused++] = c;
				return;
			}
			r = io_write(c, p, n);
			if (r == 0)
				return;
			if (r < 0) {
				conn_fail(c, "write body");
				return;
			}
			if (c->body_tail) {
				c->outoff += (size_t)r;
				if (c->outoff == 3) {
					c->inlen = 0;
					c->st = S_REPLY;
				}
			} else {
				body_sent += (uint64_t)r;
				c->body_left -= (uint64_t)r;
				c->outoff += (size_t)r;
				if (c->outoff == chunk_len)
					c->outoff = 0;
				if (c->body_left == 0) {
					/* end on a line boundary */
					size_t into = c->outoff % 80;
					if (into) {
						c->body_left = 80 - into;
						continue;
					}
					c->body_tail = 1;
					c->outoff = 0;
				}
			}
			break;
		}
		case S_DONE:
			return;
		}
	}
}

static void make_chunk(void)
{
	/* 64 KiB of 80-byte lines (78 characters and CRLF) that look like a
	 * base64 attachment: no line starts with a dot. */
	static const char b64[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	chunk_len = 819 * 80;
	chunk = malloc(chunk_len);
	if (!chunk)
		die("out of memory");
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < chunk_len; i += 80) {
		for (size_t j = 0; j < 78; j++) {
			x ^= x << 13;
			x ^= x >> 17;
			x ^= x << 5;
			chunk[i + j] = b64[x & 63];
		}
		chunk[i + 78] = '\r';
		chunk[i + 79] = '\n';
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: client -m sessions|bulk|idle -p PORT [-n N] [-c CONC] "
			"[-b BODY_BYTES] [-t SECONDS] [-s|-P] [-r] [-R RATE]\n");
	exit(2);
}

/* -r: keep the tickets the server sends (TLS 1.3 sends them after the
 * handshake; the replies read afterwards bring them in). */
static int on_ticket(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	if (ntickets == MAX_TICKETS)
		return 0;
	tickets[ntickets++] = sess;
	return 1;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-quantile (nearest rank) of the sorted transaction times, in us. */
static double quantile_us(double q)
{
	if (nlat == 0)
		return 0;
	long k = (long)(q * (double)nlat + 0.999999) - 1;
	if (k < 0)
		k = 0;
	if (k >= nlat)
		k = nlat - 1;
	return lat[k] * 1e6;
}

int main(int argc, char **argv)
{
	int opt;
	while ((opt = getopt(argc, argv, "m:p:n:c:b:t:sPrR:")) != -1) {
		switch (opt) {
		case 'm':
			if (!strcmp(optarg, "sessions"))
				mode = M_SESSIONS;
			else if (!strcmp(optarg, "bulk"))
				mode = M_BULK;
			else if (!strcmp(optarg, "idle"))
				mode = M_IDLE;
			else
				usage();
			break;
		case 'p': port = atoi(optarg); break;
		case 'n': total = atol(optarg); break;
		case 'c': conc = atoi(optarg); break;
		case 'b': body_bytes = strtoull(optarg, NULL, 10); break;
		case 't': time_limit = atof(optarg); break;
		case 's': starttls = 1; break;
		case 'P': plain = 1; break;
		case 'r': resume = 1; break;
		case 'R': rate = atof(optarg); break;
		default: usage();
		}
	}
	if (port <= 0 || port > 65535 || total <= 0 || conc <= 0 || rate < 0 ||
	    (starttls && plain) || (mode == M_IDLE && (starttls || plain)))
		usage();
	if (starttls) {
		script = starttls_script;
		nsteps = (int)(sizeof starttls_script / sizeof starttls_script[0]);
	}

	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	make_chunk();
	lat = calloc((size_t)total, sizeof *lat);
	paused = calloc((size_t)conc + 1, sizeof *paused);
	if (!lat || !paused)
		die("out of memory");

	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1)
		die("ciphersuites");
	if (SSL_CTX_set1_groups_list(ctx, "X25519") != 1)
		die("groups");
	if (SSL_CTX_set1_sigalgs_list(ctx, "ECDSA+SHA256") != 1)
		die("sigalgs");
	if (resume) {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
					       SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(ctx, on_ticket);
	} else {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

	memset(&dst, 0, sizeof dst);
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)port);
	dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

	ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	int in_watch = 0;
	if (mode == M_IDLE) {
		fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
		struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0)
			die("stdin cannot be watched");
		in_watch = 1;
	}

	t0 = now();
	double deadline = t0 + time_limit, t_ready = 0;
	int timed_out = 0, announced = 0, release = 0;
	int session_pacing = rate > 0 && mode != M_BULK;
	struct epoll_event evs[256];
	for (;;) {
		/* Sessions in the handshake or dialogue count against CONC;
		 * idle ones do not. Paced: the i-th starts at t0 + i/RATE. */
		double t = now();
		/* -r: a session starts when it has a ticket to offer, or when
		 * none is running (the first, or a server that sends none). */
		while (started < total && (active - (mode == M_IDLE ? ready - dropped : 0)) < conc &&
		       (!session_pacing || t >= t0 + (double)started / rate) &&
		       (!resume || ntickets || active == 0))
			conn_start();
		if (npaused && pace_ok()) {
			int n = npaused;
			npaused = 0;
			for (int i = 0; i < n; i++) {
				struct conn *c = paused[i];
				c->paused = 0;
				conn_run(c);
			}
		}
		if (mode == M_IDLE) {
			if (!announced && ready + failed + dropped >= total) {
				announced = 1;
				t_ready = now();
				printf("ready %ld %ld %ld\n", ready, failed, held < 0 ? ready : held);
				fflush(stdout);
			}
			if (release || (announced && active == 0))
				break;
		} else if (started >= total && active == 0) {
			break;
		}
		double left = deadline - now();
		if (left <= 0) {
			timed_out = 1;
			break;
		}
		int wait_ms = left > 1 ? 1000 : (int)(left * 1000) + 1;
		if (npaused)
			wait_ms = 1;
		else if (session_pacing && started < total) {
			double next = t0 + (double)started / rate - now();
			int ms = next > 0 ? (int)(next * 1000) + 1 : 0;
			if (ms < wait_ms)
				wait_ms = ms;
		}
		int n = epoll_wait(ep, evs, 256, wait_ms);
		if (n < 0 && errno != EINTR)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			if (!evs[i].data.ptr) {
				char b[64];
				ssize_t r = read(0, b, sizeof b);
				if (r == 0 || r > 0) {
					release = 1;
					if (in_watch)
						epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
					in_watch = 0;
				}
				continue;
			}
			conn_run(evs[i].data.ptr);
		}
	}
	double secs = now() - t0;
	if (mode == M_IDLE && t_ready)
		secs = t_ready - t0;
	qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
	printf("mode=%s ok=%ld ready=%ld failed=%ld dropped=%ld started=%ld held=%ld secs=%.3f "
	       "resumed=%ld lat_p50_us=%.0f lat_p99_us=%.0f lat_max_us=%.0f "
	       "version=%s cipher=%s group=%s timed_out=%d last_error=\"%s\"\n",
	       mode == M_SESSIONS ? "sessions" : mode == M_BULK ? "bulk" : "idle",
	       ok, ready, failed, dropped, started, held < 0 ? ready : held, secs, resumed,
	       quantile_us(0.50), quantile_us(0.99), quantile_us(1.0),
	       version, cipher, group, timed_out, last_err);
	fflush(stdout);
	if (timed_out)
		return 3;
	return (failed || dropped) ? 1 : 0;
}
