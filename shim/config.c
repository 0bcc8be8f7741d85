/*
 * config: the conf.d/ parser: lines, sections and key = value
 * assignments, and the record of where each key was set. The key table
 * (config_keys.c) is the only place a key name is spelled; parsing,
 * defaults, scope checks and messages all read it. Input is an arbitrary
 * byte block (fuzzed), so nothing here trusts a length or a terminator it
 * did not check.
 */
#include "config_int.h"

#include <stdlib.h>
#include <string.h>

struct parser {
	struct priv *p;
	struct ctx c;
	struct sect cur;
	struct service junk_svc;
	struct config junk_cfg;
	struct src junk_src;
};

static void service_fields_free(struct service *s)
{
	for (size_t i = 0; i < s->nlisten; i++)
		free(s->listen[i].text);
	for (size_t i = 0; i < s->ncerts; i++) {
		free(s->certs[i].cert);
		free(s->certs[i].key);
	}
	free(s->name); free(s->file); free(s->listen); free(s->certs);
	free(s->plain_from.v); free(s->proxy_from.v); free(s->relay_from.v); free(s->listen_client_ca); free(s->listen_ciphers);
	free(s->upstream); free(s->upstream_host); free(s->upstream_port);
	free(s->upstream_name); free(s->upstream_ca); free(s->pins);
	free(s->upstream_cert); free(s->upstream_key); free(s->upstream_ciphers);
	memset(s, 0, sizeof *s);
}

static void global_fields_free(struct config *g)
{
	free(g->user); free(g->helo_name); free(g->metrics);
	free(g->metrics_addr.text);
	for (size_t i = 0; i < g->ndns_resolvers; i++)
		free(g->dns_resolvers[i]);
	free(g->dns_resolvers); free(g->dnssec_trust_anchor); free(g->tls_ticket_keys);
}

/* Scratch sections hold what a refused section parsed; drop it. */
static void junk_drop(struct parser *ps)
{
	service_fields_free(&ps->junk_svc);
	global_fields_free(&ps->junk_cfg);
	memset(&ps->junk_cfg, 0, sizeof ps->junk_cfg);
	memset(&ps->junk_src, 0, sizeof ps->junk_src);
}

static void use_junk(struct parser *ps, enum scope scope)
{
	ps->cur.scope = scope;
	ps->cur.base = scope == SC_GLOBAL ? (void *)&ps->junk_cfg : &ps->junk_svc;
	ps->cur.src = &ps->junk_src;
}

static void open_global(struct parser *ps)
{
	struct priv *p = ps->p;

	if (p->gfile) {
		cf_report(&ps->c, ps->c.line, "duplicate section [global] (first at %s:%d)",
		    p->gfile, p->gline);
		use_junk(ps, SC_GLOBAL);
		return;
	}
	if (!(p->gfile = cf_sdup(&ps->c, ps->c.file, strlen(ps->c.file)))) {
		use_junk(ps, SC_GLOBAL);
		return;
	}
	p->gline = ps->c.line;
	ps->cur = (struct sect){ SC_GLOBAL, &p->pub, &p->gsrc };
}

static bool service_name_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789-_.", s[i]) || s[i] == '\0')
			return false;
	return n > 0;
}

static void open_service(struct parser *ps, const char *name, size_t n)
{
	struct config *cfg = &ps->p->pub;
	struct ctx *c = &ps->c;
	struct service *s;
	struct src *src;

	use_junk(ps, SC_SERVICE);
	if (!service_name_ok(name, n)) {
		cf_report(c, c->line, "bad section name '%.*s': use letters, digits, "
		    "'-', '_' and '.'", (int)n, name);
		return;
	}
	for (size_t i = 0; i < cfg->nservices; i++) {
		s = &cfg->services[i];
		if (strlen(s->name) == n && memcmp(s->name, name, n) == 0) {
			cf_report(c, c->line, "duplicate service '%.*s' (first at %s:%d)",
			    (int)n, name, s->file, s->line);
			return;
		}
	}
	/* Name and file first: a listed service always has both. */
	if (!(ps->junk_svc.name = cf_sdup(c, name, n)) ||
	    !(ps->junk_svc.file = cf_sdup(c, c->file, strlen(c->file))))
		return;
	if (!(src = cf_grow(c, ps->p->ssrc, cfg->nservices, sizeof *src)))
		return;
	ps->p->ssrc = src;
	if (!(s = cf_grow(c, cfg->services, cfg->nservices, sizeof *s)))
		return;
	cfg->services = s;
	s += cfg->nservices;
	s->name = ps->junk_svc.name;
	s->file = ps->junk_svc.file;
	s->line = c->line;
	memset(&ps->junk_svc, 0, sizeof ps->junk_svc);
	ps->cur = (struct sect){ SC_SERVICE, s, &src[cfg->nservices++] };
}

static void trim(const char **s, size_t *n)
{
	while (*n && (**s == ' ' || **s == '\t'))
		(*s)++, (*n)--;
	while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
		(*n)--;
}

static void header(struct parser *ps, const char *s, size_t n)
{
	junk_drop(ps);
	if (n < 2 || s[n - 1] != ']') {
		cf_report(&ps->c, ps->c.line, "bad section header: expected [name]");
		use_junk(ps, SC_SERVICE);
		return;
	}
	s++;
	n -= 2;
	trim(&s, &n);
	if (n == 6 && memcmp(s, "global", 6) == 0)
		open_global(ps);
	else
		open_service(ps, s, n);
}

/* Returns the row the line may set, or -1 after reporting why not. */
static int check_key(struct parser *ps, const char *s, size_t n)
{
	struct ctx *c = &ps->c;
	int k = cf_find_key(s, n);

	if (k < 0)
		cf_report(c, c->line, "unknown key '%.*s'", (int)n, s);
	else if (ps->cur.scope == SC_NONE)
		cf_report(c, c->line, "key '%s' outside any section", NAME(k));
	else if (config_keys[k].scope == SC_GLOBAL && ps->cur.scope != SC_GLOBAL)
		cf_report(c, c->line, "key '%s' belongs in [global]", NAME(k));
	else if (config_keys[k].scope == SC_SERVICE && ps->cur.scope != SC_SERVICE)
		cf_report(c, c->line, "key '%s' belongs in a service section, "
		    "not in [global]", NAME(k));
	else if (ps->cur.src->line[k] && !(config_keys[k].flags & F_REPEAT))
		cf_report(c, c->line, "duplicate key '%s' (first at line %d)",
		    NAME(k), ps->cur.src->line[k]);
	else
		return k;
	return -1;
}

static void assignment(struct parser *ps, const char *s, size_t n)
{
	const char *eq = memchr(s, '=', n), *v;
	size_t kn, vn;
	char *val;
	int k;

	if (!eq) {
		cf_report(&ps->c, ps->c.line, "expected 'key = value' or '[section]'");
		return;
	}
	kn = (size_t)(eq - s);
	v = eq + 1;
	vn = n - kn - 1;
	trim(&s, &kn);
	trim(&v, &vn);
	if ((k = check_key(ps, s, kn)) < 0)
		return;
	ps->cur.src->line[k] = ps->c.line;
	if (vn == 0) {
		cf_report(&ps->c, ps->c.line, "empty value for key '%s'", NAME(k));
		ps->cur.src->bad[k] = true;
	} else if ((val = cf_sdup(&ps->c, v, vn))) {
		if (!cf_setters[config_keys[k].type](&ps->c, &config_keys[k], &ps->cur, val))
			ps->cur.src->bad[k] = true;
		free(val);
	}
}

static bool has_control(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
			return true;
	return false;
}

static void parse_line(struct parser *ps, const char *s, size_t n)
{
	if (memchr(s, '\0', n)) {
		cf_report(&ps->c, ps->c.line, "NUL byte in line");
		return;
	}
	if (n && s[n - 1] == '\r')
		n--;
	for (size_t i = 0; i < n; i++)
		if (s[i] == ';' || s[i] == '#')
			n = i;
	trim(&s, &n);
	if (n == 0)
		return;
	if (has_control(s, n))
		cf_report(&ps->c, ps->c.line, "control character in line");
	else if (s[0] == '[')
		header(ps, s, n);
	else
		assignment(ps, s, n);
}

struct config *config_new(void)
{
	struct priv *p = calloc(1, sizeof *p);

	return p ? &p->pub : NULL;
}

int config_parse(struct config *cfg, const char *name, const char *text,
    size_t len, FILE *err)
{
	struct parser ps = { .p = priv_of(cfg), .c = { err, name, 0, 0 } };
	size_t i = 0;

	ps.cur.scope = SC_NONE;
	while (text && i < len) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t n = nl ? (size_t)(nl - (text + i)) : len - i;

		ps.c.line++;
		parse_line(&ps, text + i, n);
		i += n + 1;
	}
	junk_drop(&ps);
	return ps.c.nerr;
}

void config_free(struct config *cfg)
{
	struct priv *p;

	if (!cfg)
		return;
	p = priv_of(cfg);
	for (size_t i = 0; i < cfg->nservices; i++)
		service_fields_free(&cfg->services[i]);
	free(cfg->services);
	global_fields_free(cfg);
	free(p->ssrc);
	free(p->gfile);
	free(p);
}

bool config_key_where(const struct config *cfg, const struct service *svc,
    const char *key, size_t index, const char **file, int *line)
{
	const struct priv *p = (const struct priv *)(const void *)cfg;
	int k = cf_find_key(key, strlen(key));
	const struct src *src;
	size_t si;

	*file = p->gfile ? p->gfile : "[global]";
	*line = p->gline;
	if (k < 0)
		return false;
	if (!svc) {
		*line = p->gsrc.line[k] ? p->gsrc.line[k] : p->gline;
		return p->gsrc.line[k] != 0;
	}
	si = (size_t)(svc - cfg->services);
	if (si >= cfg->nservices)
		return false;
	src = &p->ssrc[si];
	*file = svc->file;
	*line = src->line[k];
	if ((k == K_LISTEN_CERT || k == K_LISTEN_KEY) && index < svc->ncerts)
		*line = k == K_LISTEN_CERT ? svc->certs[index].cert_line :
		    svc->certs[index].key_line;
	if (*line)
		return true;
	*line = svc->line;
	return false;
}
