/* metricsd: the supervisor's /metrics and /healthz (see metricsd.h). */
#include "metricsd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void conn_drop(struct metricsd_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->out);
	c->out = NULL;
	c->fd = -1;
	c->inlen = c->outlen = c->outoff = 0;
}

void metricsd_init(struct metricsd *d)
{
	memset(d, 0, sizeof(*d));
	d->lfd = -1;
	for (size_t i = 0; i < METRICSD_CONNS; i++)
		d->c[i].fd = -1;
}

int metricsd_open(struct metricsd *d, const struct sockaddr_text *a,
    struct metrics *m, unsigned nworkers, char *err, size_t errlen)
{
	int one = 1;

	metricsd_init(d);
	d->m = m;
	d->nworkers = nworkers;
	d->lfd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->lfd < 0 ||
	    setsockopt(d->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(d->lfd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
	    listen(d->lfd, 64) < 0) {
		snprintf(err, errlen, "cannot listen on metrics %s: %s", a->text, strerror(errno));
		if (d->lfd >= 0)
			close(d->lfd);
		d->lfd = -1;
		return -1;
	}
	return 0;
}

void metricsd_close(struct metricsd *d)
{
	for (size_t i = 0; i < METRICSD_CONNS; i++)
		conn_drop(&d->c[i]);
	if (d->lfd >= 0)
		close(d->lfd);
	d->lfd = -1;
}

int metricsd_pollfds(const struct metricsd *d, struct pollfd *p)
{
	int n = 0;

	if (d->lfd < 0)
		return 0;
	p[n++] = (struct pollfd){ .fd = d->lfd, .events = POLLIN };
	for (size_t i = 0; i < METRICSD_CONNS; i++)
		if (d->c[i].fd >= 0)
			p[n++] = (struct pollfd){ .fd = d->c[i].fd,
			    .events = d->c[i].out ? POLLOUT : POLLIN };
	return n;
}

static int respond(struct metricsd_conn *c, const char *status,
    const char *type, const char *body, size_t blen, bool head)
{
	int h = snprintf(NULL, 0, "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, type, blen);

	c->out = malloc((size_t)h + 1 + (head ? 0 : blen));
	if (c->out == NULL)
		return -1;
	snprintf(c->out, (size_t)h + 1, "HTTP/1.1 %s\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n", status, type, blen);
	if (!head)
		memcpy(c->out + h, body, blen);
	c->outlen = (size_t)h + (head ? 0 : blen);
	c->outoff = 0;
	return 0;
}

static int text(struct metricsd_conn *c, const char *status, const char *body,
    bool head)
{
	return respond(c, status, "text/plain; charset=utf-8", body, strlen(body), head);
}

static bool is_path(const struct http_req *r, const char *p)
{
	size_t n = strlen(p);

	/* A query string does not change the answer. */
	return r->path_len >= n && memcmp(r->path, p, n) == 0 &&
	    (r->path_len == n || r->path[n] == '?');
}

static int metrics_page(struct metricsd *d, struct metricsd_conn *c, bool head)
{
	size_t cap = 64 * 1024, n;
	char *buf = malloc(cap);

	while (buf != NULL && (n = metrics_render(d->m, d->nworkers, buf, cap)) >= cap) {
		free(buf);
		cap = n + 1;
		buf = malloc(cap);
	}
	if (buf == NULL)
		return text(c, "503 Service Unavailable", "out of memory\n", head);
	n = respond(c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", buf,
	    strlen(buf), head);
	free(buf);
	return (int)n;
}

static int answer(struct metricsd *d, struct metricsd_conn *c)
{
	struct http_req r;
	int n = http_parse(c->in, c->inlen, &r);
	bool head;

	if (n == HTTP_MORE)
		return c->inlen < sizeof(c->in) ? 0 : text(c, "431 Request Header Fields "
		    "Too Large", "request head too long\n", false);
	if (n == HTTP_TOO_LONG)
		return text(c, "431 Request Header Fields Too Large",
		    "request head too long\n", false);
	if (n < 0)
		return text(c, "400 Bad Request", "bad request\n", false);
	head = r.method == HTTP_HEAD;
	if (r.method == HTTP_OTHER)
		return text(c, "405 Method Not Allowed", "GET or HEAD only\n", false);
	if (is_path(&r, "/metrics"))
		return metrics_page(d, c, head);
	if (is_path(&r, "/healthz"))
		return d->stopping ? text(c, "503 Service Unavailable", "stopping\n", head) :
		    text(c, "200 OK", "ok\n", head);
	return text(c, "404 Not Found", "not found\n", head);
}

static void conn_io(struct metricsd *d, struct metricsd_conn *c);

/*
 * Full, the oldest connection makes room for the new one: a few clients
 * that connect and say nothing must not keep the probes of /healthz out
 * (a liveness probe that fails restarts the container). A probe sends its
 * request as it connects, so it is read, and mostly answered, at once.
 */
static void accept_new(struct metricsd *d, time_t now)
{
	for (;;) {
		int fd = accept4(d->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		size_t i, old = 0;

		if (fd < 0)
			return;
		for (i = 0; i < METRICSD_CONNS && d->c[i].fd >= 0; i++)
			if (d->c[i].deadline < d->c[old].deadline)
				old = i;
		if (i == METRICSD_CONNS) {
			conn_drop(&d->c[old]);
			i = old;
		}
		d->c[i].fd = fd;
		d->c[i].deadline = now + METRICSD_TIMEOUT_S;
		conn_io(d, &d->c[i]);
	}
}

static void conn_io(struct metricsd *d, struct metricsd_conn *c)
{
	ssize_t r;

	if (c->out == NULL) {
		r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
			conn_drop(c);
			return;
		}
		if (r > 0)
			c->inlen += (size_t)r;
		if (answer(d, c) < 0) {
			conn_drop(c);
			return;
		}
	}
	if (c->out != NULL) {
		r = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
		if (r < 0 && errno != EAGAIN && errno != EINTR) {
			conn_drop(c);
			return;
		}
		if (r > 0)
			c->outoff += (size_t)r;
		if (c->outoff == c->outlen)
			conn_drop(c);
	}
}

void metricsd_serve(struct metricsd *d, const struct pollfd *p, int n)
{
	time_t now = time(NULL);

	for (int k = 0; k < n; k++) {
		if (!p[k].revents)
			continue;
		if (p[k].fd == d->lfd) {
			accept_new(d, now);
			continue;
		}
		for (size_t i = 0; i < METRICSD_CONNS; i++)
			if (d->c[i].fd == p[k].fd)
				conn_io(d, &d->c[i]);
	}
	for (size_t i = 0; i < METRICSD_CONNS; i++)
		if (d->c[i].fd >= 0 && now > d->c[i].deadline)
			conn_drop(&d->c[i]);
}
