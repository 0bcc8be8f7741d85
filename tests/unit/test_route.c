/* route: the outbound relay's parsing, ordering and end-of-data rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"
#include "unit.h"

static void test_verbs(void)
{
	const char *args;

	CHECK_EQ(route_verb("rcpt\tTO:<a@b>\r\n", 15, &args), ROUTE_V_RCPT);
	CHECK(strncmp(args, "TO:", 3) == 0);
	CHECK_EQ(route_verb("DATA\r\n", 6, &args), ROUTE_V_DATA);
	CHECK_EQ(route_verb("DATAX\r\n", 7, &args), ROUTE_V_OTHER);
	CHECK_EQ(route_verb("quit", 4, &args), ROUTE_V_QUIT);
}

static void test_rcpt(void)
{
	char d[ROUTE_NAME_MAX];
	const char *a = "TO:<User@Example.ORG.>\r\n";

	CHECK(route_rcpt_domain(a, strlen(a), d, sizeof(d)) == NULL);
	CHECK_STR(d, "example.org");
	a = "TO:<@relay.example,@x.example:u@dest.example>";
	CHECK(route_rcpt_domain(a, strlen(a), d, sizeof(d)) == NULL);
	CHECK_STR(d, "dest.example");
	a = "TO:<postmaster>";
	CHECK(route_rcpt_domain(a, strlen(a), d, sizeof(d)) != NULL);
	a = "TO:<u@[192.0.2.1]>";
	CHECK(strncmp(route_rcpt_domain(a, strlen(a), d, sizeof(d)), "550 5.7.1", 9) == 0);
	a = "TO:<u@ex ample.org>";
	CHECK(route_rcpt_domain(a, strlen(a), d, sizeof(d)) != NULL);
	a = "TO:<u@example.org> NOTIFY=NEVER";
	CHECK(strncmp(route_rcpt_domain(a, strlen(a), d, sizeof(d)), "555", 3) == 0);
	a = "TO:u@example.org";
	CHECK(strncmp(route_rcpt_domain(a, strlen(a), d, sizeof(d)), "501", 3) == 0);
}

static void test_mail(void)
{
	struct route_mail m;
	struct route_ext e;
	char line[600];
	const char *a = "FROM:<s@x.example> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n";
	const char *ehlo = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 500\r\n"
	    "250-8BITMIME\r\n250 STARTTLS\r\n";

	CHECK(route_mail_parse(a, strlen(a), &m) == NULL);
	CHECK_EQ(m.size, 1000);
	CHECK_EQ(m.body, 2);
	CHECK(m.smtputf8);
	CHECK_STR(m.path, "<s@x.example>");
	a = "FROM:<> RET=HDRS";
	CHECK(strncmp(route_mail_parse(a, strlen(a), &m), "555", 3) == 0);
	a = "FROM:<>";
	CHECK(route_mail_parse(a, strlen(a), &m) == NULL);
	CHECK_STR(m.path, "<>");

	route_ehlo(ehlo, strlen(ehlo), &e);
	CHECK(e.starttls && e.eightbit && e.pipelining && e.size && !e.smtputf8);
	CHECK_EQ(e.size_max, 500);
	/* SMTPUTF8 asked, not offered: RFC 6531's 553 5.6.7. */
	a = "FROM:<s@x.example> SIZE=100 BODY=8BITMIME SMTPUTF8";
	route_mail_parse(a, strlen(a), &m);
	CHECK(strncmp(route_mail_line(&m, &e, line, sizeof(line)), "553 5.6.7", 9) == 0);
	/* Too big for the MX's SIZE: RFC 1870's 552. */
	a = "FROM:<s@x.example> SIZE=1000";
	route_mail_parse(a, strlen(a), &m);
	CHECK(strncmp(route_mail_line(&m, &e, line, sizeof(line)), "552 5.3.4", 9) == 0);
	a = "FROM:<s@x.example> SIZE=100 BODY=8BITMIME";
	route_mail_parse(a, strlen(a), &m);
	CHECK(route_mail_line(&m, &e, line, sizeof(line)) == NULL);
	CHECK_STR(line, "MAIL FROM:<s@x.example> SIZE=100 BODY=8BITMIME\r\n");
	/* No 8BITMIME at the MX: RFC 6152's 554 5.6.3, never a downgrade;
	 * no SIZE there: the parameter is not sent. */
	ehlo = "250-mx\r\n250 STARTTLS\r\n";
	route_ehlo(ehlo, strlen(ehlo), &e);
	CHECK(strncmp(route_mail_line(&m, &e, line, sizeof(line)), "554 5.6.3", 9) == 0);
	a = "FROM:<s@x.example> SIZE=100 BODY=7BIT";
	route_mail_parse(a, strlen(a), &m);
	CHECK(route_mail_line(&m, &e, line, sizeof(line)) == NULL);
	CHECK_STR(line, "MAIL FROM:<s@x.example>\r\n");
}

static void test_mx(void)
{
	static const uint8_t mx1[] = { 0, 10, 2, 'M', 'x', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e',
		0 };
	static const uint8_t null_mx[] = { 0, 0, 0 };
	static const uint8_t broken[] = { 0, 10, 9, 'm', 'x', 0 };
	struct route_mx v[5];
	uint32_t rnd[5] = { 5, 1, 9, 2, 0 };

	CHECK(route_mx_parse(mx1, sizeof(mx1), &v[0]));
	CHECK_EQ(v[0].pref, 10);
	CHECK_STR(v[0].host, "mx.example");
	CHECK(route_mx_parse(null_mx, sizeof(null_mx), &v[1]));
	CHECK_STR(v[1].host, "");
	CHECK(!route_mx_parse(broken, sizeof(broken), &v[2]));
	CHECK_EQ(route_mx_order(&v[1], 1, rnd), 0);

	memset(v, 0, sizeof(v));
	v[0].pref = 20; strcpy(v[0].host, "c");
	v[1].pref = 10; strcpy(v[1].host, "a");
	v[2].pref = 10; strcpy(v[2].host, "b");
	v[3].pref = 5;  strcpy(v[3].host, "");
	v[4].pref = 30; strcpy(v[4].host, "d");
	CHECK_EQ(route_mx_order(v, 5, rnd), 4);
	/* By preference; equals by the random words (a: 1, b: 9). */
	CHECK_STR(v[0].host, "a");
	CHECK_STR(v[1].host, "b");
	CHECK_STR(v[2].host, "c");
	CHECK_STR(v[3].host, "d");
}

/* Of 40 records, the 16 most preferred are kept, wherever they come. */
static void test_mx_keep(void)
{
	struct route_mx v[ROUTE_MX_MAX], one;
	uint32_t rnd[ROUTE_MX_MAX] = { 0 };
	size_t n = 0, low = 0;

	for (unsigned i = 0; i < 40; i++) {
		one.pref = (uint16_t)(i < 30 ? 50 + i : i - 30);
		snprintf(one.host, sizeof(one.host), "mx%u", i);
		route_mx_keep(v, &n, &one);
	}
	CHECK_EQ(n, ROUTE_MX_MAX);
	CHECK_EQ(route_mx_order(v, n, rnd), ROUTE_MX_MAX);
	for (size_t i = 0; i < n; i++)
		low += v[i].pref < 10;
	CHECK_EQ(low, 10);
	CHECK_EQ(v[0].pref, 0);
	CHECK_STR(v[0].host, "mx30");
	CHECK_EQ(v[15].pref, 55);
}

static void test_reply(void)
{
	int code = 0;
	const char *r = "250-a\r\n250-b\r\n250 c\r\nXX";

	CHECK_EQ(route_reply((const uint8_t *)r, strlen(r), 8192, &code), 21);
	CHECK_EQ(code, 250);
	r = "250-a\r\n250";
	CHECK_EQ(route_reply((const uint8_t *)r, strlen(r), 8192, &code), 0);
	r = "250-a\r\n251 b\r\n";
	CHECK_EQ(route_reply((const uint8_t *)r, strlen(r), 8192, &code), -1);
	r = "hello\r\n";
	CHECK_EQ(route_reply((const uint8_t *)r, strlen(r), 8192, &code), -1);
}

/* Feed a body in pieces of step bytes; returns bytes passed at END, or
 * -1 BAD, -2 no end. */
static long scan(const char *body, size_t step)
{
	struct route_body b;
	size_t len = strlen(body), off = 0, held = 0;
	const char *why;

	route_body_init(&b);
	while (off < len) {
		size_t avail = off + held + step < len ? held + step : len - off, n = 0;
		int r = route_body_scan(&b, (const uint8_t *)body + off, avail, &n, &why);
		if (r == ROUTE_BODY_BAD)
			return -1;
		off += n;
		held = avail - n;
		if (r == ROUTE_BODY_END)
			return (long)off;
		if (off + held >= len && n == 0)
			return -2;
	}
	return -2;
}

static void test_body(void)
{
	static const char *const good = "Subject: x\r\n\r\n..stuffed\r\n.x\r\nend\r\n.\r\nNEXT";
	for (size_t step = 1; step < 12; step++)
		CHECK_EQ(scan(good, step), (long)strlen(good) - 4);
	CHECK_EQ(scan(".\r\n", 1), 3);
	CHECK_EQ(scan("a\r\nb\n.\nMAIL FROM:<x>\r\n.\r\n", 3), -1);
	CHECK_EQ(scan("a\r\nb\r\n.\nQUIT\r\n.\r\n", 2), -1);
	CHECK_EQ(scan("a\r\nb\r.\r\nQUIT\r\n.\r\n", 5), -1);
	CHECK_EQ(scan("a\r\nb\r\n.\rX\r\n.\r\n", 4), -1);
	CHECK_EQ(scan("no end here\r\n", 3), -2);
}

int main(void)
{
	test_verbs();
	test_rcpt();
	test_mail();
	test_mx();
	test_mx_keep();
	test_reply();
	test_body();
	return unit_done("route");
}
