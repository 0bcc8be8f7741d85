#include "listener.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"

#define ACCEPTS_PER_EVENT 64

static const char reply_busy[] = "421 4.3.2 Too many connections, try again later\r\n";

int listener_bind(const struct sockaddr_text *a, char *err, size_t errlen)
{
	int fd, one = 1;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	/* Accepted sockets inherit TCP_NODELAY (SMTP replies are small and
	 * must not wait for an ACK): set once here, not per session. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		goto fail;
	/* [::]:25 means IPv6 only; IPv4 is its own listen line. */
	if (a->ss.ss_family == AF_INET6 &&
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto fail;
	if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0 ||
	    listen(fd, 1024) < 0)
		goto fail;
	return fd;
fail:
	snprintf(err, errlen, "cannot listen on %s: %s", a->text, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

static void busy_report(struct listen_set *set);

static void pause_all(struct listen_set *set)
{
	size_t i;

	if (set->paused)
		return;
	set->paused = true;
	for (i = 0; i < set->n; i++)
		ev_io_stop(set->w->loop, &set->l[i].io);
	/* Resume on the first session that ends, or after a short while. */
	ev_timer_set(&set->retry, 0.5, 0.);
	ev_timer_start(set->w->loop, &set->retry);
}

static void resume_all(struct listen_set *set)
{
	size_t i;

	if (!set->paused || set->w->stopping)
		return;
	set->paused = false;
	ev_timer_stop(set->w->loop, &set->retry);
	for (i = 0; i < set->n; i++)
		ev_io_start(set->w->loop, &set->l[i].io);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct listen_set *set = (struct listen_set *)((char *)t - offsetof(struct listen_set, retry));

	(void)loop;
	(void)revents;
	resume_all(set);
}

static void conn_done(struct worker *w)
{
	if (w->nconns < w->cfg->max_connections)
		resume_all(w->listeners);
}

#define BUSY_LOG_EVERY 1.0     /* seconds between max_connections warnings */

static void busy_report(struct listen_set *set)
{
	if (set->busy_quiet == 0)
		return;
	log_msg(LEVEL_WARN, "max_connections (%u) reached: %u more clients refused",
	    set->w->cfg->max_connections, set->busy_quiet);
	set->busy_quiet = 0;
	set->busy_logged = ev_now(set->w->loop);
}

static void busy_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct listen_set *set = (struct listen_set *)((char *)t - offsetof(struct listen_set, busy_w));

	(void)loop;
	(void)revents;
	busy_report(set);
}

static void busy_log(struct listener *l)
{
	struct listen_set *set = l->set;
	struct ev_loop *loop = set->w->loop;

	if (ev_now(loop) - set->busy_logged < BUSY_LOG_EVERY) {
		if (set->busy_quiet++ == 0) {
			ev_timer_set(&set->busy_w, set->busy_logged + BUSY_LOG_EVERY - ev_now(loop), 0.);
			ev_timer_start(loop, &set->busy_w);
		}
		return;
	}
	ev_timer_stop(loop, &set->busy_w);
	if (set->busy_quiet > 0) {
		set->busy_quiet++;      /* this one too */
		busy_report(set);
		return;
	}
	set->busy_logged = ev_now(loop);
	log_msg(LEVEL_WARN, "service %s: max_connections (%u) reached, client refused",
	    l->svc->svc->name, set->w->cfg->max_connections);
}

/* Over max_connections: say so in SMTP where the client can read it. */
static void refuse_busy(struct listener *l, int fd)
{
	if (l->svc->svc->listen_tls != MODE_IMPLICIT &&
	    send(fd, reply_busy, sizeof(reply_busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		log_msg(LEVEL_DEBUG, "cannot send busy reply: %s", strerror(errno));
	close(fd);
	busy_log(l);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct listener *l = (struct listener *)((char *)io - offsetof(struct listener, io));
	struct worker *w = l->set->w;
	struct sockaddr_storage ss;
	socklen_t len;
	int i, fd;

	(void)loop;
	(void)revents;
	assert(l->fd == io->fd);
	for (i = 0; i < ACCEPTS_PER_EVENT && !l->set->paused; i++) {
		len = sizeof(ss);
		fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				log_msg(LEVEL_WARN, "cannot accept: %s; pausing listeners", strerror(errno));
				pause_all(l->set);
			}
			return;
		}
		if (w->nconns >= w->cfg->max_connections) {
			refuse_busy(l, fd);
			continue;
		}
		conn_start(w, l->svc, fd, (struct sockaddr *)&ss, len);
	}
}

void listener_start(struct listen_set *set, struct worker *w)
{
	size_t i;

	set->w = w;
	set->paused = false;
	w->listeners = set;
	w->on_conn_done = conn_done;
	ev_init(&set->retry, retry_cb);
	ev_init(&set->busy_w, busy_cb);
	set->busy_logged = -BUSY_LOG_EVERY;
	set->busy_quiet = 0;
	for (i = 0; i < set->n; i++) {
		set->l[i].set = set;
		ev_io_init(&set->l[i].io, accept_cb, set->l[i].fd, EV_READ);
		ev_io_start(w->loop, &set->l[i].io);
	}
}

void listener_stop(struct listen_set *set)
{
	size_t i;

	ev_timer_stop(set->w->loop, &set->retry);
	busy_report(set);
	ev_timer_stop(set->w->loop, &set->busy_w);
	for (i = 0; i < set->n; i++) {
		ev_io_stop(set->w->loop, &set->l[i].io);
		if (set->l[i].fd >= 0)
			close(set->l[i].fd);
		set->l[i].fd = -1;
	}
	set->paused = true;
}
