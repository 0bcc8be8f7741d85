/* sink.c: the plaintext upstream of the benchmarks. A minimal, fast SMTP
 * server on one loopback port: it greets, answers EHLO/HELO/MAIL/RCPT/
 * RSET/NOOP with 250, DATA with 354, discards the message body up to the
 * CRLF.CRLF that ends it, answers 250, and QUIT with 221. One epoll loop,
 * one shared read buffer, so idle sessions cost it almost nothing.
 *
 *   sink PORT      (listens on 127.0.0.1:PORT until SIGTERM or SIGINT)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct sess {
	int fd;
	int data;		/* in a message body */
	int dot;		/* how much of "\r\n.\r\n" has been seen */
	int quit;		/* close once the output is written */
	size_t linelen;
	char line[1024];
	size_t outlen;
	char out[512];
};

static volatile sig_atomic_t stop;
static char rbuf[256 * 1024];

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void sess_close(struct sess *s)
{
	close(s->fd);
	free(s);
}

/* Queues a reply; written at once when the socket takes it. */
static int reply(struct sess *s, const char *r)
{
	size_t n = strlen(r);
	if (s->outlen + n > sizeof s->out)
		return -1;
	memcpy(s->out + s->outlen, r, n);
	s->outlen += n;
	return 0;
}

static int flush_out(struct sess *s)
{
	while (s->outlen) {
		ssize_t w = write(s->fd, s->out, s->outlen);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -1;
		}
		memmove(s->out, s->out + w, s->outlen - (size_t)w);
		s->outlen -= (size_t)w;
	}
	return 0;
}

static int command(struct sess *s, const char *l, size_t n)
{
	(void)n;
	if (!strncasecmp(l, "EHLO", 4))
		return reply(s, "250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
				"250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n");
	if (!strncasecmp(l, "DATA", 4)) {
		s->data = 1;
		s->dot = 2;	/* the CRLF ending DATA counts */
		return reply(s, "354 End data with <CR><LF>.<CR><LF>\r\n");
	}
	if (!strncasecmp(l, "QUIT", 4)) {
		s->quit = 1;
		return reply(s, "221 2.0.0 Bye\r\n");
	}
	if (!strncasecmp(l, "HELO", 4) || !strncasecmp(l, "MAIL", 4) ||
	    !strncasecmp(l, "RCPT", 4) || !strncasecmp(l, "RSET", 4) ||
	    !strncasecmp(l, "NOOP", 4))
		return reply(s, "250 2.0.0 Ok\r\n");
	return reply(s, "502 5.5.2 Error: command not recognized\r\n");
}

/* Consumes n bytes from the client; -1 closes the session. */
static int input(struct sess *s, const char *p, size_t n)
{
	static const char end[] = "\r\n.\r\n";
	while (n) {
		if (s->data) {
			/* Skip fast to the next CR when nothing is matched. */
			if (s->dot == 0) {
				const char *cr = memchr(p, '\r', n);
				if (!cr)
					return 0;
				n -= (size_t)(cr - p);
				p = cr;
			}
			char ch = *p++;
			n--;
			if (ch == end[s->dot])
				s->dot++;
			else
				s->dot = ch == '\r' ? 1 : 0;
			if (s->dot == 5) {
				s->data = 0;
				s->dot = 0;
				s->linelen = 0;
				if (reply(s, "250 2.0.0 Ok: queued\r\n") < 0)
					return -1;
			}
			continue;
		}
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) + 1 : n;
		if (s->linelen + take > sizeof s->line)
			return -1;
		memcpy(s->line + s->linelen, p, take);
		s->linelen += take;
		p += take;
		n -= take;
		if (nl) {
			if (command(s, s->line, s->linelen) < 0)
				return -1;
			s->linelen = 0;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: sink PORT\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 4096) < 0) {
		perror("sink: bind/listen");
		return 1;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	fprintf(stderr, "sink: listening on 127.0.0.1:%s\n", argv[1]);

	struct epoll_event evs[256];
	while (!stop) {
		int n = epoll_wait(ep, evs, 256, 1000);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("sink: epoll_wait");
			return 1;
		}
		for (int i = 0; i < n; i++) {
			struct sess *s = evs[i].data.ptr;
			if (!s) {
				for (;;) {
					int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
					if (fd < 0)
						break;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					s = calloc(1, sizeof *s);
					if (!s) {
						close(fd);
						continue;
					}
					s->fd = fd;
					struct epoll_event e2 = { .events = EPOLLIN | EPOLLOUT | EPOLLET,
								  .data.ptr = s };
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
					reply(s, "220 sink.bench.test ESMTP\r\n");
					if (flush_out(s) < 0)
						sess_close(s);
				}
				continue;
			}
			int dead = 0;
			for (;;) {
				ssize_t r = read(s->fd, rbuf, sizeof rbuf);
				if (r > 0) {
					if (input(s, rbuf, (size_t)r) < 0) {
						dead = 1;
						break;
					}
					if (s->outlen && flush_out(s) < 0) {
						dead = 1;
						break;
					}
					continue;
				}
				if (r == 0 || (errno != EAGAIN && errno != EINTR))
					dead = 1;
				break;
			}
			if (!dead && flush_out(s) < 0)
				dead = 1;
			if (!dead && s->quit && s->outlen == 0)
				dead = 1;
			if (dead)
				sess_close(s);
		}
	}
	return 0;
}
