#include "upsetup.h"

#include <stdlib.h>
#include <string.h>

static const char starttls[] = "STARTTLS\r\n";

static uint8_t *unseen_at(const struct pump *p)
{
	return p->b->data + p->b->off + p->b->fwd;
}

static int queue(struct pump *tx, const char *s, size_t n, struct fail *f)
{
	return pump_insert(tx, s, n) < 0 ? fail_set(f, R_NO_MEMORY, NULL) : UPSETUP_MOVED;
}

/* One verdict of the SMTP layer on the upstream's bytes. */
static int verdict(struct upsetup *u, const struct upsetup_io *io,
    struct smtp_result r, struct fail *f)
{
	struct pump *rx = io->rx;
	enum reason why;

	switch (r.v) {
	case SMTP_SEND_EHLO:
		free(u->greeting);
		u->greeting = malloc(r.n);
		if (u->greeting == NULL)
			return fail_set(f, R_NO_MEMORY, NULL);
		memcpy(u->greeting, unseen_at(rx), r.n);
		u->greeting_len = (uint32_t)r.n;
		buf_cut(rx->b, r.n);
		return queue(io->tx, io->ehlo, io->ehlo_len, f);
	case SMTP_SEND_STARTTLS:
		buf_cut(rx->b, r.n);
		return queue(io->tx, starttls, sizeof(starttls) - 1, f);
	case SMTP_START_TLS:
		buf_cut(rx->b, r.n);
		if (pump_unseen(rx) > 0 || pump_approved(io->tx) > 0)
			return fail_set(f, R_UP_INJECTION, NULL);
		pump_free(rx);
		return UPSETUP_TLS;
	case SMTP_REFUSE:
		why = reason_of_setup(r.reason);
		return fail_set(f, why, why == R_UP_INJECTION ? NULL : r.reason);
	case SMTP_CLOSE:
		return fail_set(f, R_UP_SETUP_ERROR, r.reason);
	default:
		return UPSETUP_WAIT;
	}
}

static int lost(const struct upsetup_io *io, struct fail *f)
{
	return fail_set(f, R_UP_SETUP_LOST, io->up->err ? strerror(io->up->err) : NULL);
}

int upsetup_turn(struct upsetup *u, const struct upsetup_io *io, struct fail *f)
{
	int progress = 0, r;

	r = pump_write(io->tx, io->up);
	if (r == PUMP_ERROR)
		return lost(io, f);
	progress |= r > 0;
	r = pump_read(io->rx, io->up);
	if (r == PUMP_NOMEM)
		return fail_set(f, R_NO_BUFFER, NULL);
	if (r == PUMP_ERROR)
		return lost(io, f);
	progress |= r > 0;
	while (pump_unseen(io->rx) > 0) {
		struct smtp_result v = smtp_setup(io->smtp, unseen_at(io->rx),
		    pump_unseen(io->rx));
		if (v.v == SMTP_MORE)
			break;
		r = verdict(u, io, v, f);
		if (r != UPSETUP_MOVED)
			return r;
		progress = 1;
	}
	if (io->rx->eof)
		return fail_set(f, R_UP_SETUP_CLOSED, NULL);
	if (pump_approved(io->tx) > 0) {
		r = pump_write(io->tx, io->up);
		if (r == PUMP_ERROR)
			return lost(io, f);
	}
	return progress ? UPSETUP_MOVED : UPSETUP_WAIT;
}

char *upsetup_take_greeting(struct upsetup *u, uint32_t *len)
{
	char *g = u->greeting;

	*len = u->greeting_len;
	u->greeting = NULL;
	u->greeting_len = 0;
	return g;
}

void upsetup_free(struct upsetup *u)
{
	free(u->greeting);
	u->greeting = NULL;
	u->greeting_len = 0;
}
