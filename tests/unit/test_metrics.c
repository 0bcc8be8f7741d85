/* metrics: slots, sums over workers, histograms, the text format. */
#include <stdbool.h>
#include <stdlib.h>

#include "metrics.h"
#include "unit.h"

static struct metrics m;

static bool has(const char *text, const char *line)
{
	size_t n = strlen(line);

	/* A whole line. */
	for (const char *p = strstr(text, line); p; p = strstr(p + 1, line))
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	return false;
}

static void test_slots(void)
{
	CHECK_EQ(metrics_service_slot(&m, "mx"), 0);
	CHECK_EQ(metrics_service_slot(&m, "submission"), 1);
	CHECK_EQ(metrics_service_slot(&m, "mx"), 0);
	CHECK_EQ(m.nservices, 2);
	CHECK_EQ(metrics_cipher_index("TLS_AES_128_GCM_SHA256"), 0);
	CHECK_EQ(metrics_cipher_index("TLS_RSA_WITH_RC4_128_MD5"), METRICS_CIPHERS);
	CHECK_EQ(metrics_cipher_index(NULL), METRICS_CIPHERS);
	CHECK_EQ(metrics_code_index("tlsa-invalid"), 5);
	CHECK_EQ(metrics_code_index("nonsense"), METRICS_CODES - 1);
	CHECK_EQ(metrics_auth_index("dane-ta"), 5);
	CHECK_EQ(metrics_version_index("TLSv1.3"), MV_TLS13);
	CHECK_EQ(metrics_version_index("TLSv1.1"), MV_OTHER);
}

static void test_render(void)
{
	char *buf = malloc(1 << 16);
	size_t need, n;

	metrics_add(&m.w[0].svc[0].sessions[MR_OK], 3);
	metrics_add(&m.w[1].svc[0].sessions[MR_OK], 4);
	metrics_add(&m.w[1].svc[1].sessions[MR_REFUSED], 1);
	metrics_add(&m.w[0].svc[0].bytes_in, 1000);
	metrics_gauge(&m.active[0], 2);
	metrics_gauge(&m.active[7], 1);
	metrics_gauge(&m.active[7], -1);
	metrics_add(&m.w[0].handshakes[MH_LISTEN][MV_TLS13][0], 5);
	metrics_add(&m.w[1].refusals[metrics_code_index("dane-required")], 2);
	metrics_add(&m.w[0].auth[metrics_auth_index("dane-ee")], 1);
	metrics_observe_hs(&m.w[0].handshake[MH_LISTEN], 700);     /* <= 1 ms */
	metrics_observe_hs(&m.w[1].handshake[MH_LISTEN], 3000);    /* <= 5 ms */
	metrics_observe_hs(&m.w[1].handshake[MH_LISTEN], 9000000); /* +Inf */
	metrics_observe_session(&m.w[0].session, 20000);
	m.reloads_ok = 2;
	m.generation = 3;

	need = metrics_render(&m, 2, buf, 10);
	CHECK(need > 10);
	n = metrics_render(&m, 2, buf, 1 << 16);
	CHECK_EQ(n, need);
	CHECK(has(buf, "mailshim_sessions_total{service=\"mx\",result=\"ok\"} 7"));
	CHECK(has(buf, "mailshim_sessions_total{service=\"submission\",result=\"refused\"} 1"));
	CHECK(has(buf, "mailshim_sessions_total{service=\"submission\",result=\"ok\"} 0"));
	CHECK(has(buf, "mailshim_bytes_total{service=\"mx\",direction=\"in\"} 1000"));
	CHECK(has(buf, "mailshim_active_sessions 2"));
	CHECK(has(buf, "mailshim_tls_handshakes_total{hop=\"listen\",version=\"TLSv1.3\","
	    "cipher=\"TLS_AES_128_GCM_SHA256\"} 5"));
	CHECK(has(buf, "mailshim_refusals_total{reason_code=\"dane-required\"} 2"));
	CHECK(has(buf, "mailshim_upstream_auth_total{auth=\"dane-ee\"} 1"));
	CHECK(has(buf, "mailshim_handshake_seconds_bucket{hop=\"listen\",le=\"0.001\"} 1"));
	CHECK(has(buf, "mailshim_handshake_seconds_bucket{hop=\"listen\",le=\"0.005\"} 2"));
	CHECK(has(buf, "mailshim_handshake_seconds_bucket{hop=\"listen\",le=\"5\"} 2"));
	CHECK(has(buf, "mailshim_handshake_seconds_bucket{hop=\"listen\",le=\"+Inf\"} 3"));
	CHECK(has(buf, "mailshim_handshake_seconds_count{hop=\"listen\"} 3"));
	CHECK(has(buf, "mailshim_handshake_seconds_sum{hop=\"listen\"} 9.003700"));
	CHECK(has(buf, "mailshim_session_seconds_bucket{le=\"0.05\"} 1"));
	CHECK(has(buf, "mailshim_session_seconds_count 1"));
	CHECK(has(buf, "mailshim_reloads_total{result=\"ok\"} 2"));
	CHECK(has(buf, "mailshim_config_generation 3"));
	CHECK(has(buf, "mailshim_up 1"));
	CHECK(has(buf, "# TYPE mailshim_sessions_total counter"));
	CHECK(has(buf, "# TYPE mailshim_handshake_seconds histogram"));
	/* Only the workers asked for are summed. */
	metrics_render(&m, 1, buf, 1 << 16);
	CHECK(has(buf, "mailshim_sessions_total{service=\"mx\",result=\"ok\"} 3"));
	free(buf);
}

int main(void)
{
	test_slots();
	test_render();
	return unit_done("test_metrics");
}
