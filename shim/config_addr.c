/*
 * config_addr: addresses and networks, parsed (listen, metrics, upstream,
 * the CIDR lists) and matched against a client's address.
 */
#include "config_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* "host:port" or "[host]:port"; the host comes back without brackets. */
static bool split_hostport(const char *v, const char **h, size_t *hn,
    bool *br, const char **p)
{
	const char *e;
	uint64_t n;

	*br = v[0] == '[';
	if (*br) {
		e = strchr(v, ']');
		if (!e || e[1] != ':')
			return false;
		*h = v + 1;
		*p = e + 2;
	} else {
		e = strrchr(v, ':');
		if (!e)
			return false;
		*h = v;
		*p = e + 1;
	}
	*hn = (size_t)(e - *h);
	return *hn > 0 && cf_parse_num(*p, strlen(*p), 65535, &n) && n > 0;
}

static bool parse_sockaddr(const char *v, struct sockaddr_text *out)
{
	struct sockaddr_in s4 = { .sin_family = AF_INET };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };
	char host[INET6_ADDRSTRLEN];
	const char *h, *p;
	size_t hn;
	bool br;
	uint16_t port;

	if (!split_hostport(v, &h, &hn, &br, &p) || hn >= sizeof host)
		return false;
	port = (uint16_t)atoi(p);
	memcpy(host, h, hn);
	host[hn] = '\0';
	memset(&out->ss, 0, sizeof out->ss);
	if (br) {
		s6.sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &s6.sin6_addr) != 1)
			return false;
		memcpy(&out->ss, &s6, sizeof s6);
		out->len = sizeof s6;
	} else {
		s4.sin_port = htons(port);
		if (inet_pton(AF_INET, host, &s4.sin_addr) != 1)
			return false;
		memcpy(&out->ss, &s4, sizeof s4);
		out->len = sizeof s4;
	}
	return true;
}

#define ADDR_HINT \
	"expected a numeric address and port, e.g. 0.0.0.0:587 or [::]:587"

bool cf_set_listen(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct sockaddr_text a;

	if (!parse_sockaddr(v, &a))
		return cf_bad(c, k, v, ADDR_HINT);
	if (!(a.text = cf_sdup(c, v, strlen(v))))
		return false;
	struct sockaddr_text *arr = cf_grow(c, s->listen, s->nlisten, sizeof *arr);
	if (!arr) {
		free(a.text);
		return false;
	}
	s->listen = arr;
	arr[s->nlisten++] = a;
	return true;
}

bool cf_set_metrics(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct config *g = sc->base;
	struct sockaddr_text a;

	if (!parse_sockaddr(v, &a))
		return cf_bad(c, k, v, ADDR_HINT);
	if (!(a.text = cf_sdup(c, v, strlen(v))) || !cf_set_str(c, k, sc, v)) {
		free(a.text);
		return false;
	}
	free(g->metrics_addr.text);
	g->metrics_addr = a;
	return true;
}

bool cf_set_upstream(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct service *s = sc->base;
	struct in6_addr a6;
	char host[INET6_ADDRSTRLEN] = "";
	const char *h, *p;
	size_t hn;
	bool br;

	if (strcmp(v, "mx") == 0) {
		/* The outbound relay: hosts come from each recipient's MX. */
		free(s->upstream);
		free(s->upstream_host);
		s->upstream = cf_sdup(c, v, 2);
		s->upstream_host = cf_sdup(c, v, 2);
		s->upstream_mx = true;
		return s->upstream && s->upstream_host;
	}
	s->upstream_mx = false;
	if (!split_hostport(v, &h, &hn, &br, &p) || (!br && !cf_host_chars(h, hn)))
		return cf_bad(c, k, v, "expected host:port or [IPv6]:port");
	if (br && hn < sizeof host)
		memcpy(host, h, hn);
	if (br && inet_pton(AF_INET6, host, &a6) != 1)
		return cf_bad(c, k, v, "'[...]' must hold an IPv6 address");
	free(s->upstream);
	free(s->upstream_host);
	free(s->upstream_port);
	s->upstream = cf_sdup(c, v, strlen(v));
	s->upstream_host = cf_sdup(c, h, hn);
	s->upstream_port = cf_sdup(c, p, strlen(p));
	return s->upstream && s->upstream_host && s->upstream_port;
}

static void cidr_mask(struct cidr *n)
{
	for (unsigned i = 0; i < 16; i++) {
		unsigned keep = n->bits > i * 8 ? n->bits - i * 8 : 0;

		if (keep < 8)
			n->addr[i] &= (uint8_t)(0xff00u >> keep);
	}
}

static const uint8_t v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

/* ::ffff:a.b.c.d/N is stored as a.b.c.d/(N-96): one form to match. */
static bool parse_cidr(const char *t, size_t n, struct cidr *out)
{
	char buf[64];
	char *slash;
	uint64_t bits;
	unsigned max;

	if (n >= sizeof buf)
		return false;
	memcpy(buf, t, n);
	buf[n] = '\0';
	memset(out, 0, sizeof *out);
	out->family = memchr(buf, ':', n) ? AF_INET6 : AF_INET;
	max = out->family == AF_INET6 ? 128 : 32;
	bits = max;
	if ((slash = strchr(buf, '/'))) {
		*slash = '\0';
		if (!cf_parse_num(slash + 1, strlen(slash + 1), max, &bits))
			return false;
	}
	if (inet_pton(out->family, buf, out->addr) != 1)
		return false;
	out->bits = (uint8_t)bits;
	cidr_mask(out);
	if (out->family == AF_INET6 && bits >= 96 &&
	    memcmp(out->addr, v4mapped, 12) == 0) {
		out->family = AF_INET;
		out->bits = (uint8_t)(bits - 96);
		memmove(out->addr, out->addr + 12, 4);
		memset(out->addr + 4, 0, 12);
	}
	return true;
}

#define SEP " \t,"

bool cf_set_cidrs(struct ctx *c, const struct key *k, struct sect *sc,
    const char *v)
{
	struct cidrs *s = field(sc, k);
	size_t ntok = 0;
	bool ok = true, any = false;

	for (const char *t = v + strspn(v, SEP); *t; t += strspn(t, SEP)) {
		size_t n = strcspn(t, SEP);
		struct cidr net, *arr;

		ntok++;
		if (n == 3 && memcmp(t, "any", 3) == 0) {
			any = true;
		} else if (!parse_cidr(t, n, &net)) {
			char *tok = cf_sdup(c, t, n);
			ok = tok && cf_bad(c, k, tok, "expected addresses or networks "
			    "(e.g. 127.0.0.0/8 ::1) or any");
			free(tok);
		} else if ((arr = cf_grow(c, s->v, s->n, sizeof *arr))) {
			s->v = arr;
			arr[s->n++] = net;
		} else {
			ok = false;
		}
		t += n;
	}
	if ((any && (ntok > 1 || s->n)) || (!any && s->any))
		return cf_bad(c, k, v, "'any' cannot be combined with addresses");
	s->any |= any;
	return ok;
}

/* The client's address as the family the CIDRs are stored in. */
static bool sockaddr_bytes(const struct sockaddr *sa, sa_family_t *fam,
    uint8_t a[16])
{
	struct sockaddr_in s4;
	struct sockaddr_in6 s6;

	if (sa->sa_family == AF_INET) {
		memcpy(&s4, sa, sizeof s4);
		memcpy(a, &s4.sin_addr, 4);
		*fam = AF_INET;
		return true;
	}
	if (sa->sa_family != AF_INET6)
		return false;
	memcpy(&s6, sa, sizeof s6);
	memcpy(a, &s6.sin6_addr, 16);
	*fam = AF_INET6;
	if (memcmp(a, v4mapped, 12) == 0) {
		memmove(a, a + 12, 4);
		*fam = AF_INET;
	}
	return true;
}

static bool prefix_match(const uint8_t *net, const uint8_t *a, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	uint8_t mask = (uint8_t)(0xff00u >> rest);

	return memcmp(net, a, full) == 0 &&
	    (rest == 0 || (a[full] & mask) == net[full]);
}

bool config_cidrs_match(const struct cidrs *list, const struct sockaddr *sa)
{
	uint8_t a[16];
	sa_family_t fam;

	if (!list || !sa)
		return false;
	if (list->any)
		return true;
	if (!sockaddr_bytes(sa, &fam, a))
		return false;
	for (size_t i = 0; i < list->n; i++)
		if (list->v[i].family == fam &&
		    prefix_match(list->v[i].addr, a, list->v[i].bits))
			return true;
	return false;
}

bool config_plain_allowed(const struct service *svc, const struct sockaddr *sa)
{
	return svc && config_cidrs_match(&svc->plain_from, sa);
}

bool config_proxy_trusted(const struct service *svc, const struct sockaddr *sa)
{
	return svc && config_cidrs_match(&svc->proxy_from, sa);
}
