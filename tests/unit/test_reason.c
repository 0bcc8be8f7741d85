/* reason: every row named once, TLS-RPT types only from RFC 8460, the
 * log's words composed as the log contract says. */
#include <string.h>

#include "reason.h"
#include "unit.h"

static const char *const rpt_types[] = {
	"starttls-not-supported", "certificate-host-mismatch", "certificate-expired",
	"certificate-not-trusted", "validation-failure", "tlsa-invalid",
	"dnssec-invalid", "dane-required",
};

static int known_rpt(const char *t)
{
	size_t i;

	for (i = 0; i < sizeof(rpt_types) / sizeof(rpt_types[0]); i++)
		if (strcmp(t, rpt_types[i]) == 0)
			return 1;
	return 0;
}

static void test_rows(void)
{
	int i, j;

	for (i = 0; i < R_COUNT; i++) {
		const char *n = reason_name((enum reason)i);
		CHECK(n != NULL && n[0] != '\0');
		for (j = 0; j < i; j++)
			CHECK(strcmp(n, reason_name((enum reason)j)) != 0);
		if (reason_rpt((enum reason)i) != NULL)
			CHECK(known_rpt(reason_rpt((enum reason)i)));
		if (i != R_NONE)
			CHECK(reason_result((enum reason)i) != RES_OK);
	}
	CHECK_EQ(reason_result(R_NONE), RES_OK);
	CHECK_EQ(reason_result(R_CL_TLS_VERSION), RES_REFUSED);
	CHECK_EQ(reason_result(R_UP_TLS_VERSION), RES_REFUSED);
	CHECK_EQ(reason_result(R_PROXY_UNTRUSTED), RES_REFUSED);
	CHECK_EQ(reason_result(R_IDLE_TIMEOUT), RES_ERROR);
	CHECK_STR(reason_rpt(R_UP_NO_STARTTLS), "starttls-not-supported");
	CHECK_STR(reason_rpt(R_UP_CERT_HOST), "certificate-host-mismatch");
	CHECK_STR(reason_rpt(R_UP_CERT_EXPIRED), "certificate-expired");
	CHECK_STR(reason_rpt(R_UP_CERT_UNTRUSTED), "certificate-not-trusted");
	CHECK(reason_rpt(R_IDLE_TIMEOUT) == NULL);
	CHECK(strncmp(reason_reply(R_REPLY_TIMEOUT), "421 4.4.2 ", 10) == 0);
	CHECK(reason_reply(R_IDLE_TIMEOUT) == NULL);
	/* Out of range is the first row, never a wild read. */
	CHECK_STR(reason_name((enum reason)R_COUNT), "none");
}

static void test_format(void)
{
	char out[128];

	CHECK_EQ(reason_format(R_IDLE_TIMEOUT, NULL, out, sizeof(out)), strlen("idle timeout"));
	CHECK_STR(out, "idle timeout");
	reason_format(R_CL_LOST, "Connection reset by peer", out, sizeof(out));
	CHECK_STR(out, "client connection lost: Connection reset by peer");
	reason_format(R_CL_TLS_VERSION, "client offered at most TLSv1.1; minimum is TLSv1.2",
	    out, sizeof(out));
	CHECK_STR(out, "client offered at most TLSv1.1; minimum is TLSv1.2");
	reason_format(R_CL_TLS_VERSION, "", out, sizeof(out));
	CHECK_STR(out, "client offered no TLS version the policy allows");
	reason_format(R_CL_SMTP, "bare LF around end-of-data", out, sizeof(out));
	CHECK_STR(out, "bare LF around end-of-data");
	/* Truncated, never overflowed. */
	CHECK_EQ(reason_format(R_UP_CONNECT, "Connection refused", out, 8), 7);
	CHECK_STR(out, "upstrea");
}

static void test_setup_words(void)
{
	struct fail f;

	CHECK_EQ(reason_of_setup("upstream offered no STARTTLS"), R_UP_NO_STARTTLS);
	CHECK_EQ(reason_of_setup("upstream refused STARTTLS"), R_UP_NO_STARTTLS);
	CHECK_EQ(reason_of_setup("upstream sent data after its STARTTLS 220 (injection)"),
	    R_UP_INJECTION);
	CHECK_EQ(reason_of_setup("upstream greeting was not 220"), R_UP_SETUP_REFUSED);
	CHECK_EQ(reason_of_setup(NULL), R_UP_SETUP_REFUSED);
	CHECK_EQ(fail_set(&f, R_UP_PIN, NULL), -1);
	CHECK_EQ(f.why, R_UP_PIN);
	CHECK(f.reply == NULL && f.detail[0] == '\0');
}

int main(void)
{
	test_rows();
	test_format();
	test_setup_words();
	return unit_done("test_reason");
}
