#include "upxclient.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

/* The client's numeric address as XCLIENT wants it: an IPv4 address in an
 * IPv6 socket (::ffff:a.b.c.d) is the IPv4 address. */
static void addr_text(const struct sockaddr *sa, char *out, size_t len,
    bool *v6, unsigned *port)
{
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
	const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

	*v6 = false;
	if (sa->sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
		inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], out, (socklen_t)len);
		*port = ntohs(in6->sin6_port);
	} else if (sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &in6->sin6_addr, out, (socklen_t)len);
		*port = ntohs(in6->sin6_port);
		*v6 = true;
	} else {
		inet_ntop(AF_INET, &in->sin_addr, out, (socklen_t)len);
		*port = ntohs(in->sin_port);
	}
}

static int queue(struct pump *tx, const void *p, size_t n, struct fail *f)
{
	/* The client's pipelined bytes wait in the same buffer: a client that
	 * fills it behind its first EHLO leaves no room for the shim's line. */
	if (pump_room(tx) < n)
		return fail_set(f, R_CL_SMTP,
		    "client pipelined more than a buffer holds behind its first EHLO");
	return pump_insert(tx, p, n) < 0 ? fail_set(f, R_NO_MEMORY, NULL) : 1;
}

int upxclient_send(struct pump *tx, const struct smtp *s, enum smtp_verdict v,
    const char *ehlo, size_t ehlo_len, const struct sockaddr *peer,
    struct fail *f)
{
	char addr[INET6_ADDRSTRLEN] = "", line[SMTP_XCLIENT_MAX];
	unsigned port = 0;
	bool v6;
	size_t n;

	if (v == SMTP_UP_EHLO)
		return queue(tx, ehlo, ehlo_len, f);
	addr_text(peer, addr, sizeof(addr), &v6, &port);
	n = smtp_xclient_line(s, tx->b->data + tx->b->off + tx->b->fwd,
	    pump_unseen(tx), addr, v6, port, line);
	if (n == 0)
		return fail_set(f, R_CL_SMTP, "no EHLO line for XCLIENT");
	return queue(tx, line, n, f);
}
