/*
 * config_check: what config_finish() does once every file is parsed:
 * defaults, required keys, keys the chosen mode would ignore, keys this
 * build cannot honour, and the checks across services.
 */
#include "config_int.h"

#include <stdlib.h>
#include <string.h>

/*
 * Settings the contract names but this build cannot honour yet. Ignoring a
 * security setting would be worse than refusing it; delete a row when its
 * feature lands. value NULL refuses the key whatever its value.
 */
static const struct { enum kid key; const char *value; } unbuilt[] = {
	{ K_COUNT, NULL },   /* none left; the row keeps the table non-empty */
};

static void apply_defaults(struct ctx *c, struct sect *sc)
{
	for (int k = 0; k < K_COUNT; k++)
		if (config_keys[k].scope == sc->scope && config_keys[k].def && !sc->src->line[k])
			cf_setters[config_keys[k].type](c, &config_keys[k], sc, config_keys[k].def);
}

/* The word a refusable key holds, to match against unbuilt[]. */
static const char *current_word(const struct sect *sc, const struct key *k)
{
	bool b;
	int i;

	if (k->type == T_BOOL) {
		memcpy(&b, field(sc, k), sizeof b);
		return k->words[b];
	}
	if (k->type != T_ENUM)
		return NULL;
	memcpy(&i, field(sc, k), sizeof i);
	for (int n = 0; k->words[n]; n++)
		if (n == i)
			return k->words[n];
	return NULL;
}

static void check_unbuilt(struct ctx *c, const struct sect *sc)
{
	for (size_t i = 0; i < sizeof unbuilt / sizeof unbuilt[0]; i++) {
		const struct key *k;
		int line;
		const char *w;

		if (unbuilt[i].key == K_COUNT)
			continue;
		k = &config_keys[unbuilt[i].key];
		line = sc->src->line[unbuilt[i].key];
		if (k->scope != sc->scope || !line || sc->src->bad[unbuilt[i].key])
			continue;
		if (!unbuilt[i].value)
			cf_report(c, line, "%s is not supported in this build", k->name);
		else if ((w = current_word(sc, k)) && !strcmp(w, unbuilt[i].value))
			cf_report(c, line, "%s = %s is not supported in this build",
			    k->name, w);
	}
}

static int line_or_header(const struct service *s, const struct src *src,
    enum kid k)
{
	return src->line[k] ? src->line[k] : s->line;
}

static void finish_listen(struct ctx *c, struct service *s, struct src *src,
    int tls_min)
{
	bool tls_known = !src->bad[K_LISTEN_TLS];

	for (size_t i = 0; i < s->ncerts; i++)
		if (s->certs[i].cert && !s->certs[i].key)
			s->certs[i].key = cf_sdup(c, s->certs[i].cert,
			    strlen(s->certs[i].cert));
	if (tls_known && s->listen_tls != MODE_PLAIN && !s->ncerts)
		cf_report(c, line_or_header(s, src, K_LISTEN_TLS), "%s = %s needs %s",
		    NAME(K_LISTEN_TLS), config_mode_name(s->listen_tls),
		    NAME(K_LISTEN_CERT));
	if (!src->line[K_LISTEN_MIN_VERSION])
		s->listen_min_version = tls_min;
	if (!src->bad[K_PROXY_PROTOCOL] && s->proxy_protocol &&
	    !src->line[K_PROXY_FROM])
		cf_report(c, src->line[K_PROXY_PROTOCOL], "%s = yes needs %s: the "
		    "load balancers that may name the client", NAME(K_PROXY_PROTOCOL),
		    NAME(K_PROXY_FROM));
	if (!s->proxy_protocol && src->line[K_PROXY_FROM])
		cf_report(c, src->line[K_PROXY_FROM], "%s is set but %s = no",
		    NAME(K_PROXY_FROM), NAME(K_PROXY_PROTOCOL));
}

/*
 * upstream = mx: never an open relay (relay_from required), never
 * plaintext (starttls by default, implicit allowed), DANE by default
 * (RFC 7672 is written for MX delivery). Keys that name one upstream
 * host make no sense when every transaction picks its own.
 */
static void finish_mx(struct ctx *c, struct service *s, struct src *src)
{
	static const enum kid one_host[] = { K_UPSTREAM_NAME, K_UPSTREAM_PIN,
		K_UPSTREAM_PROXY_PROTOCOL, K_UPSTREAM_XCLIENT, K_PROXY_PROTOCOL };
	char port[8];

	if (!s->upstream_mx) {
		if (src->line[K_UPSTREAM_PORT])
			cf_report(c, src->line[K_UPSTREAM_PORT], "%s is set but %s is not mx",
			    NAME(K_UPSTREAM_PORT), NAME(K_UPSTREAM));
		if (src->line[K_RELAY_FROM])
			cf_report(c, src->line[K_RELAY_FROM], "%s is set but %s is not mx",
			    NAME(K_RELAY_FROM), NAME(K_UPSTREAM));
		return;
	}
	if (!src->line[K_RELAY_FROM])
		cf_report(c, line_or_header(s, src, K_UPSTREAM), "%s = mx needs %s: the "
		    "clients that may relay (never an open relay)", NAME(K_UPSTREAM),
		    NAME(K_RELAY_FROM));
	if (!src->line[K_UPSTREAM_TLS])
		s->upstream_tls = MODE_STARTTLS;
	else if (!src->bad[K_UPSTREAM_TLS] && s->upstream_tls == MODE_PLAIN)
		cf_report(c, src->line[K_UPSTREAM_TLS], "%s = plain is refused with %s = mx: "
		    "mail to other domains goes out over TLS (starttls or implicit)",
		    NAME(K_UPSTREAM_TLS), NAME(K_UPSTREAM));
	if (!src->line[K_UPSTREAM_VERIFY])
		s->upstream_verify = VERIFY_DANE;
	for (size_t i = 0; i < sizeof one_host / sizeof one_host[0]; i++)
		if (src->line[one_host[i]])
			cf_report(c, src->line[one_host[i]], "%s is not supported with %s = mx",
			    NAME(one_host[i]), NAME(K_UPSTREAM));
	free(s->upstream_port);
	snprintf(port, sizeof port, "%u", (unsigned)s->mx_port);
	s->upstream_port = cf_sdup(c, port, strlen(port));
}

static void finish_upstream(struct ctx *c, struct service *s, struct src *src,
    int tls_min)
{
	finish_mx(c, s, src);
	if (!s->upstream_name && s->upstream_host)
		s->upstream_name = cf_sdup(c, s->upstream_host,
		    strlen(s->upstream_host));
	if (src->line[K_UPSTREAM_KEY] && !src->line[K_UPSTREAM_CERT])
		cf_report(c, src->line[K_UPSTREAM_KEY], "%s is set but %s is not",
		    NAME(K_UPSTREAM_KEY), NAME(K_UPSTREAM_CERT));
	if (!s->upstream_key && s->upstream_cert)
		s->upstream_key = cf_sdup(c, s->upstream_cert, strlen(s->upstream_cert));
	if (!src->line[K_UPSTREAM_MIN_VERSION])
		s->upstream_min_version = tls_min;
	/* TLSA records hang off a host name (RFC 7672 2.2.3). */
	if (!src->bad[K_UPSTREAM_VERIFY] && s->upstream_host &&
	    (s->upstream_verify == VERIFY_DANE || s->upstream_verify == VERIFY_DANE_ONLY) &&
	    (strchr(s->upstream_host, ':') || strspn(s->upstream_host, "0123456789.") ==
	    strlen(s->upstream_host)))
		cf_report(c, line_or_header(s, src, K_UPSTREAM_VERIFY), "%s = %s needs a "
		    "host name in %s, not an address: DANE looks up TLSA records "
		    "for the name", NAME(K_UPSTREAM_VERIFY),
		    config_verify_name(s->upstream_verify), NAME(K_UPSTREAM));
}

/*
 * Keys the chosen mode would ignore. A security setting that silently does
 * nothing is worse than an error: the reader of the file believes it holds.
 * A row refuses `key` when `mode` (explicitly set or defaulted) holds the
 * word `is`; keys left at their defaults are never refused.
 */
static const struct { enum kid key, mode; int is; const char *why; } ignored[] = {
	{ K_LISTEN_CERT, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_KEY, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_CLIENT_CA, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_PLAIN_FROM, K_LISTEN_TLS, MODE_PLAIN, "a plain listener lets everyone send without TLS" },
	{ K_LISTEN_PLAIN_FROM, K_LISTEN_TLS, MODE_IMPLICIT, "an implicit listener has no plaintext phase" },
	{ K_LISTEN_CIPHERS, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_LISTEN_MIN_VERSION, K_LISTEN_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_VERIFY, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_NAME, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CA, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_PIN, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CERT, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_KEY, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CIPHERS, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_MIN_VERSION, K_UPSTREAM_TLS, MODE_PLAIN, NULL },
	{ K_UPSTREAM_CA, K_UPSTREAM_VERIFY, VERIFY_ENCRYPT, "no certificate is checked" },
	{ K_UPSTREAM_NAME, K_UPSTREAM_VERIFY, VERIFY_ENCRYPT, "no name is checked" },
	{ K_LISTEN_CIPHERS, K_LISTEN_MIN_VERSION, CONFIG_TLS13, "the list is of TLS 1.2 suites" },
	{ K_UPSTREAM_CIPHERS, K_UPSTREAM_MIN_VERSION, CONFIG_TLS13, "the list is of TLS 1.2 suites" },
};

static void check_ignored(struct ctx *c, const struct service *s,
    const struct src *src)
{
	for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
		const struct key *k = &config_keys[ignored[i].key], *m = &config_keys[ignored[i].mode];
		int v, line = src->line[ignored[i].key];

		if (!line || src->bad[ignored[i].mode] || src->bad[ignored[i].key])
			continue;
		memcpy(&v, (const char *)s + m->off, sizeof v);
		if (v != ignored[i].is)
			continue;
		/* One message per key: the first row that refuses it. */
		bool seen = false;
		for (size_t j = 0; j < i && !seen; j++) {
			int vj;

			memcpy(&vj, (const char *)s + config_keys[ignored[j].mode].off, sizeof vj);
			seen = ignored[j].key == ignored[i].key && vj == ignored[j].is &&
			    !src->bad[ignored[j].mode];
		}
		if (seen)
			continue;
		cf_report(c, line, "%s is set but %s = %s%s%s%s", k->name, m->name,
		    m->type == T_VERSION ? m->words[ignored[i].is - CONFIG_TLS12] :
		    m->words[ignored[i].is],
		    src->line[ignored[i].mode] ? "" : " (by default)",
		    ignored[i].why ? ": " : "", ignored[i].why ? ignored[i].why : "");
	}
}

static void finish_service(struct ctx *c, struct config *cfg, size_t i)
{
	struct service *s = &cfg->services[i];
	struct src *src = &priv_of(cfg)->ssrc[i];
	struct sect sc = { SC_SERVICE, s, src };

	c->file = s->file;
	c->line = s->line;
	apply_defaults(c, &sc);
	for (int k = 0; k < K_COUNT; k++)
		if ((config_keys[k].flags & F_REQUIRED) && !src->line[k])
			cf_report(c, s->line, "service '%s': missing required key '%s'",
			    s->name, NAME(k));
	finish_listen(c, s, src, cfg->tls_min_version);
	finish_upstream(c, s, src, cfg->tls_min_version);
	check_ignored(c, s, src);
	check_unbuilt(c, &sc);
}

static bool same_addr(const struct sockaddr_text *a,
    const struct sockaddr_text *b)
{
	return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* Two binds of one address would fail at start; say so at check time. */
static void check_listen_unique(struct ctx *c, const struct config *cfg)
{
	for (size_t i = 0; i < cfg->nservices; i++) {
		const struct service *s = &cfg->services[i];

		c->file = s->file;
		for (size_t j = 0; j < s->nlisten; j++)
			for (size_t i2 = 0; i2 <= i; i2++) {
				const struct service *o = &cfg->services[i2];
				size_t end = i2 == i ? j : o->nlisten;

				for (size_t j2 = 0; j2 < end; j2++)
					if (same_addr(&s->listen[j], &o->listen[j2]))
						cf_report(c, s->line, "service '%s': listen "
						    "address %s is already used by "
						    "service '%s'", s->name,
						    s->listen[j].text, o->name);
			}
	}
}

/* tls_min_version is only a default: refuse it when no hop takes it. */
static void check_tls_default(struct ctx *c, const struct config *cfg,
    const struct priv *p)
{
	int line = p->gsrc.line[K_TLS_MIN_VERSION];

	if (!line || p->gsrc.bad[K_TLS_MIN_VERSION])
		return;
	for (size_t i = 0; i < cfg->nservices; i++) {
		const struct service *s = &cfg->services[i];
		const struct src *src = &p->ssrc[i];

		if ((s->listen_tls != MODE_PLAIN && !src->line[K_LISTEN_MIN_VERSION]) ||
		    (s->upstream_tls != MODE_PLAIN && !src->line[K_UPSTREAM_MIN_VERSION]))
			return;
	}
	c->file = p->gfile;
	cf_report(c, line, "%s is set but no TLS hop takes it (every hop is %s or "
	    "sets its own minimum)", NAME(K_TLS_MIN_VERSION), config_mode_name(MODE_PLAIN));
}

/* Ticket keys serve TLS listeners only: refuse them where there is none. */
static void check_ticket_keys(struct ctx *c, const struct config *cfg,
    const struct priv *p)
{
	int line = p->gsrc.line[K_TLS_TICKET_KEYS];

	if (!line)
		return;
	for (size_t i = 0; i < cfg->nservices; i++)
		if (cfg->services[i].listen_tls != MODE_PLAIN)
			return;
	c->file = p->gfile;
	cf_report(c, line, "%s is set but no listener uses TLS", NAME(K_TLS_TICKET_KEYS));
}

int config_finish(struct config *cfg, const char *where, FILE *err)
{
	struct priv *p = priv_of(cfg);
	struct ctx c = { err, p->gfile ? p->gfile : where, 0, 0 };
	struct sect g = { SC_GLOBAL, cfg, &p->gsrc };

	apply_defaults(&c, &g);
	check_unbuilt(&c, &g);
	for (size_t i = 0; i < cfg->nservices; i++)
		finish_service(&c, cfg, i);
	check_listen_unique(&c, cfg);
	if (cfg->nservices) {
		check_tls_default(&c, cfg, p);
		check_ticket_keys(&c, cfg, p);
	}
	c.file = where;
	if (cfg->nservices == 0)
		cf_report(&c, 0, "no service defined");
	return c.nerr;
}
