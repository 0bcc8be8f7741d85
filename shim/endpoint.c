#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "mailshim must be built against BoringSSL (-I/usr/include/android)"
#endif

#include "endpoint.h"
#include "sockbio.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

void ep_init(struct endpoint *e, int fd)
{
	e->fd = fd;
	e->ssl = NULL;
	e->rd_wait = e->wr_wait = e->armed = 0;
	e->shut = false;
	e->err = 0;
	e->peer_version = 0;
	e->drained = false;
	e->ahead = NULL;
	e->ahead_off = e->ahead_len = 0;
}

int ep_tls(struct endpoint *e, SSL *ssl)
{
	BIO *bio;

	e->ssl = NULL;
	if (ssl == NULL)
		return -1;
	if ((bio = sockbio_new(e)) == NULL) {
		SSL_free(ssl);
		return -1;
	}
	/* One BIO for both directions: SSL takes the one reference. */
	SSL_set_bio(ssl, bio, bio);
	e->ssl = ssl;
	return 0;
}

/* Map a TLS failure: which event to wait for, or EOF/error. */
static int tls_result(struct endpoint *e, int ret, uint8_t *wait)
{
	switch (SSL_get_error(e->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		*wait = EV_READ;
		return EP_AGAIN;
	case SSL_ERROR_WANT_WRITE:
		*wait = EV_WRITE;
		return EP_AGAIN;
	case SSL_ERROR_WANT_CERTIFICATE_VERIFY:
		*wait = EP_WAIT_VERIFY;
		return EP_AGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		/* EOF without close_notify: SMTP frames its own data, so a
		 * truncated stream can never complete a message. */
		if (ret == 0 || errno == 0)
			return 0;
		e->err = errno;
		return EP_ERROR;
	default:
		return EP_ERROR;
	}
}

ssize_t ep_read(struct endpoint *e, void *p, size_t n)
{
	ssize_t r;

	if (e->ssl != NULL) {
		int len = n > INT32_MAX ? INT32_MAX : (int)n;
		ERR_clear_error();
		errno = 0;
		r = SSL_read(e->ssl, p, len);
		if (r > 0)
			return r;
		return tls_result(e, (int)r, &e->rd_wait);
	}
	r = recv(e->fd, p, n, 0);
	if (r >= 0)
		return r;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
		e->rd_wait = EV_READ;
		return EP_AGAIN;
	}
	e->err = errno;
	return EP_ERROR;
}

ssize_t ep_write(struct endpoint *e, const void *p, size_t n)
{
	ssize_t r;

	if (e->ssl != NULL) {
		int len = n > INT32_MAX ? INT32_MAX : (int)n;
		ERR_clear_error();
		errno = 0;
		r = SSL_write(e->ssl, p, len);
		if (r > 0)
			return r;
		r = tls_result(e, (int)r, &e->wr_wait);
		return r == 0 ? EP_ERROR : r;
	}
	r = send(e->fd, p, n, MSG_NOSIGNAL);
	if (r >= 0)
		return r;
	if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
		e->wr_wait = EV_WRITE;
		return EP_AGAIN;
	}
	e->err = errno;
	return EP_ERROR;
}

int ep_handshake(struct endpoint *e)
{
	int r;

	ERR_clear_error();
	errno = 0;
	r = SSL_do_handshake(e->ssl);
	if (r == 1)
		return 1;
	r = tls_result(e, r, &e->wr_wait);
	return r == 0 ? EP_ERROR : r;
}

int ep_shutdown(struct endpoint *e, bool fin)
{
	if (e->shut)
		return 0;
	if (e->ssl != NULL) {
		int r;
		ERR_clear_error();
		r = SSL_shutdown(e->ssl);
		if (r < 0) {
			r = tls_result(e, r, &e->wr_wait);
			if (r == EP_AGAIN)
				return r;
			/* The peer is gone already: FIN is all that is left. */
		}
	}
	e->shut = true;
	if (fin && shutdown(e->fd, SHUT_WR) < 0) {
		e->err = errno;
		return EP_ERROR;
	}
	return 0;
}

bool ep_pending(const struct endpoint *e)
{
	return e->ssl != NULL && (SSL_pending(e->ssl) > 0 || sockbio_buffered(e));
}

int ep_want(const struct endpoint *e, bool rd, bool wr)
{
	int ev = 0;

	if (rd)
		ev |= e->rd_wait ? e->rd_wait : EV_READ;
	if (wr)
		ev |= e->wr_wait ? e->wr_wait : EV_WRITE;
	/* Waiting for DNS: no socket event can help. */
	return ev & (EV_READ | EV_WRITE);
}

void ep_ready(struct endpoint *e, int revents)
{
	if (revents & EV_READ) {
		sockbio_readable(e);
		if (e->rd_wait == EV_READ)
			e->rd_wait = 0;
		if (e->wr_wait == EV_READ)
			e->wr_wait = 0;
	}
	if (revents & EV_WRITE) {
		if (e->rd_wait == EV_WRITE)
			e->rd_wait = 0;
		if (e->wr_wait == EV_WRITE)
			e->wr_wait = 0;
	}
}

void ep_watch(struct endpoint *e, struct ev_loop *loop, int events)
{
	if (events == e->armed)
		return;
	if (e->armed)
		ev_io_stop(loop, &e->io);
	e->armed = (uint8_t)events;
	if (events) {
		ev_io_set(&e->io, e->fd, events);
		ev_io_start(loop, &e->io);
	}
}

void ep_close(struct endpoint *e, struct ev_loop *loop)
{
	if (e->fd < 0)
		return;
	ep_watch(e, loop, 0);
	if (e->ssl != NULL) {
		SSL_free(e->ssl);
		e->ssl = NULL;
	}
	sockbio_release(e);
	close(e->fd);
	e->fd = -1;
}
