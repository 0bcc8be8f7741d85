"""SIGHUP: a new configuration and new certificates take over for new
sessions, live sessions finish on the load they started with, and a bad
configuration is refused while the old one keeps serving."""

import signal

from harness import SmtpConn, conf_text, service, swaks, wait_until


def reloads(shim, word, before):
    shim.proc.signal(signal.SIGHUP)
    wait_until(lambda: shim.stderr_text().count(word) > before, 5, "'%s' in the log" % word)


def test_reload_switches_new_sessions_keeps_live_ones(make_shim, smtp_sink, ports):
    old_sink, new_sink = smtp_sink(), smtp_sink()
    port = ports.get()
    shim = make_shim({"mx": service(port, old_sink.port)})
    live = SmtpConn(port)
    assert live.reply()[0] == 220
    assert live.cmd("EHLO live.test")[0] == 250
    shim.write_conf({"mx": service(port, new_sink.port)})
    reloads(shim, "configuration reloaded", 0)
    assert swaks(port).rc == 0
    wait_until(lambda: new_sink.count() == 1, 5, "the new upstream to get the mail")
    # The session opened before the reload still talks to the old upstream.
    for line in ("MAIL FROM:<a@client.test>", "RCPT TO:<b@legacy.test>"):
        assert live.cmd(line)[0] == 250
    assert live.cmd("DATA")[0] == 354
    live.send(b"Subject: live\r\n\r\nbody\r\n.\r\n")
    assert live.reply()[0] == 250
    assert live.cmd("QUIT")[0] == 221
    live.close()
    wait_until(lambda: old_sink.count() == 1, 5, "the old upstream to get the live session's mail")
    assert new_sink.count() == 1
    lines = shim.wait_log(lambda d: d.get("result") == "ok", count=2)
    assert {d["upstream"] for d in lines} == {"127.0.0.1:%d" % old_sink.port,
                                               "127.0.0.1:%d" % new_sink.port}


def test_bad_reload_is_refused_and_old_config_serves(make_shim, smtp_sink, ports):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"mx": service(port, sink.port)})
    good = conf_text(shim.conf)
    (shim.confdir / "test.conf").write_text(good + "\nbogus_key = 1\n")
    reloads(shim, "reload refused", 0)
    assert "unknown key 'bogus_key'" in shim.stderr_text()
    assert swaks(port).rc == 0
    # Moving the listener needs a restart: refused too, still serving.
    other = ports.get()
    shim.write_conf({"mx": service(other, sink.port)})
    reloads(shim, "reload refused", 1)
    assert "listen addresses changed" in shim.stderr_text()
    assert swaks(port).rc == 0
    wait_until(lambda: sink.count() == 2, 5, "both messages")


def test_reload_picks_up_a_new_certificate(make_shim, smtp_sink, ports, pki):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"smtps": service(port, sink.port, listen_tls="implicit", pki=pki)})
    before = SmtpConn(port, tls=True, cafile=pki.ca)
    assert before.reply()[0] == 220
    svc = service(port, sink.port, listen_tls="implicit", pki=pki)
    svc["listen_cert"], svc["listen_key"] = pki.upstream, pki.upstream_key
    shim.write_conf({"smtps": svc})
    reloads(shim, "configuration reloaded", 0)
    after = SmtpConn(port, tls=True, cafile=pki.ca, server_hostname="legacy.test")
    assert after.reply()[0] == 220
    cn = dict(x[0] for x in after.sock.getpeercert()["subject"]).get("commonName")
    assert cn != dict(x[0] for x in before.sock.getpeercert()["subject"]).get("commonName")
    assert before.cmd("QUIT")[0] == 221
    assert after.cmd("QUIT")[0] == 221
    before.close()
    after.close()
