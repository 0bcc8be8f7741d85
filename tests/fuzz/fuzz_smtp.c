/*
 * libFuzzer: the SMTP state machine driven the way a session drives it.
 * The first byte picks the listen mode, plain_allowed, upstream STARTTLS
 * and XCLIENT to the upstream;
 * the rest is a script of chunks, each tagged for the client side, the
 * server side (or the STARTTLS dialogue before it) or a TLS transition.
 * Bytes a verdict leaves uncovered are offered again with the next chunk,
 * as the caller's buffer would. Invariants: n never exceeds the input,
 * verdicts that carry a reply carry a sane one, and the upstream's replies
 * pass whole (a PASS ends with the last line of a reply), and an XCLIENT
 * line is one line of printable ASCII within SMTP_XCLIENT_MAX.
 */
#include <stdlib.h>
#include <string.h>

#include "smtp.h"

#define PEND (SMTP_LINE_MAX * 4)

struct side {
	uint8_t buf[PEND];
	size_t len;
};

static char scratch[SMTP_EHLO_MAX + 64];

static void check(struct smtp_result r, size_t len)
{
	if (r.n > len)
		abort();
	if (r.reply != NULL && (r.reply_len < 4 || r.reply_len > SMTP_EHLO_MAX + 64))
		abort();
	if (r.reply != NULL && (r.reply[r.reply_len - 1] != '\n'))
		abort();
}

static void whole(const uint8_t *p, size_t n)
{
	size_t last = n - 1;

	if (n < 4 || p[n - 1] != '\n')
		abort();
	while (last > 0 && p[last - 1] != '\n')
		last--;
	if (n - last < 4 || p[last + 3] == '-')
		abort();
}

static void drop(struct side *s, size_t n)
{
	memmove(s->buf, s->buf + n, s->len - n);
	s->len -= n;
}

static void xclient_line(const struct smtp *s, const struct side *c)
{
	char line[SMTP_XCLIENT_MAX];
	size_t n = smtp_xclient_line(s, c->buf, c->len, "2001:db8::1", c->len & 1,
	    (unsigned)c->len, line);

	if (n == 0)
		abort();    /* the verdict comes only with an EHLO or HELO line */
	if (n > SMTP_XCLIENT_MAX || n < 10 || line[n - 2] != '\r' || line[n - 1] != '\n')
		abort();
	for (size_t i = 0; i < n - 2; i++)
		if (line[i] < 32 || line[i] > 126)
			abort();
}

static int run_client(struct smtp *s, struct side *c)
{
	for (int i = 0; i < 256 && c->len > 0; i++) {
		struct smtp_result r = smtp_client(s, c->buf, c->len);
		check(r, c->len);
		if (r.v == SMTP_MORE || r.v == SMTP_HOLD)
			return 0;
		if (r.v == SMTP_CLOSE)
			return -1;
		if ((r.v == SMTP_UP_EHLO || r.v == SMTP_UP_XCLIENT) && r.n != 0)
			abort();
		if (r.v == SMTP_UP_XCLIENT)
			xclient_line(s, c);
		drop(c, r.n);
		if (r.v == SMTP_STARTTLS) {
			if (c->len > 0)
				return -1;      /* injection: the session ends */
			smtp_listen_tls_up(s);
		}
	}
	return 0;
}

static int run_server(struct smtp *s, struct side *v, int *setup)
{
	for (int i = 0; i < 256 && v->len > 0; i++) {
		struct smtp_result r = *setup ? smtp_setup(s, v->buf, v->len) :
		    smtp_server(s, v->buf, v->len, scratch);
		check(r, v->len);
		if (r.v == SMTP_MORE || r.v == SMTP_HOLD)
			return 0;
		if (r.v == SMTP_CLOSE || r.v == SMTP_REFUSE)
			return -1;
		if (r.v == SMTP_PASS && !*setup)
			whole(v->buf, r.n);
		drop(v, r.n);
		if (r.v == SMTP_START_TLS) {
			smtp_upstream_tls_up(s);
			*setup = 0;
		}
	}
	return 0;
}

static int feed(struct side *s, const uint8_t *p, size_t n)
{
	if (n > PEND - s->len)
		n = PEND - s->len;
	memcpy(s->buf + s->len, p, n);
	s->len += n;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct side c, v;
	struct smtp s;
	int setup;

	if (size < 1)
		return 0;
	setup = (data[0] >> 3) & 1;
	smtp_init(&s, (enum smtp_listen)(data[0] % 3), (data[0] >> 2) & 1, setup);
	if ((data[0] >> 4) & 1)
		smtp_xclient_on(&s);
	c.len = v.len = 0;
	data++;
	size--;
	while (size >= 2) {
		uint8_t tag = data[0];
		size_t n = data[1] % 64 + 1;
		data += 2;
		size -= 2;
		if (n > size)
			n = size;
		if (tag & 1) {
			feed(&v, data, n);
			if (run_server(&s, &v, &setup) < 0)
				return 0;
		} else {
			feed(&c, data, n);
		}
		if (run_client(&s, &c) < 0)
			return 0;
		data += n;
		size -= n;
	}
	return 0;
}
