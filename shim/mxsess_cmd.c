/* mxsess_cmd: the outbound relay's client commands, the transaction's
 * end and its log line (mxsess_int.h). */
#include "mxsess_int.h"

#include <idn2.h>

static const char *const result_names[] = { "ok", "refused", "error" };

/* One line per transaction (and one for a session that had none). */
void mx_log_tx(struct mxsess *s, enum reason why, const char *detail)
{
	char line[1400], client[64], words[400] = "", code[64] = "";
	enum result res = reason_result(why);
	const char *rpt = reason_rpt(why);
	ev_tstamp from = s->tx ? s->tx_start : s->start;
	int n;

	mx_addr_text(&s->peer.sa, client, sizeof(client));
	if (why != R_NONE) {
		reason_format(why, detail, words, sizeof(words));
		log_unquote(words);
	}
	if (rpt != NULL)
		snprintf(code, sizeof(code), " reason_code=%s", rpt);
	n = snprintf(line, sizeof(line),
	    "conn=%08x service=%s client=%s listen_tls=%s listen_cipher=%s mx=%s "
	    "upstream=%s rcpts=%u upstream_tls=%s upstream_auth=%s bytes_in=%llu ms=%lld "
	    "result=%s%s%s%s%s",
	    s->id, s->svc->svc->name, client, s->cl_ver, s->cl_cipher,
	    s->host[0] ? s->host : "none", s->up_text[0] ? s->up_text : "none", s->nrcpt,
	    s->up_ver, s->up_auth, (unsigned long long)s->body_bytes,
	    (long long)((ev_now(s->w->loop) - from) * 1000.0), result_names[res],
	    why != R_NONE ? " reason=\"" : "", words, why != R_NONE ? "\"" : "", code);
	if (n > 0)
		log_line(LEVEL_INFO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
	s->ntx++;
	if (s->w->mw != NULL && s->svc->mslot >= 0) {
		struct metrics_svc *ms = &s->w->mw->svc[s->svc->mslot];
		metrics_add(&ms->sessions[res == RES_OK ? MR_OK : res == RES_REFUSED ?
		    MR_REFUSED : MR_ERROR], 1);
		metrics_add(&ms->bytes_in, s->body_bytes);
		if (res == RES_REFUSED && rpt != NULL)
			metrics_add(&s->w->mw->refusals[metrics_code_index(rpt)], 1);
		if (strcmp(s->up_auth, "none") != 0)
			metrics_add(&s->w->mw->auth[metrics_auth_index(s->up_auth)], 1);
	}
}

/* ---- the transaction ---- */

void mx_tx_end(struct mxsess *s)
{
	if (!s->tx)
		return;
	if (s->delivered)
		mx_log_tx(s, R_NONE, NULL);
	else
		mx_log_tx(s, s->tx_why, s->tx_detail);
	mx_up_close(s, true);
	s->tx = s->bound = s->delivered = s->up_lost = s->discard = false;
	s->nrcpt = 0;
	s->body_bytes = 0;
	s->tx_why = R_NONE;
	s->tx_detail[0] = '\0';
	s->host[0] = s->up_text[0] = '\0';
	s->up_ver = s->up_auth = "none";
}

/* The end of data of a body whose MX is gone: the transaction is over. */
int mx_body_dropped(struct mxsess *s)
{
	s->discard = false;
	mx_tx_end(s);
	if (mx_say(s, "451 4.4.2 The MX host closed the connection or timed out\r\n") < 0)
		return -1;
	return mx_answered(s);
}

/* The MX closed, timed out or answered before its reply to the end of
 * data. A client still in its body goes on sending it: the rest is read
 * to its end and dropped, never taken as commands, and the end of data
 * gets the answer where the client waits for one. */
int mx_body_lost(struct mxsess *s)
{
	if (s->phase == PH_BODY) {
		s->discard = true;
		return 1;
	}
	return mx_body_dropped(s);
}

/* ---- the client's commands ---- */

static const char r_ok[] = "250 2.0.0 Ok\r\n";

static int ehlo_reply(struct mxsess *s, const char *name, bool ehlo)
{
	char out[600];
	const struct service *svc = s->svc->svc;
	bool offer_tls = svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL;
	int n;

	if (!ehlo) {
		n = snprintf(out, sizeof(out), "250 %s\r\n", name);
		return mx_reply(s, out, (size_t)n);
	}
	/* Only what every MX can be held to: no CHUNKING (an MX without it
	 * could not take BDAT), no DSN, no AUTH (relay_from decides). */
	n = snprintf(out, sizeof(out), "250-%s\r\n250-PIPELINING\r\n250-SIZE\r\n"
	    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n%s"
	    "250 LIMITS RCPTDOMAINMAX=1\r\n", name, offer_tls ? "250-STARTTLS\r\n" : "");
	return mx_reply(s, out, (size_t)n);
}

const char *mx_helo_name(const struct mxsess *s, char *out, size_t len)
{
	/* svc->ehlo is "EHLO name\r\n". */
	snprintf(out, len, "%.*s", (int)(s->svc->ehlo_len > 7 ? s->svc->ehlo_len - 7 : 0),
	    s->svc->ehlo + 5);
	return out;
}

/* A recipient domain in U-labels (RFC 6531) goes to DNS, TLSA names,
 * certificate checks and the one-domain rule as A-labels (IDNA2008); the
 * RCPT line is relayed as the client wrote it. NULL ok, else the reply. */
static const char *rcpt_alabels(const struct mxsess *s, char *dom, size_t len)
{
	char *out = NULL;
	const char *r = NULL;
	size_t i;

	for (i = 0; dom[i] != '\0' && (unsigned char)dom[i] < 0x80; i++)
		;
	if (dom[i] == '\0')
		return NULL;
	if (!s->mail.smtputf8)
		return "553 5.6.7 A non-ASCII recipient domain needs MAIL FROM with SMTPUTF8\r\n";
	if (idn2_to_ascii_8z(dom, &out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL) != IDN2_OK ||
	    strlen(out) >= len)
		r = "553 5.1.3 The recipient domain is not a valid internationalized name\r\n";
	else
		snprintf(dom, len, "%s", out);
	idn2_free(out);
	return r;
}

static int cmd_rcpt(struct mxsess *s, const char *line, size_t len, const char *args)
{
	char dom[ROUTE_NAME_MAX];
	const char *bad;

	if (!s->tx)
		return mx_say(s, "503 5.5.1 MAIL first\r\n");
	bad = route_rcpt_domain(args, (size_t)(line + len - args), dom, sizeof(dom));
	if (bad == NULL)
		bad = rcpt_alabels(s, dom, sizeof(dom));
	if (bad != NULL)
		return mx_say(s, bad);
	if (s->nrcpt >= RCPT_MAX)
		return mx_say(s, "452 4.5.3 Too many recipients\r\n");
	if (len + 2 > sizeof(s->rcpt))
		return mx_say(s, "501 5.5.4 Recipient address too long\r\n");
	/* The line as the client wrote it (CRLF ended). */
	memcpy(s->rcpt, line, len);
	s->rcpt_len = len;
	if (s->rcpt_len < 2 || s->rcpt[s->rcpt_len - 2] != '\r') {
		s->rcpt[s->rcpt_len - 1] = '\r';
		s->rcpt[s->rcpt_len++] = '\n';
	}
	if (s->bound) {
		if (strcmp(dom, s->dom) != 0)
			return mx_say(s, "452 4.5.3 One recipient domain per transaction "
			    "(RCPTDOMAINMAX=1), send the others separately\r\n");
		if (s->up_lost || s->up.fd < 0)
			return mx_say(s, "451 4.4.2 The MX host closed the connection\r\n");
		s->phase = PH_WAIT;
		return mx_send_up(s, s->rcpt, s->rcpt_len, U_RCPT);
	}
	snprintf(s->dom, sizeof(s->dom), "%s", dom);
	return mx_bind_start(s);
}

static int cmd_data(struct mxsess *s)
{
	if (!s->tx)
		return mx_say(s, "503 5.5.1 MAIL first\r\n");
	if (!s->bound || s->nrcpt == 0)
		return mx_say(s, "554 5.5.1 No valid recipients\r\n");
	if (s->up_lost || s->up.fd < 0)
		return mx_say(s, "451 4.4.2 The MX host closed the connection\r\n");
	s->phase = PH_WAIT;
	return mx_send_up(s, LIT("DATA\r\n"), U_DATA);
}

static int cmd_mail(struct mxsess *s, const char *line, size_t len, const char *args)
{
	const char *bad;

	if (!s->helo)
		return mx_say(s, "503 5.5.1 Send EHLO first\r\n");
	if (s->tx)
		return mx_say(s, "503 5.5.1 Nested MAIL command\r\n");
	bad = route_mail_parse(args, (size_t)(line + len - args), &s->mail);
	if (bad != NULL)
		return mx_say(s, bad);
	s->tx = true;
	s->tx_start = ev_now(s->w->loop);
	return mx_say(s, "250 2.1.0 Ok\r\n");
}

/* CHUNKING is not offered, but a chunk follows the BDAT: its bytes are
 * dropped, never read as commands (RFC 3030 2). Where a BDAT of another
 * spelling ends is unknown, and a chunk larger than any message is not
 * waited for: the session ends. */
static int cmd_bdat(struct mxsess *s, const char *line, size_t len)
{
	uint64_t size;
	bool last;

	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	if (!smtp_bdat_parse((const uint8_t *)line, len, &size, &last))
		return mx_close_after(s, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
	if (size > SMTP_CHUNK_MAX)
		return mx_close_after(s, "552 5.3.4 BDAT chunk larger than the message "
		    "size limit\r\n");
	s->skip = size;
	return mx_say(s, "502 5.5.1 CHUNKING is not offered\r\n");
}

/* The last reply (if it fits) and a clean close; never fails. */
int mx_close_after(struct mxsess *s, const char *r)
{
	if (r != NULL)
		(void)mx_say(s, r);
	s->cl_state = CL_CLOSING;
	mx_set_timer(s, s->svc->svc->timeout_handshake_ms);
	return 1;
}

int mx_command(struct mxsess *s, const char *line, size_t len)
{
	const struct service *svc = s->svc->svc;
	const char *args;
	enum route_verb v = route_verb(line, len, &args);
	char name[300];

	if (memchr(line, '\0', len) != NULL || memchr(line, '\r', len >= 2 ? len - 2 : 0) != NULL ||
	    (len >= 2 && line[len - 2] != '\r') || (len > 0 && (line[0] == ' ' ||
	    line[0] == '\t')))
		return mx_say(s, "500 5.5.2 Bad command line\r\n");
	if (svc->listen_tls == MODE_STARTTLS && s->cl.ssl == NULL && !s->plain_allowed &&
	    v != ROUTE_V_EHLO && v != ROUTE_V_HELO && v != ROUTE_V_STARTTLS &&
	    v != ROUTE_V_NOOP && v != ROUTE_V_RSET && v != ROUTE_V_QUIT)
		return mx_say(s, "530 5.7.0 Must issue a STARTTLS command first\r\n");
	switch (v) {
	case ROUTE_V_EHLO:
	case ROUTE_V_HELO:
		if (*args == '\r' || *args == '\n' || *args == '\0')
			return mx_say(s, "501 5.5.4 A domain is needed\r\n");
		mx_tx_end(s);
		s->helo = true;
		return ehlo_reply(s, mx_helo_name(s, name, sizeof(name)), v == ROUTE_V_EHLO);
	case ROUTE_V_STARTTLS:
		if (svc->listen_tls != MODE_STARTTLS || s->cl.ssl != NULL)
			return mx_say(s, "502 5.5.1 STARTTLS is not offered\r\n");
		if (pump_unseen(&s->cin) > len)
			return -2;        /* pipelined after STARTTLS: injection */
		mx_tx_end(s);
		s->cl_state = CL_STARTTLS;
		return mx_say(s, "220 2.0.0 Ready to start TLS\r\n");
	case ROUTE_V_MAIL:
		return cmd_mail(s, line, len, args);
	case ROUTE_V_RCPT:
		return cmd_rcpt(s, line, len, args);
	case ROUTE_V_DATA:
		return cmd_data(s);
	case ROUTE_V_RSET:
		mx_tx_end(s);
		return mx_say(s, r_ok);
	case ROUTE_V_NOOP:
		return mx_say(s, r_ok);
	case ROUTE_V_QUIT:
		mx_tx_end(s);
		return mx_close_after(s, "221 2.0.0 Bye\r\n");
	case ROUTE_V_VRFY:
		return mx_say(s, "252 2.0.0 Send some mail, I will try my best\r\n");
	case ROUTE_V_HELP:
		return mx_say(s, "214 2.0.0 mailshim outbound relay\r\n");
	case ROUTE_V_BDAT:
		return cmd_bdat(s, line, len);
	case ROUTE_V_AUTH:
		return mx_say(s, "502 5.5.1 AUTH is not offered\r\n");
	default:
		return mx_say(s, "500 5.5.2 Command not recognized\r\n");
	}
}
