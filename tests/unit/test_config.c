/*
 * Unit tests of the configuration parser (shim/config*.c). Every text is
 * handed to the parser in a buffer of exactly its length (no terminating
 * NUL), so ASan catches any read past the end of a line or file.
 */
#include "config.h"
#include "unit.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define SVC "[s]\nlisten = 127.0.0.1:2525\nupstream = mail.example:25\n"
#define PIN "sha256/8NJKSAcPi4DdTd+yFNqz1DXBZA+S6DEVG55aKD5Gfvo="

/* Errors printed by the last parse() or load(). */
static char *errs;
static int nerr;

static int parse_into(struct config *cfg, const char *name, const char *text,
    size_t len, FILE *f)
{
	char *exact = malloc(len ? len : 1);
	int n;

	memcpy(exact, text, len);
	n = config_parse(cfg, name, exact, len, f);
	free(exact);
	return n;
}

/* Parses one file "t.conf" and finishes; NULL when there were errors. */
static struct config *parse_n(const char *text, size_t len)
{
	struct config *cfg = config_new();
	size_t sz;
	FILE *f;

	free(errs);
	f = open_memstream(&errs, &sz);
	nerr = parse_into(cfg, "t.conf", text, len, f);
	nerr += config_finish(cfg, "conf.d", f);
	fclose(f);
	if (nerr) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

static struct config *parse(const char *text)
{
	return parse_n(text, strlen(text));
}

/* Parses text expecting exactly one error, whose message is want. */
static void expect_error(const char *text, const char *want)
{
	struct config *cfg = parse(text);

	CHECK(cfg == NULL);
	CHECK_EQ(nerr, 1);
	if (nerr != 1 || !errs || !strstr(errs, want))
		fprintf(stderr, "  wanted \"%s\", got \"%s\"\n", want, errs);
	CHECK(errs && strstr(errs, want));
	config_free(cfg);
}

static int count_lines(const char *s)
{
	int n = 0;

	for (; s && *s; s++)
		n += *s == '\n';
	return n;
}

static void test_defaults(void)
{
	struct config *cfg = parse(SVC);
	struct service *s;
	struct sockaddr_in sin;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK_EQ(cfg->workers, 0);
	CHECK(cfg->user == NULL && cfg->helo_name == NULL && cfg->metrics == NULL);
	CHECK_EQ(cfg->log, LOG_STDERR);
	CHECK_EQ(cfg->log_level, LEVEL_INFO);
	CHECK_EQ(cfg->max_connections, 10000);
	CHECK_EQ(cfg->tls_min_version, CONFIG_TLS12);
	CHECK_EQ(cfg->nservices, 1);
	s = &cfg->services[0];
	CHECK_STR(s->name, "s");
	CHECK_STR(s->file, "t.conf");
	CHECK_EQ(s->line, 1);
	CHECK_EQ(s->nlisten, 1);
	CHECK_STR(s->listen[0].text, "127.0.0.1:2525");
	CHECK_EQ(s->listen[0].len, sizeof sin);
	memcpy(&sin, &s->listen[0].ss, sizeof sin);
	CHECK_EQ(sin.sin_family, AF_INET);
	CHECK_EQ(ntohs(sin.sin_port), 2525);
	CHECK_EQ(ntohl(sin.sin_addr.s_addr), 0x7f000001);
	CHECK_EQ(s->listen_tls, MODE_PLAIN);
	CHECK_EQ(s->ncerts, 0);
	CHECK(!s->plain_from.any);
	CHECK_EQ(s->plain_from.n, 0);
	CHECK(s->listen_client_ca == NULL && s->listen_ciphers == NULL);
	CHECK_EQ(s->listen_min_version, CONFIG_TLS12);
	CHECK(!s->proxy_protocol);
	CHECK_STR(s->upstream, "mail.example:25");
	CHECK_STR(s->upstream_host, "mail.example");
	CHECK_STR(s->upstream_port, "25");
	CHECK_EQ(s->upstream_tls, MODE_PLAIN);
	CHECK_EQ(s->upstream_verify, VERIFY_VERIFY);
	CHECK_STR(s->upstream_name, "mail.example");
	CHECK_STR(s->upstream_ca, "/etc/ssl/certs/ca-certificates.crt");
	CHECK_EQ(s->npins, 0);
	CHECK(s->upstream_cert == NULL && s->upstream_key == NULL);
	CHECK(s->upstream_ciphers == NULL);
	CHECK_EQ(s->upstream_min_version, CONFIG_TLS12);
	CHECK_EQ(s->upstream_proxy_protocol, PROXY_NO);
	CHECK(!s->upstream_xclient);
	CHECK_EQ(s->timeout_connect_ms, 10000);
	CHECK_EQ(s->timeout_handshake_ms, 30000);
	CHECK_EQ(s->timeout_idle_ms, 300000);
	config_free(cfg);
}

static void test_all_keys(void)
{
	struct config *cfg = parse(
	    "[global]\nworkers = 4\nuser = mailshim\nhelo_name = mx.example\n"
	    "log = syslog\nlog_level = debug\nmax_connections = 1000000\n"
	    "tls_min_version = TLSv1.2\n"
	    "[sub]\nlisten = [::]:587\nlisten_tls = starttls\n"
	    "listen_cert = /c.pem\nlisten_key = /c.key\n"
	    "listen_plain_from = 127.0.0.0/8 ::1\nlisten_client_ca = /ca.pem\n"
	    "listen_min_version = TLSv1.2\nlisten_ciphers = ECDHE+AESGCM\n"
	    "proxy_protocol = no\nupstream = [2001:db8::5]:465\n"
	    "upstream_tls = implicit\nupstream_verify = verify\n"
	    "upstream_name = legacy.internal\nupstream_ca = /u.pem\n"
	    "upstream_pin = " PIN "\nupstream_cert = /uc.pem\n"
	    "upstream_key = /uc.key\nupstream_ciphers = AES256\n"
	    "upstream_proxy_protocol = no\nupstream_xclient = no\n"
	    "timeout_connect = 500ms\ntimeout_handshake = 5m\ntimeout_idle = 1h\n");
	struct service *s;
	struct sockaddr_in6 s6;

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK_EQ(cfg->workers, 4);
	CHECK_STR(cfg->user, "mailshim");
	CHECK_STR(cfg->helo_name, "mx.example");
	CHECK_EQ(cfg->log, LOG_SYSLOG);
	CHECK_EQ(cfg->log_level, LEVEL_DEBUG);
	CHECK_EQ(cfg->max_connections, 1000000);
	CHECK_EQ(cfg->tls_min_version, CONFIG_TLS12);
	s = &cfg->services[0];
	CHECK_EQ(s->line, 9);
	memcpy(&s6, &s->listen[0].ss, sizeof s6);
	CHECK_EQ(s6.sin6_family, AF_INET6);
	CHECK_EQ(ntohs(s6.sin6_port), 587);
	CHECK(IN6_IS_ADDR_UNSPECIFIED(&s6.sin6_addr));
	CHECK_EQ(s->listen[0].len, sizeof s6);
	CHECK_EQ(s->listen_tls, MODE_STARTTLS);
	CHECK_EQ(s->ncerts, 1);
	CHECK_STR(s->certs[0].cert, "/c.pem");
	CHECK_STR(s->certs[0].key, "/c.key");
	CHECK_EQ(s->plain_from.n, 2);
	CHECK_STR(s->listen_client_ca, "/ca.pem");
	CHECK_EQ(s->listen_min_version, CONFIG_TLS12);
	CHECK_STR(s->listen_ciphers, "ECDHE+AESGCM");
	CHECK_STR(s->upstream_host, "2001:db8::5");
	CHECK_STR(s->upstream_port, "465");
	CHECK_EQ(s->upstream_tls, MODE_IMPLICIT);
	CHECK_EQ(s->upstream_verify, VERIFY_VERIFY);
	CHECK_STR(s->upstream_name, "legacy.internal");
	CHECK_STR(s->upstream_ca, "/u.pem");
	CHECK_EQ(s->npins, 1);
	CHECK_STR(s->upstream_cert, "/uc.pem");
	CHECK_STR(s->upstream_key, "/uc.key");
	CHECK_STR(s->upstream_ciphers, "AES256");
	CHECK_EQ(s->upstream_min_version, CONFIG_TLS12);
	CHECK_EQ(s->timeout_connect_ms, 500);
	CHECK_EQ(s->timeout_handshake_ms, 300000);
	CHECK_EQ(s->timeout_idle_ms, 3600000);
	config_free(cfg);
}

/* A global key's value: "[global]\nKEY = VALUE\n" plus one service. */
static struct config *global_kv(const char *kv)
{
	char text[512];

	snprintf(text, sizeof text, "[global]\n%s\n" SVC, kv);
	return parse(text);
}

static struct config *service_kv(const char *kv)
{
	char text[512];

	snprintf(text, sizeof text, SVC "%s\n", kv);
	return parse(text);
}

/* The same on TLS hops, where every TLS key means something. */
static struct config *service_tls_kv(const char *kv)
{
	char text[512];

	snprintf(text, sizeof text, SVC "listen_tls = starttls\n"
	    "listen_cert = /c\nupstream_tls = starttls\n%s\n", kv);
	return parse(text);
}

static void test_uint(void)
{
	static const char *const badv[] = { "workers = 0", "workers = 65",
		"workers = -1", "workers = 1x", "workers = Auto", "workers = +3",
		"workers = 99999999999999999999999", "max_connections = 0",
		"max_connections = 1000001", "max_connections = auto" };
	struct config *cfg;

	cfg = global_kv("workers = 64");
	CHECK(cfg && cfg->workers == 64);
	config_free(cfg);
	cfg = global_kv("workers = 1");
	CHECK(cfg && cfg->workers == 1);
	config_free(cfg);
	cfg = global_kv("workers = auto");
	CHECK(cfg && cfg->workers == 0);
	config_free(cfg);
	cfg = global_kv("max_connections = 1");
	CHECK(cfg && cfg->max_connections == 1);
	config_free(cfg);
	for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
		cfg = global_kv(badv[i]);
		CHECK(cfg == NULL);
		CHECK_EQ(nerr, 1);
	}
	expect_error("[global]\nworkers = 65\n" SVC,
	    "t.conf:2: bad value '65' for workers: expected auto or a number "
	    "from 1 to 64\n");
	expect_error("[global]\nmax_connections = 0\n" SVC,
	    "t.conf:2: bad value '0' for max_connections: expected a number "
	    "from 1 to 1000000\n");
}

static void test_duration(void)
{
	static const struct { const char *v; long ms; } good[] = {
		{ "10s", 10000 }, { "500ms", 500 }, { "5m", 300000 },
		{ "1h", 3600000 }, { "7", 7000 }, { "1ms", 1 },
		{ "24h", 86400000 }, { "86400s", 86400000 }, { "1440m", 86400000 },
	};
	static const char *const badv[] = { "0", "0s", "0ms", "25h", "86401s",
		"86400001ms", "10x", "ms", "s", "1.5s", "-1s", "10 s", "1d",
		"99999999999999999999h" };
	char kv[64];
	struct config *cfg;

	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		snprintf(kv, sizeof kv, "timeout_idle = %s", good[i].v);
		cfg = service_kv(kv);
		CHECK(cfg && cfg->services[0].timeout_idle_ms == (uint32_t)good[i].ms);
		config_free(cfg);
	}
	for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
		snprintf(kv, sizeof kv, "timeout_connect = %s", badv[i]);
		cfg = service_kv(kv);
		CHECK(cfg == NULL);
		CHECK_EQ(nerr, 1);
	}
	expect_error(SVC "timeout_handshake = 25h\n", "t.conf:4: bad value '25h' "
	    "for timeout_handshake: expected a duration from 1ms to 24h");
}

static void test_words(void)
{
	struct config *cfg;

	expect_error(SVC "listen_tls = x\n", "t.conf:4: bad value 'x' for "
	    "listen_tls: expected plain, starttls or implicit\n");
	expect_error(SVC "upstream_verify = none\n", "t.conf:4: bad value 'none' "
	    "for upstream_verify: expected encrypt, verify, dane or dane-only\n");
	expect_error("[global]\nlog = file\n" SVC, "t.conf:2: bad value 'file' "
	    "for log: expected stderr or syslog\n");
	expect_error("[global]\nlog_level = trace\n" SVC, "bad value 'trace' for "
	    "log_level: expected error, warn, info or debug\n");
	expect_error("[global]\ntls_min_version = TLSv1.1\n" SVC, "bad value "
	    "'TLSv1.1' for tls_min_version: expected TLSv1.2 or TLSv1.3\n");
	expect_error(SVC "proxy_protocol = true\n", "bad value 'true' for "
	    "proxy_protocol: expected no or yes\n");
	expect_error(SVC "upstream_proxy_protocol = v3\n", "bad value 'v3' for "
	    "upstream_proxy_protocol: expected no, v1 or v2\n");
	expect_error(SVC "listen_tls = Plain\n", "bad value 'Plain'");
	cfg = service_kv("upstream_tls = starttls");
	CHECK(cfg && cfg->services[0].upstream_tls == MODE_STARTTLS);
	config_free(cfg);
	cfg = global_kv("log_level = warn");
	CHECK(cfg && cfg->log_level == LEVEL_WARN);
	config_free(cfg);
	cfg = service_kv("upstream_tls = starttls\nupstream_min_version = TLSv1.3");
	CHECK(cfg && cfg->services[0].upstream_min_version == CONFIG_TLS13);
	CHECK(cfg && cfg->services[0].listen_min_version == CONFIG_TLS12);
	config_free(cfg);
	CHECK_STR(config_mode_name(MODE_PLAIN), "plain");
	CHECK_STR(config_mode_name(MODE_STARTTLS), "starttls");
	CHECK_STR(config_mode_name(MODE_IMPLICIT), "implicit");
	CHECK_STR(config_verify_name(VERIFY_ENCRYPT), "encrypt");
	CHECK_STR(config_verify_name(VERIFY_DANE_ONLY), "dane-only");
	CHECK_STR(config_mode_name((enum hop_mode)7), "?");
}

static void test_listen(void)
{
	static const char *const badv[] = { "localhost:25", "127.0.0.1",
		"127.0.0.1:0", "127.0.0.1:65536", "[::1]2525", "::1:2525",
		"[fe80::1%eth0]:25", "127.0.0.1:25x", "127.1:25", "[::1]:",
		"[127.0.0.1]:25", ":25", "[]:25", "1.2.3.4:-25", "[::1:25" };
	char text[256];
	struct config *cfg;
	struct sockaddr_in6 s6;

	cfg = parse("[s]\nlisten = [::1]:2525\nlisten = 0.0.0.0:65535\n"
	    "listen = 10.0.0.1:1\nupstream = u:25\n");
	CHECK(cfg && cfg->services[0].nlisten == 3);
	if (cfg) {
		memcpy(&s6, &cfg->services[0].listen[0].ss, sizeof s6);
		CHECK(IN6_IS_ADDR_LOOPBACK(&s6.sin6_addr));
		CHECK_EQ(ntohs(s6.sin6_port), 2525);
		CHECK_STR(cfg->services[0].listen[1].text, "0.0.0.0:65535");
		CHECK_STR(cfg->services[0].listen[2].text, "10.0.0.1:1");
	}
	config_free(cfg);
	for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
		snprintf(text, sizeof text, "[s]\nlisten = %s\nupstream = u:25\n",
		    badv[i]);
		cfg = parse(text);
		CHECK(cfg == NULL);
		/* The bad value also leaves the service without a listen. */
		CHECK(errs && strstr(errs, "t.conf:2: bad value '"));
	}
	expect_error("[s]\nlisten = 1.2.3.4:25\nlisten = localhost:25\n"
	    "upstream = u:25\n", "t.conf:3: bad value 'localhost:25' for listen: "
	    "expected a numeric address and port");
}

static void test_upstream(void)
{
	static const char *const badv[] = { "mail", "mail:", "mail:0",
		"[mail]:25", "a b:25", "::1:25", "[::1]25", "mail:smtp",
		"mail:70000", "[::1]:", ":25", "m@il:25" };
	char text[256];
	struct config *cfg;

	cfg = service_kv("");
	CHECK(cfg != NULL);
	config_free(cfg);
	cfg = parse("[s]\nlisten = 127.0.0.1:25\nupstream = [::1]:2525\n");
	CHECK(cfg != NULL);
	if (cfg) {
		CHECK_STR(cfg->services[0].upstream, "[::1]:2525");
		CHECK_STR(cfg->services[0].upstream_host, "::1");
		CHECK_STR(cfg->services[0].upstream_port, "2525");
		CHECK_STR(cfg->services[0].upstream_name, "::1");
	}
	config_free(cfg);
	cfg = parse("[s]\nlisten = 127.0.0.1:25\nupstream = 10.0.0.5:25\n");
	CHECK(cfg && !strcmp(cfg->services[0].upstream_host, "10.0.0.5"));
	config_free(cfg);
	for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
		snprintf(text, sizeof text, "[s]\nlisten = 127.0.0.1:25\n"
		    "upstream = %s\n", badv[i]);
		CHECK(parse(text) == NULL);
		CHECK(errs && strstr(errs, "t.conf:3: bad value '"));
	}
	expect_error(SVC "upstream_name = two words\n", "t.conf:4: bad value "
	    "'two words' for upstream_name: expected a host name\n");
	expect_error("[global]\nhelo_name = a,b\n" SVC, "for helo_name");
}

static struct sockaddr_storage ss_of(const char *ip)
{
	struct sockaddr_storage ss;
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(1) };
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };

	memset(&ss, 0, sizeof ss);
	if (inet_pton(AF_INET, ip, &s4.sin_addr) == 1)
		memcpy(&ss, &s4, sizeof s4);
	else if (inet_pton(AF_INET6, ip, &s6.sin6_addr) == 1)
		memcpy(&ss, &s6, sizeof s6);
	return ss;
}

static bool allowed(const struct service *s, const char *ip)
{
	struct sockaddr_storage ss = ss_of(ip);

	return config_plain_allowed(s, (struct sockaddr *)&ss);
}

static void test_cidr(void)
{
	struct config *cfg = service_tls_kv("listen_plain_from = 127.0.0.0/8 ::1, "
	    "10.1.2.3/8\nlisten_plain_from = 192.168.7.9 2001:db8::/33 "
	    "::ffff:172.16.0.0/108");
	struct service *s;
	struct sockaddr_un sun = { .sun_family = AF_UNIX };

	CHECK(cfg != NULL);
	if (!cfg)
		return;
	s = &cfg->services[0];
	CHECK_EQ(s->plain_from.n, 6);
	CHECK(!s->plain_from.any);
	CHECK(allowed(s, "127.0.0.1"));
	CHECK(allowed(s, "127.255.255.254"));
	CHECK(!allowed(s, "128.0.0.1"));
	CHECK(allowed(s, "::1"));
	CHECK(!allowed(s, "::2"));
	CHECK(allowed(s, "::ffff:127.0.0.5"));
	CHECK(!allowed(s, "::ffff:126.0.0.5"));
	CHECK(allowed(s, "10.200.0.1"));           /* host bits of 10.1.2.3/8 */
	CHECK(allowed(s, "192.168.7.9"));
	CHECK(!allowed(s, "192.168.7.8"));
	CHECK(allowed(s, "2001:db8:7fff::1"));
	CHECK(!allowed(s, "2001:db8:8000::1"));
	CHECK(allowed(s, "172.16.5.5"));           /* written as ::ffff:.../108 */
	CHECK(allowed(s, "::ffff:172.31.0.1"));
	CHECK(!allowed(s, "172.32.0.1"));
	CHECK(!allowed(s, "0.0.0.0"));
	CHECK(!config_plain_allowed(s, (struct sockaddr *)&sun));
	CHECK(!config_plain_allowed(s, NULL));
	CHECK(!config_plain_allowed(NULL, (struct sockaddr *)&sun));
	config_free(cfg);

	cfg = service_tls_kv("listen_plain_from = any");
	CHECK(cfg && cfg->services[0].plain_from.any);
	CHECK(cfg && allowed(&cfg->services[0], "203.0.113.9"));
	CHECK(cfg && allowed(&cfg->services[0], "2001:db8::9"));
	config_free(cfg);
	cfg = service_tls_kv("listen_plain_from = 0.0.0.0/0");
	CHECK(cfg && allowed(&cfg->services[0], "203.0.113.9"));
	CHECK(cfg && !allowed(&cfg->services[0], "2001:db8::9"));
	config_free(cfg);
	cfg = service_kv("");
	CHECK(cfg && !allowed(&cfg->services[0], "127.0.0.1"));
	config_free(cfg);

	expect_error(SVC "listen_plain_from = 10.0.0.0/33\n", "t.conf:4: bad value "
	    "'10.0.0.0/33' for listen_plain_from: expected addresses or networks");
	expect_error(SVC "listen_plain_from = any ::1\n", "'any' cannot be combined");
	expect_error(SVC "listen_plain_from = ::1\nlisten_plain_from = any\n",
	    "t.conf:5: bad value 'any' for listen_plain_from: 'any' cannot");
	CHECK(service_tls_kv("listen_plain_from = 10.0.0.1/ 1.2.3.400 ::1/129 "
	    "10.0.0.0/8/8 localhost") == NULL);
	CHECK_EQ(nerr, 5);
}

static void test_pin(void)
{
	struct config *cfg = service_tls_kv("upstream_pin = " PIN "\n"
	    "upstream_pin = sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");

	CHECK(cfg && cfg->services[0].npins == 2);
	if (cfg) {
		CHECK_EQ(cfg->services[0].pins[0][0], 240);
		CHECK_EQ(cfg->services[0].pins[0][31], 250);
		CHECK_EQ(cfg->services[0].pins[1][31], 0);
	}
	config_free(cfg);
	expect_error(SVC "upstream_pin = sha256/AAAAAAAAAAAAAAAAAAAAAA==\n",
	    "t.conf:4: bad value 'sha256/AAAAAAAAAAAAAAAAAAAAAA==' for "
	    "upstream_pin: decodes to 16 bytes, a SHA-256 has 32\n");
	expect_error(SVC "upstream_pin = sha256/"
	    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", "decodes to 33 bytes");
	expect_error(SVC "upstream_pin = 8NJKSAcPi4DdTd+yFNqz1DXBZA+S6DEVG55a"
	    "KD5Gfvo=\n", "expected sha256/ and the base64 of a SHA-256");
	expect_error(SVC "upstream_pin = sha1/8NJKSAcPi4DdTd+yFNqz1DXBZA+S6DEV"
	    "G55aKD5Gfvo=\n", "expected sha256/");
	/* base64url, missing padding, stray padding, unused bits set */
	expect_error(SVC "upstream_pin = sha256/8NJKSAcPi4DdTd-yFNqz1DXBZA+S6D"
	    "EVG55aKD5Gfvo=\n", "expected sha256/");
	expect_error(SVC "upstream_pin = sha256/8NJKSAcPi4DdTd+yFNqz1DXBZA+S6D"
	    "EVG55aKD5Gfvo\n", "expected sha256/");
	expect_error(SVC "upstream_pin = sha256/8NJK=AcPi4DdTd+yFNqz1DXBZA+S6D"
	    "EVG55aKD5Gfvo=\n", "expected sha256/");
	expect_error(SVC "upstream_pin = sha256/8NJKSAcPi4DdTd+yFNqz1DXBZA+S6D"
	    "EVG55aKD5Gfvp=\n", "expected sha256/");
	expect_error(SVC "upstream_pin = sha256/=\n", "expected sha256/");
	expect_error(SVC "upstream_pin = sha256/\n", "expected sha256/");
}

static void test_syntax(void)
{
	static const char crlf[] = "[s]\r\nlisten = 127.0.0.1:25\r\n"
	    "upstream = u:25 ; c\r\n\r\n; x\r\n";
	struct config *cfg;

	cfg = parse("# leading comment\n; another\n\n  [ s ]  # svc\n"
	    "\tlisten\t=\t127.0.0.1:25\t;trailing\n"
	    "upstream=u:25#no space\n   \n\t\n"
	    "listen_ciphers = A:B ; C\nlisten_tls = starttls\nlisten_cert = /c\n");
	CHECK(cfg != NULL);
	if (cfg) {
		CHECK_STR(cfg->services[0].name, "s");
		CHECK_EQ(cfg->services[0].line, 4);
		CHECK_STR(cfg->services[0].upstream, "u:25");
		CHECK_STR(cfg->services[0].listen_ciphers, "A:B");
	}
	config_free(cfg);
	cfg = parse(crlf);
	CHECK(cfg && !strcmp(cfg->services[0].upstream_host, "u"));
	config_free(cfg);
	/* No newline at the end of the file. */
	cfg = parse("[s]\nlisten = 127.0.0.1:25\nupstream = u:25");
	CHECK(cfg && !strcmp(cfg->services[0].upstream_port, "25"));
	config_free(cfg);
	/* Lines are not limited by a buffer. */
	{
		size_t n = 200000;
		char *big = malloc(n + 128);

		strcpy(big, SVC "listen_tls = implicit\nlisten_cert = /c\n"
		    "listen_ciphers = ");
		size_t at = strlen(big);
		memset(big + at, 'A', n);
		strcpy(big + at + n, "\n");
		cfg = parse(big);
		CHECK(cfg && strlen(cfg->services[0].listen_ciphers) == n);
		config_free(cfg);
		free(big);
	}
	expect_error(SVC "listen_ciphers =\n", "t.conf:4: empty value for key "
	    "'listen_ciphers'\n");
	expect_error(SVC "listen_ciphers = ; only a comment\n",
	    "t.conf:4: empty value");
	expect_error(SVC "just words\n",
	    "t.conf:4: expected 'key = value' or '[section]'");
	expect_error(SVC "= 5\n", "t.conf:4: unknown key ''");
	expect_error(SVC "[bad name]\n", "t.conf:4: bad section name 'bad name'");
	expect_error(SVC "[]\n", "t.conf:4: bad section name ''");
	expect_error(SVC "[open\n", "t.conf:4: bad section header");
	expect_error(SVC "[a] b\n", "t.conf:4: bad section header");
	expect_error(SVC "listen_ciphers = a\033b\n", "t.conf:4: control character");
	expect_error(SVC "listen_ciphers = a\rb\n", "t.conf:4: control character");
	{
		static const char nul[] = SVC "listen_ciphers = a\0b\nuser = x\n";

		CHECK(parse_n(nul, sizeof nul - 1) == NULL);
		CHECK(errs && strstr(errs, "t.conf:4: NUL byte"));
		CHECK(errs && strstr(errs, "t.conf:5: key 'user' belongs in [global]"));
		CHECK_EQ(nerr, 2);
	}
	CHECK(parse_n("", 0) == NULL);
	CHECK(errs && !strcmp(errs, "conf.d: no service defined\n"));
}

static void test_scopes(void)
{
	expect_error("workers = 2\n" SVC,
	    "t.conf:1: key 'workers' outside any section\n");
	expect_error(SVC "workers = 2\n",
	    "t.conf:4: key 'workers' belongs in [global]\n");
	expect_error("[global]\nlisten = 127.0.0.1:26\n" SVC,
	    "t.conf:2: key 'listen' belongs in a service section, not in [global]\n");
	expect_error(SVC "listn = 127.0.0.1:26\n", "t.conf:4: unknown key 'listn'\n");
	expect_error(SVC "upstream = v:25\n", "t.conf:4: duplicate key 'upstream' "
	    "(first at line 3)\n");
	expect_error("[global]\nlog = stderr\nlog = syslog\n" SVC,
	    "t.conf:3: duplicate key 'log'");
	expect_error(SVC "[s]\nlisten = 127.0.0.1:26\nupstream = u:25\n",
	    "t.conf:4: duplicate service 's' (first at t.conf:1)\n");
	expect_error("[global]\n[global]\nworkers = 1\n" SVC,
	    "t.conf:2: duplicate section [global] (first at t.conf:1)\n");
	/* Keys in a refused section are still checked. */
	CHECK(parse(SVC "[s]\nlisten = nowhere\nbogus = 1\n") == NULL);
	CHECK_EQ(nerr, 3);
	/* A section ends with its file: a second file starts outside any. */
	{
		struct config *cfg = config_new();
		size_t sz;
		char *out = NULL;
		FILE *f = open_memstream(&out, &sz);

		CHECK_EQ(parse_into(cfg, "a.conf", "[s]\n", 4, f), 0);
		CHECK_EQ(parse_into(cfg, "b.conf", "listen = 127.0.0.1:1\n", 21, f), 1);
		fclose(f);
		CHECK(out && strstr(out, "b.conf:1: key 'listen' outside any section"));
		free(out);
		config_free(cfg);
	}
}

static void test_required(void)
{
	expect_error("[submission]\nlisten = 127.0.0.1:587\n",
	    "t.conf:1: service 'submission': missing required key 'upstream'\n");
	expect_error("\n[submission]\nupstream = u:25\n",
	    "t.conf:2: service 'submission': missing required key 'listen'\n");
	CHECK(parse("[a]\n[b]\n") == NULL);
	CHECK_EQ(nerr, 4);
	CHECK(parse("[global]\nworkers = 2\n") == NULL);
	CHECK(errs && !strcmp(errs, "conf.d: no service defined\n"));
}

static void test_certs(void)
{
	struct config *cfg = service_kv("listen_tls = implicit\n"
	    "listen_cert = /a.pem\nlisten_key = /a.key\nlisten_cert = /b.pem\n"
	    "listen_cert = /c.pem\nlisten_key = /c.key\n");
	struct service *s;

	CHECK(cfg != NULL);
	if (cfg) {
		s = &cfg->services[0];
		CHECK_EQ(s->ncerts, 3);
		CHECK_STR(s->certs[0].cert, "/a.pem");
		CHECK_STR(s->certs[0].key, "/a.key");
		CHECK_STR(s->certs[1].cert, "/b.pem");
		CHECK_STR(s->certs[1].key, "/b.pem");
		CHECK_STR(s->certs[2].cert, "/c.pem");
		CHECK_STR(s->certs[2].key, "/c.key");
	}
	config_free(cfg);
	cfg = service_kv("listen_tls = starttls\nlisten_cert = /both.pem");
	CHECK(cfg && !strcmp(cfg->services[0].certs[0].key, "/both.pem"));
	config_free(cfg);
	expect_error(SVC "listen_tls = starttls\nlisten_key = /k\nlisten_cert = /c\n",
	    "t.conf:5: listen_key has no listen_cert before it to pair with\n");
	expect_error(SVC "listen_tls = starttls\nlisten_cert = /c\nlisten_key = /k\n"
	    "listen_key = /k2\n", "t.conf:7: listen_key has no listen_cert before it");
	expect_error(SVC "listen_cert = /c\n",
	    "t.conf:4: listen_cert is set but listen_tls = plain (by default)\n");
	expect_error(SVC "listen_tls = starttls\n",
	    "t.conf:4: listen_tls = starttls needs listen_cert\n");
	expect_error(SVC "listen_tls = implicit\n",
	    "listen_tls = implicit needs listen_cert");
	cfg = service_kv("upstream_tls = implicit\nupstream_cert = /uc.pem");
	CHECK(cfg && !strcmp(cfg->services[0].upstream_key, "/uc.pem"));
	config_free(cfg);
	expect_error(SVC "upstream_tls = starttls\nupstream_key = /uk\n",
	    "t.conf:5: upstream_key is set but upstream_cert is not\n");
}

static void test_unbuilt(void)
{
	static const struct { const char *text, *want; } refused[] = {
		{ "[s]\nlisten = 127.0.0.1:2525\nupstream = 192.0.2.1:25\n"
		  "upstream_tls = starttls\nupstream_verify = dane\n",
		  "t.conf:5: upstream_verify = dane needs a host name in upstream, not an address" },
		{ "[s]\nlisten = 127.0.0.1:2525\nupstream = [2001:db8::1]:25\n"
		  "upstream_tls = starttls\nupstream_verify = dane-only\n",
		  "t.conf:5: upstream_verify = dane-only needs a host name" },
		{ "[global]\nmetrics = localhost:9465\n" SVC,
		  "t.conf:2: bad value 'localhost:9465' for metrics" },
	};
	struct config *cfg;

	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
		expect_error(refused[i].text, refused[i].want);
	cfg = service_kv("upstream_verify = encrypt\nproxy_protocol = no\n"
	    "upstream_proxy_protocol = no\nupstream_xclient = no\n"
	    "upstream_tls = starttls\nlisten_tls = starttls\nlisten_cert = /c");
	CHECK(cfg != NULL);
	config_free(cfg);
	cfg = service_kv("upstream_xclient = yes");
	CHECK(cfg && cfg->services[0].upstream_xclient);
	config_free(cfg);
	cfg = service_kv("proxy_protocol = yes\nproxy_from = 10.0.0.0/8 ::1\n"
	    "upstream_proxy_protocol = v2");
	CHECK(cfg && cfg->services[0].proxy_protocol &&
	    cfg->services[0].proxy_from.n == 2 &&
	    cfg->services[0].upstream_proxy_protocol == PROXY_V2);
	config_free(cfg);
	/* A PROXY header is believed only from named load balancers. */
	expect_error(SVC "proxy_protocol = yes\n", "t.conf:4: proxy_protocol = yes "
	    "needs proxy_from");
	expect_error(SVC "proxy_from = 10.0.0.0/8\n", "t.conf:4: proxy_from is set "
	    "but proxy_protocol = no");
	cfg = service_kv("timeout_reply = 90s");
	CHECK(cfg && cfg->services[0].timeout_reply_ms == 90000 &&
	    cfg->services[0].timeout_idle_ms == 300000);
	config_free(cfg);
	cfg = service_kv("listen_tls = plain");
	CHECK(cfg && cfg->services[0].timeout_reply_ms == 600000 &&
	    cfg->shutdown_grace_ms == 30000 && cfg->timeout_dns_ms == 10000 &&
	    cfg->ndns_resolvers == 0 && cfg->dnssec_trust_anchor &&
	    strcmp(cfg->dnssec_trust_anchor, "/usr/share/dns/root.key") == 0);
	config_free(cfg);
	cfg = global_kv("dns_resolver = 127.0.0.1@5353\ndns_resolver = ::1\n"
	    "timeout_dns = 2s\ndnssec_trust_anchor = /tmp/ta.key");
	CHECK(cfg && cfg->ndns_resolvers == 2 && cfg->timeout_dns_ms == 2000 &&
	    strcmp(cfg->dns_resolvers[0], "127.0.0.1@5353") == 0 &&
	    strcmp(cfg->dns_resolvers[1], "::1") == 0 &&
	    strcmp(cfg->dnssec_trust_anchor, "/tmp/ta.key") == 0);
	config_free(cfg);
	expect_error("[global]\ndns_resolver = ns.example\n" SVC,
	    "t.conf:2: bad value 'ns.example' for dns_resolver");
	expect_error("[global]\ndns_resolver = 127.0.0.1@0\n" SVC,
	    "t.conf:2: bad value '127.0.0.1@0' for dns_resolver");
	cfg = service_kv("upstream_tls = implicit\nupstream_verify = dane-only");
	CHECK(cfg && cfg->services[0].upstream_verify == VERIFY_DANE_ONLY);
	config_free(cfg);
	cfg = global_kv("log = syslog");
	CHECK(cfg && cfg->log == LOG_SYSLOG);
	config_free(cfg);
	/* A refused value is reported once, not again by later checks. */
	expect_error("[global]\nmetrics = localhost:9465\n" SVC,
	    "t.conf:2: bad value 'localhost:9465' for metrics");
	expect_error(SVC "listen_tls = starttl\nlisten_cert = /c\n",
	    "t.conf:4: bad value 'starttl' for listen_tls");
}

static void test_many_errors(void)
{
	CHECK(parse("[global]\nworkers = 0\nlog = x\nbogus = 1\n"
	    "[s]\nlisten = 1.2.3.4:0\nupstream = u\ntimeout_idle = 0\n"
	    "upstream_verify = dane\n") == NULL);
	CHECK_EQ(nerr, 7);
	CHECK_EQ(count_lines(errs), 7);
	CHECK(errs && strstr(errs, "t.conf:2: bad value '0' for workers"));
	CHECK(errs && strstr(errs, "t.conf:3: bad value 'x' for log"));
	CHECK(errs && strstr(errs, "t.conf:4: unknown key 'bogus'"));
	CHECK(errs && strstr(errs, "t.conf:6: bad value '1.2.3.4:0'"));
	CHECK(errs && strstr(errs, "t.conf:7: bad value 'u'"));
	CHECK(errs && strstr(errs, "t.conf:8: bad value '0' for timeout_idle"));
	CHECK(errs && strstr(errs, "t.conf:9: upstream_verify"));
}

static void test_listen_unique(void)
{
	struct config *cfg;

	expect_error(SVC "[t]\nlisten = 127.0.0.1:2525\nupstream = u:25\n",
	    "t.conf:4: service 't': listen address 127.0.0.1:2525 is already "
	    "used by service 's'\n");
	expect_error("[s]\nlisten = [::1]:25\nupstream = u:25\n"
	    "[t]\nlisten = [0:0::1]:25\nupstream = u:25\n", "used by service 's'");
	expect_error("[s]\nlisten = [::1]:25\nlisten = [::1]:25\nupstream = u:25\n",
	    "used by service 's'");
	cfg = parse(SVC "[t]\nlisten = 127.0.0.1:2526\nupstream = u:25\n"
	    "[u]\nlisten = [::1]:2525\nupstream = u:25\n");
	CHECK(cfg && cfg->nservices == 3);
	config_free(cfg);
}

static void put(const char *dir, const char *name, const char *text)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

static struct config *load(const char *dir)
{
	struct config *cfg;
	size_t sz;
	FILE *f;

	free(errs);
	f = open_memstream(&errs, &sz);
	cfg = config_load(dir, f);
	fclose(f);
	return cfg;
}

static void rm_tree(const char *dir)
{
	char cmd[600];

	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK_EQ(system(cmd), 0);
}

static void test_load(void)
{
	char dir[] = "/tmp/test_config.XXXXXX", path[600], want[700];
	struct config *cfg;

	CHECK(mkdtemp(dir) != NULL);
	cfg = load(dir);
	CHECK(cfg == NULL);
	snprintf(want, sizeof want, "%s: no .conf file\n", dir);
	CHECK_STR(errs, want);

	put(dir, "20-alpha.conf", "[alpha]\nlisten = 127.0.0.1:26\nupstream = a:25\n");
	put(dir, "10-zeta.conf", "[zeta]\nlisten = 127.0.0.1:25\nupstream = z:25\n");
	put(dir, "00-global.conf", "[global]\nworkers = 3\n");
	put(dir, "README", "not a config\n");
	put(dir, ".hidden.conf", "garbage\n");
	put(dir, "old.conf~", "garbage\n");
	put(dir, ".conf", "garbage\n");
	snprintf(path, sizeof path, "%s/sub.conf", dir);
	CHECK_EQ(mkdir(path, 0700), 0);
	cfg = load(dir);
	CHECK(cfg != NULL);
	CHECK_STR(errs, "");
	if (cfg) {
		CHECK_EQ(cfg->workers, 3);
		CHECK_EQ(cfg->nservices, 2);
		CHECK_STR(cfg->services[0].name, "zeta");
		CHECK_STR(cfg->services[1].name, "alpha");
		snprintf(want, sizeof want, "%s/10-zeta.conf", dir);
		CHECK_STR(cfg->services[0].file, want);
	}
	config_free(cfg);

	/* A FIFO is refused, and never opened (that would block). */
	snprintf(path, sizeof path, "%s/15-fifo.conf", dir);
	CHECK_EQ(mkfifo(path, 0600), 0);
	cfg = load(dir);
	CHECK(cfg == NULL);
	snprintf(want, sizeof want, "%s: not a regular file\n", path);
	CHECK_STR(errs, want);
	unlink(path);

	put(dir, "30-bad.conf", "[beta]\nlisten = 127.0.0.1:25\nupstream = b:25\n"
	    "listn = 1\n");
	cfg = load(dir);
	CHECK(cfg == NULL);
	snprintf(want, sizeof want, "%s/30-bad.conf:4: unknown key 'listn'\n", dir);
	CHECK(errs && strstr(errs, want));
	snprintf(want, sizeof want, "%s/30-bad.conf:1: service 'beta': listen "
	    "address 127.0.0.1:25 is already used by service 'zeta'\n", dir);
	CHECK(errs && strstr(errs, want));
	CHECK_EQ(count_lines(errs), 2);

	snprintf(path, sizeof path, "%s/30-bad.conf", dir);
	CHECK_EQ(unlink(path), 0);
	snprintf(path, sizeof path, "%s/40-dangling.conf", dir);
	CHECK_EQ(symlink("/nonexistent/file", path), 0);
	cfg = load(dir);
	CHECK(cfg == NULL);
	snprintf(want, sizeof want, "%s: cannot read: %s\n", path,
	    strerror(ENOENT));
	CHECK_STR(errs, want);
	rm_tree(dir);

	cfg = load(dir);
	CHECK(cfg == NULL);
	snprintf(want, sizeof want, "%s: cannot read: %s\n", dir,
	    strerror(ENOENT));
	CHECK_STR(errs, want);
}

/* A key the chosen mode would ignore is refused, at its own line. */
static void test_ignored(void)
{
	static const struct { const char *text, *want; } refused[] = {
		{ SVC "upstream_pin = " PIN "\n",
		  "t.conf:4: upstream_pin is set but upstream_tls = plain (by default)\n" },
		{ SVC "upstream_tls = plain\nupstream_ca = /ca.pem\n",
		  "t.conf:5: upstream_ca is set but upstream_tls = plain\n" },
		{ SVC "upstream_verify = encrypt\n",
		  "t.conf:4: upstream_verify is set but upstream_tls = plain" },
		{ SVC "upstream_name = mx.example\n",
		  "t.conf:4: upstream_name is set but upstream_tls = plain" },
		{ SVC "upstream_cert = /c.pem\n",
		  "t.conf:4: upstream_cert is set but upstream_tls = plain" },
		{ SVC "upstream_ciphers = ECDHE+AESGCM\n",
		  "t.conf:4: upstream_ciphers is set but upstream_tls = plain" },
		{ SVC "upstream_min_version = TLSv1.3\n",
		  "t.conf:4: upstream_min_version is set but upstream_tls = plain" },
		{ SVC "listen_client_ca = /ca.pem\n",
		  "t.conf:4: listen_client_ca is set but listen_tls = plain (by default)\n" },
		{ SVC "listen_plain_from = any\n",
		  "t.conf:4: listen_plain_from is set but listen_tls = plain (by default): "
		  "a plain listener lets everyone send without TLS\n" },
		{ SVC "listen_ciphers = ECDHE+AESGCM\n",
		  "t.conf:4: listen_ciphers is set but listen_tls = plain" },
		{ SVC "listen_min_version = TLSv1.3\n",
		  "t.conf:4: listen_min_version is set but listen_tls = plain" },
		{ SVC "listen_tls = implicit\nlisten_cert = /c\n"
		  "listen_plain_from = 127.0.0.1\n",
		  "t.conf:6: listen_plain_from is set but listen_tls = implicit: "
		  "an implicit listener has no plaintext phase\n" },
		{ SVC "upstream_tls = implicit\nupstream_verify = encrypt\n"
		  "upstream_ca = /ca.pem\n",
		  "t.conf:6: upstream_ca is set but upstream_verify = encrypt: "
		  "no certificate is checked\n" },
		{ SVC "upstream_tls = implicit\nupstream_name = mx.example\n"
		  "upstream_verify = encrypt\n",
		  "t.conf:5: upstream_name is set but upstream_verify = encrypt" },
		{ SVC "listen_tls = implicit\nlisten_cert = /c\n"
		  "listen_min_version = TLSv1.3\nlisten_ciphers = ECDHE+AESGCM\n",
		  "t.conf:7: listen_ciphers is set but listen_min_version = TLSv1.3: "
		  "the list is of TLS 1.2 suites\n" },
		{ "[global]\ntls_min_version = TLSv1.3\n" SVC
		  "upstream_tls = starttls\nupstream_ciphers = ECDHE+AESGCM\n",
		  "t.conf:7: upstream_ciphers is set but upstream_min_version = "
		  "TLSv1.3 (by default)" },
	};
	struct config *cfg;
	const char *file;
	int line;

	for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
		expect_error(refused[i].text, refused[i].want);
	/* Both halves of a pair are at fault on a plain listener. */
	CHECK(parse(SVC "listen_cert = /c\nlisten_key = /k\n") == NULL);
	CHECK_EQ(nerr, 2);
	CHECK(errs && strstr(errs, "t.conf:5: listen_key is set but listen_tls"));
	/* The same keys are fine where they mean something. */
	cfg = service_tls_kv("listen_plain_from = any\nlisten_client_ca = /ca\n"
	    "listen_ciphers = ECDHE+AESGCM\nlisten_min_version = TLSv1.2\n"
	    "upstream_verify = verify\nupstream_ca = /ca\nupstream_name = mx\n"
	    "upstream_pin = " PIN "\nupstream_cert = /uc\nupstream_key = /uk\n"
	    "upstream_ciphers = ECDHE+AESGCM\nupstream_min_version = TLSv1.2");
	CHECK(cfg != NULL);
	config_free(cfg);
	cfg = service_tls_kv("upstream_verify = encrypt\nupstream_pin = " PIN);
	CHECK(cfg != NULL);
	config_free(cfg);
	/* A global default no hop takes is refused too. */
	expect_error("[global]\ntls_min_version = TLSv1.3\n" SVC,
	    "t.conf:2: tls_min_version is set but no TLS hop takes it");
	cfg = parse("[global]\ntls_min_version = TLSv1.3\n" SVC "upstream_tls = starttls\n");
	CHECK(cfg && cfg->services[0].upstream_min_version == CONFIG_TLS13);
	config_free(cfg);
	/* Ticket keys with no TLS listener to use them: refused. */
	expect_error("[global]\ntls_ticket_keys = /keys\n" SVC,
	    "t.conf:2: tls_ticket_keys is set but no listener uses TLS");
	cfg = parse("[global]\ntls_ticket_keys = /keys\n" SVC "listen_tls = starttls\n"
	    "listen_cert = /a.pem\n");
	CHECK(cfg && cfg->tls_ticket_keys && strcmp(cfg->tls_ticket_keys, "/keys") == 0);
	config_free(cfg);
	cfg = parse(SVC);
	CHECK(cfg && cfg->tls_ticket_keys == NULL);
	config_free(cfg);
	/* A bad mode is reported once, not again as "ignored". */
	expect_error(SVC "upstream_tls = tls\nupstream_ca = /ca\n",
	    "t.conf:4: bad value 'tls' for upstream_tls");

	/* Where a key was set, for the messages of the TLS file checks. */
	cfg = parse("[global]\nworkers = 2\n" SVC "listen_tls = implicit\n"
	    "listen_cert = /a.pem\nlisten_key = /a.key\nlisten_cert = /b.pem\n"
	    "upstream_tls = implicit\nupstream_cert = /u.pem\n");
	CHECK(cfg != NULL);
	if (!cfg)
		return;
	CHECK(config_key_where(cfg, &cfg->services[0], "listen_cert", 1, &file, &line));
	CHECK_STR(file, "t.conf");
	CHECK_EQ(line, 9);
	CHECK(config_key_where(cfg, &cfg->services[0], "listen_key", 0, &file, &line));
	CHECK_EQ(line, 8);
	/* A key that defaults to its cert's file is at the cert's line. */
	CHECK(config_key_where(cfg, &cfg->services[0], "listen_key", 1, &file, &line));
	CHECK_EQ(line, 9);
	CHECK(config_key_where(cfg, &cfg->services[0], "upstream_cert", 0, &file, &line));
	CHECK_EQ(line, 11);
	CHECK(!config_key_where(cfg, &cfg->services[0], "upstream_ca", 0, &file, &line));
	CHECK_EQ(line, 3);
	CHECK(config_key_where(cfg, NULL, "workers", 0, &file, &line));
	CHECK_EQ(line, 2);
	CHECK(!config_key_where(cfg, NULL, "nonsense", 0, &file, &line));
	config_free(cfg);
}

/* upstream = mx: never an open relay, never plaintext, DANE by default. */
static void test_mx(void)
{
	struct config *cfg = parse("[r]\nlisten = 127.0.0.1:2525\nupstream = mx\n"
	    "relay_from = 192.0.2.0/24\n");

	CHECK(cfg != NULL);
	if (cfg) {
		const struct service *s = &cfg->services[0];
		CHECK(s->upstream_mx);
		CHECK_EQ(s->upstream_tls, MODE_STARTTLS);
		CHECK_EQ(s->upstream_verify, VERIFY_DANE);
		CHECK_EQ(s->mx_port, 25);
		CHECK_STR(s->upstream_port, "25");
		CHECK_EQ(s->relay_from.n, 1);
	}
	config_free(cfg);
	cfg = parse("[r]\nlisten = 127.0.0.1:2525\nupstream = mx\nupstream_port = 2626\n"
	    "relay_from = 10.0.0.0/8\nupstream_tls = implicit\nupstream_verify = encrypt\n");
	CHECK(cfg != NULL);
	if (cfg) {
		CHECK_EQ(cfg->services[0].upstream_tls, MODE_IMPLICIT);
		CHECK_EQ(cfg->services[0].upstream_verify, VERIFY_ENCRYPT);
		CHECK_STR(cfg->services[0].upstream_port, "2626");
	}
	config_free(cfg);
	expect_error("[r]\nlisten = 127.0.0.1:2525\nupstream = mx\n",
	    "t.conf:3: upstream = mx needs relay_from");
	expect_error("[r]\nlisten = 127.0.0.1:2525\nupstream = mx\nrelay_from = 10.0.0.0/8\n"
	    "upstream_tls = plain\n", "t.conf:5: upstream_tls = plain is refused with upstream = mx");
	expect_error("[r]\nlisten = 127.0.0.1:2525\nupstream = mx\nrelay_from = 10.0.0.0/8\n"
	    "upstream_name = x.example\n", "t.conf:5: upstream_name is not supported with "
	    "upstream = mx");
	expect_error("[r]\nlisten = 127.0.0.1:2525\nupstream = a:25\nrelay_from = 10.0.0.0/8\n",
	    "t.conf:4: relay_from is set but upstream is not mx");
	expect_error("[r]\nlisten = 127.0.0.1:2525\nupstream = a:25\nupstream_port = 26\n",
	    "t.conf:4: upstream_port is set but upstream is not mx");
}

int main(void)
{
	test_mx();
	test_defaults();
	test_all_keys();
	test_uint();
	test_duration();
	test_words();
	test_listen();
	test_upstream();
	test_cidr();
	test_pin();
	test_syntax();
	test_scopes();
	test_required();
	test_certs();
	test_unbuilt();
	test_ignored();
	test_many_errors();
	test_listen_unique();
	test_load();
	config_free(NULL);
	free(errs);
	return unit_done("test_config");
}
