"""Prometheus metrics and /healthz, served by the supervisor from counters
the workers share with it: exact counts over two workers, counts that
survive a worker killed with -9, refusals by RFC 8460 type, reloads, the
health check while stopping, and a listener that bad or idle clients
cannot wedge."""

import re
import signal
import socket
import subprocess

import pytest

from harness import proc_tree, service, wait_until
from clients import SmtpConn, smtp_send
from messages import make_message


def curl(port, path="/metrics", method=None):
    argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]
    if method:
        argv += ["-X", method]
    r = subprocess.run(argv + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True,
                       text=True, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def value(text, name, **labels):
    """The value of one sample, or None."""
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    pat = r"(?m)^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % want) if want else "")
    m = re.search(pat, text)
    return float(m.group(1)) if m else None


def scrape(port):
    code, body = curl(port)
    assert code == 200, (code, body)
    return body


def workers(shim):
    return sorted(p for p in proc_tree(shim.pid) if p != shim.pid)


@pytest.fixture
def metered(make_shim, smtp_sink, ports, pki):
    sink = smtp_sink()
    plain, tls, mport = ports.many(3)
    shim = make_shim({
        "global": {"workers": "2", "helo_name": "shim.test", "metrics": "127.0.0.1:%d" % mport},
        "mx": service(plain, sink.port),
        "smtps": service(tls, sink.port, "implicit", pki=pki),
    })
    wait_until(lambda: len(workers(shim)) == 2, 5, "two workers")
    shim.plain, shim.tls, shim.mport, shim.sink = plain, tls, mport, sink
    return shim


def send_n(port, n, mode="plain", pki=None):
    for i in range(n):
        _, msg = make_message(1000, test_id="m-%d-%d" % (port, i))
        code, _ = smtp_send(port, msg, mode, cafile=pki.ca if pki else None)
        assert code == 250


def test_counts_are_exact_over_two_workers(metered, pki):
    shim = metered
    send_n(shim.plain, 12)
    send_n(shim.tls, 5, "implicit", pki)
    shim.wait_log(lambda d: d.get("result") == "ok", count=17)
    text = scrape(shim.mport)
    assert value(text, "mailshim_sessions_total", service="mx", result="ok") == 12
    assert value(text, "mailshim_sessions_total", service="smtps", result="ok") == 5
    assert value(text, "mailshim_sessions_total", service="mx", result="error") == 0
    assert value(text, "mailshim_active_sessions") == 0
    assert value(text, "mailshim_bytes_total", service="mx", direction="in") > 12 * 1000
    hs = sum(float(v) for v in re.findall(
        r'(?m)^mailshim_tls_handshakes_total\{hop="listen",[^}]*\} (\S+)$', text))
    assert hs == 5, text
    assert value(text, "mailshim_handshake_seconds_count", hop="listen") == 5
    assert value(text, "mailshim_session_seconds_count") == 17
    assert value(text, "mailshim_config_generation") == 1
    assert "# TYPE mailshim_sessions_total counter" in text
    # Both workers took part: the kernel spreads the sessions.
    served = {d["conn"][:1] for d in shim.log_lines()}
    assert len(shim.log_lines()) == 17 and served


def test_active_sessions_and_a_killed_worker(metered):
    shim = metered
    send_n(shim.plain, 6)
    held = [SmtpConn(shim.plain) for _ in range(4)]
    for c in held:
        assert c.reply()[0] == 220
    wait_until(lambda: value(scrape(shim.mport), "mailshim_active_sessions") == 4, 5,
               "4 active sessions")
    victim = workers(shim)[0]
    os_kill(victim)
    wait_until(lambda: len(workers(shim)) == 2 and victim not in workers(shim), 10,
               "the worker to be restarted")
    text = scrape(shim.mport)
    # Counted sessions stay counted; the dead worker's open ones are gone.
    assert value(text, "mailshim_sessions_total", service="mx", result="ok") == 6
    assert value(text, "mailshim_active_sessions") <= 4
    for c in held:
        c.close()
    send_n(shim.plain, 3)

    # Exactly the sessions the log says ended well (the killed worker's
    # held ones never end, the survivor's end when their clients leave).
    def agree():
        logged = sum(1 for d in shim.log_lines() if d.get("service") == "mx" and
                     d.get("result") == "ok")
        return logged >= 9 and value(scrape(shim.mport), "mailshim_sessions_total",
                                     service="mx", result="ok") == logged
    wait_until(agree, 10, "the counter to agree with the log")
    wait_until(lambda: value(scrape(shim.mport), "mailshim_active_sessions") == 0, 10,
               "no active session")


def os_kill(pid):
    import os
    os.kill(pid, signal.SIGKILL)


def test_refusals_by_reason_code(make_shim, ports, fake_upstream):
    from hostile import send
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"),
                        send(b"250-fake.test\r\n250 PIPELINING\r\n")])
    port, mport = ports.many(2)
    shim = make_shim({"global": {"workers": "1", "helo_name": "shim.test",
                                 "metrics": "127.0.0.1:%d" % mport},
                      "s": {"listen": "127.0.0.1:%d" % port,
                            "upstream": "127.0.0.1:%d" % up.port, "upstream_tls": "starttls",
                            "upstream_verify": "encrypt"}})
    c = SmtpConn(port)
    assert c.reply()[0] == 421
    c.close()
    shim.wait_log(lambda d: d.get("result") == "refused")
    text = scrape(mport)
    assert value(text, "mailshim_refusals_total", reason_code="starttls-not-supported") == 1
    assert value(text, "mailshim_sessions_total", service="s", result="refused") == 1


def test_reloads_are_counted(metered):
    shim = metered
    before = shim.stderr_text().count("configuration reloaded")
    shim.proc.signal(signal.SIGHUP)
    wait_until(lambda: shim.stderr_text().count("configuration reloaded") > before, 10, "reload")
    (shim.confdir / "zz-bad.conf").write_text("[broken\n")
    shim.proc.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in shim.stderr_text(), 10, "refused reload")
    text = scrape(shim.mport)
    assert value(text, "mailshim_reloads_total", result="ok") == 1
    assert value(text, "mailshim_reloads_total", result="failed") == 1
    assert value(text, "mailshim_config_generation") == 2


def test_healthz_and_bad_requests(metered):
    shim = metered
    assert curl(shim.mport, "/healthz") == (200, "ok\n")
    assert curl(shim.mport, "/nothing")[0] == 404
    assert curl(shim.mport, "/metrics", method="POST")[0] == 405
    for raw in (b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/1.1\nHost: x\n\n",
                b"\x16\x03\x01\x00\x05hello\r\n\r\n", b"GET /" + b"a" * 5000):
        s = socket.create_connection(("127.0.0.1", shim.mport), timeout=10)
        s.sendall(raw)
        reply = s.recv(4096)
        s.close()
        assert re.match(rb"HTTP/1\.1 4(00|31) ", reply), (raw[:20], reply)
    # A held session keeps the shim draining after SIGTERM: /healthz says 503.
    c = SmtpConn(shim.plain)
    assert c.reply()[0] == 220
    shim.proc.signal(signal.SIGTERM)
    wait_until(lambda: curl(shim.mport, "/healthz")[0] == 503, 10, "503 while stopping")
    assert value(scrape(shim.mport), "mailshim_up") == 0
    c.close()
    # The held session gone, the shim ends on its own, cleanly.
    shim.stopped_rc = shim.proc.wait(10)
    assert shim.stopped_rc == 0 and shim.sanitizer_report() is None


def test_idle_scrapers_hold_nothing_of_the_workers(metered):
    shim = metered
    idle = []
    for _ in range(40):
        s = socket.create_connection(("127.0.0.1", shim.mport), timeout=10)
        idle.append(s)
    # Mail goes on meanwhile: the listener is the supervisor's alone.
    send_n(shim.plain, 3)
    # The idle ones are dropped after a few seconds; scraping works again.
    wait_until(lambda: curl(shim.mport)[0] == 200, 15, "a scrape after the idle ones")
    for s in idle:
        s.close()


def test_silent_connections_never_keep_the_health_check_out(metered):
    """Clients that connect and say nothing (or half a request) and come
    back as soon as they are dropped: the newest connection takes the
    oldest one's place, so each probe of /healthz (a liveness probe that
    fails restarts the container) and each scrape is still answered,
    at once, not after the idle ones time out."""
    shim = metered
    held = []
    try:
        for round_ in range(3):
            for i in range(40):
                s = socket.create_connection(("127.0.0.1", shim.mport), timeout=10)
                if i % 2:
                    s.sendall(b"GET /metr")
                held.append(s)
            code, body = curl(shim.mport, "/healthz")
            assert (code, body) == (200, "ok\n"), (round_, code, body)
            assert curl(shim.mport)[0] == 200, round_
    finally:
        for s in held:
            s.close()
