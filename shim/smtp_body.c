/*
 * smtp_body: a DATA body on its way through, up to the end-of-data line
 * (see smtp_client.c, which hands it the bytes of C_BODY).
 */
#include "smtp_int.h"

#include <string.h>

static const struct text
    t_bare_lf = TEXT("554 5.5.2 bare LF around end-of-data refused\r\n"),
    t_bare_cr = TEXT("554 5.5.2 bare CR around end-of-data refused\r\n");

/* What a '.' in a body follows, for the end-of-data matcher. */
enum {
	D_SOL,      /* at a line start after CRLF (or at the body's start) */
	D_SOL_LF,   /* at a line start after a bare LF */
	D_SOL_CR,   /* after a bare CR, and a '.' follows */
	D_MID,      /* inside a line */
};

/* Outcomes of a '.' at a line start. */
enum { DL_TEXT, DL_MORE, DL_END, DL_BARE_LF, DL_BARE_CR };

/*
 * Only ".CRLF" after a CRLF ends the body. Any other way of spelling a
 * dot line with CR or LF is refused: some server down the path may take it
 * for the end and read what follows as a new transaction (SMTP smuggling).
 * ".<CR>x" and "<CR>.<CR><LF>" are refused too, for the servers that take a
 * bare CR for a line end.
 */
static int dot_line(uint8_t at, const uint8_t *p, size_t len)
{
	if (len < 2)
		return DL_MORE;
	if (p[1] == '\n')
		return DL_BARE_LF;
	if (p[1] != '\r')
		return DL_TEXT;
	if (len < 3)
		return DL_MORE;
	if (p[2] != '\n')
		return DL_BARE_CR;
	if (at == D_SOL)
		return DL_END;
	return at == D_SOL_LF ? DL_BARE_LF : DL_BARE_CR;
}

/* What stands before the '.' at p[i]: the two bytes before it, from the
 * input or, at its start, from the bytes passed before. */
static uint8_t dot_context(const struct smtp *s, const uint8_t *p, size_t i)
{
	uint8_t b1 = i >= 1 ? p[i - 1] : s->hist[1];
	uint8_t b2 = i >= 2 ? p[i - 2] : i == 1 ? s->hist[1] : s->hist[0];

	if (b1 == '\n')
		return b2 == '\r' ? D_SOL : D_SOL_LF;
	return b1 == '\r' ? D_SOL_CR : D_MID;
}

/* Remember the last two bytes that passed, for a dot the next read opens
 * with. */
static struct smtp_result body_pass(struct smtp *s, const uint8_t *p, size_t n)
{
	if (n >= 2) {
		s->hist[0] = p[n - 2];
		s->hist[1] = p[n - 1];
	} else if (n == 1) {
		s->hist[0] = s->hist[1];
		s->hist[1] = p[0];
	}
	return smtp_pass(n);
}

static struct smtp_result body_end(struct smtp *s, size_t n)
{
	/* 354 answered the last queued command: the queue is empty. */
	smtp_qpush(s, K_DOT);
	smtp_client_enter(s, C_CMD);
	return smtp_verdict(SMTP_PASS, n);
}

/*
 * Only a '.' that starts a line (or follows a bare CR) can end the body or
 * smuggle an end, so the scan jumps from dot to dot: most bodies (base64
 * above all) have few or none, and their bytes are never looked at one by
 * one. A dot line is held back until its fate is known, so a PASS never
 * carries the dot of a refused end-of-data or anything past the end.
 */
struct smtp_result smtp_body(struct smtp *s, const uint8_t *p, size_t len)
{
	size_t off = 0, i;
	const uint8_t *d;

	while ((d = memchr(p + off, '.', len - off)) != NULL) {
		uint8_t at;
		i = (size_t)(d - p);
		at = dot_context(s, p, i);
		off = i + 1;
		if (at == D_MID)
			continue;
		switch (dot_line(at, d, len - i)) {
		case DL_TEXT:
			break;
		case DL_END:
			return body_end(s, i + 3);
		case DL_BARE_LF:
			return i ? body_pass(s, p, i) : smtp_die(s, &t_bare_lf,
			    "bare LF around end-of-data (SMTP smuggling)");
		case DL_BARE_CR:
			return i ? body_pass(s, p, i) : smtp_die(s, &t_bare_cr,
			    "bare CR around end-of-data (SMTP smuggling)");
		default:
			return body_pass(s, p, i);
		}
	}
	return body_pass(s, p, len);
}
