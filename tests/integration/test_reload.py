"""SIGHUP: a new configuration and new certificates take over for new
sessions, live sessions finish on the load they started with, and a bad
configuration is refused while the old one keeps serving."""

import signal

from harness import HarnessError, conf_text, service, wait_until
from clients import SmtpConn, swaks


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


# --------------------------------------------------------------------------
# One decision per reload, made by the supervisor: workers = 2, user =
# nobody, keys that only root may read.

import os
import re
import shutil
import socket
import ssl
import time

import pytest

from harness import proc_tree
from clients import s_client_session


def workers(shim):
    return sorted(p for p in proc_tree(shim.pid) if p != shim.pid)


def root_only_copy(src, dst):
    shutil.copyfile(src, dst)
    os.chown(dst, 0, 0)
    os.chmod(dst, 0o600)
    return str(dst)


def served_der(port):
    """The DER certificate the listener on port presents."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="shim.test") as s:
            der = s.getpeercert(binary_form=True)
            s.settimeout(10)
            s.recv(512)          # the greeting: the session really ran
            s.sendall(b"QUIT\r\n")
            s.recv(512)
    return der


def pem_der(path):
    text = open(path).read()
    first = text[:text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first[first.index("-----BEGIN CERTIFICATE-----"):])


def serving_worker(shim, conn_hex, pids):
    """Which worker pid made this session id (ids start at a value derived
    from the worker's pid and slot, and count up)."""
    cid = int(conn_hex, 16)
    for pid in pids:
        for idx in range(2):
            base = ((pid * 2654435761) & 0xffffffff) ^ (idx << 28)
            if (cid - base) % (1 << 32) < 10000:
                return pid
    return None


@pytest.fixture
def nobody_shim(make_shim, smtp_sink, ports, pki, workdir):
    """An implicit-TLS shim, workers = 2, user = nobody, its key 0600 root."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the keys are root-only and the workers become nobody")
    sink = smtp_sink()
    port = ports.get()
    keys = workdir / "keys"
    keys.mkdir()
    os.chmod(keys, 0o700)
    cert = root_only_copy(pki.server, keys / "a.pem")
    key = root_only_copy(pki.server_key, keys / "a.key")

    def conf(cert, key):
        return {"global": {"workers": "2", "user": "nobody", "helo_name": "shim.test",
                           "shutdown_grace": "20s"},
                "smtps": {"listen": "127.0.0.1:%d" % port, "listen_tls": "implicit",
                          "listen_cert": cert, "listen_key": key,
                          "upstream": "127.0.0.1:%d" % sink.port}}

    shim = make_shim(conf(cert, key))
    wait_until(lambda: len(workers(shim)) == 2, 5, "two workers")
    shim.port, shim.sink, shim.keys, shim.make_conf = port, sink, keys, conf
    return shim


def hup_and_wait(shim, word="configuration reloaded"):
    before = shim.stderr_text().count(word)
    shim.proc.signal(signal.SIGHUP)
    wait_until(lambda: shim.stderr_text().count(word) > before, 10, "'%s' in the log" % word)


def test_reload_with_root_only_keys_switches_every_worker(nobody_shim, pki):
    shim = nobody_shim
    old_workers = workers(shim)

    def uids():
        out = []
        for pid in old_workers:
            with open("/proc/%d/status" % pid) as f:
                out.append(re.search(r"(?m)^Uid:\s+(\d+)", f.read()).group(1))
        return out
    # A worker just forked is root for the moment before it drops.
    try:
        wait_until(lambda: "0" not in uids(), 5, "the workers to drop root")
    except HarnessError:
        pass
    assert "0" not in uids(), "a worker runs as root: %s" % uids()
    assert served_der(shim.port) == pem_der(pki.server)
    # A new certificate, root-only too: only the supervisor can read it.
    cert = root_only_copy(pki.upstream, shim.keys / "b.pem")
    key = root_only_copy(pki.upstream_key, shim.keys / "b.key")
    shim.write_conf(shim.make_conf(cert, key))
    hup_and_wait(shim)
    assert "reload refused" not in shim.stderr_text()
    wait_until(lambda: len(workers(shim)) == 2 and not set(workers(shim)) & set(old_workers),
               10, "the old workers to leave")
    new_workers = workers(shim)
    before = len(shim.log_lines())
    want = pem_der(pki.upstream)
    for i in range(30):
        assert served_der(shim.port) == want, "connection %d got the old certificate" % i
    lines = shim.wait_log(count=before + 30)[before:]
    served_by = {serving_worker(shim, d["conn"], new_workers) for d in lines}
    assert served_by == set(new_workers), (served_by, new_workers)


def test_session_resumes_on_every_worker_and_after_reload(nobody_shim, pki, workdir):
    shim = nobody_shim
    sess = str(workdir / "session.pem")
    first = s_client_session(shim.port, sess_out=sess)
    assert "New," in first, first[-1500:]
    # The kernel spreads connections over the workers by a hash of their
    # ports: eight can all land on one worker (1 in 128). Resume until both
    # workers have served one, at most 24 times (all on one: 1 in 8 million).
    before = len(shim.log_lines())
    served_by = set()
    for n in range(1, 25):
        out = s_client_session(shim.port, sess_in=sess)
        assert re.search(r"(?m)^Reused, TLSv1\.[23]", out), out[-1500:]
        d = shim.wait_log(count=before + n)[before + n - 1]
        served_by.add(serving_worker(shim, d["conn"], workers(shim)))
        if len(served_by) == 2 and n >= 8:
            break
    assert len(served_by) == 2, "all resumptions landed on one worker: %s" % served_by
    # A reload (same files, new workers, new contexts): the ticket still opens.
    old = workers(shim)
    hup_and_wait(shim)
    wait_until(lambda: not set(workers(shim)) & set(old), 10, "the old workers to leave")
    for _ in range(4):
        out = s_client_session(shim.port, sess_in=sess)
        assert re.search(r"(?m)^Reused, TLSv1\.[23]", out), out[-1500:]


def test_bad_reload_changes_nothing_and_is_logged(nobody_shim, pki):
    shim = nobody_shim
    old = workers(shim)
    broken = shim.keys / "broken.pem"
    text = open(pki.upstream).read()
    broken.write_text(text[:len(text) // 2])
    os.chmod(broken, 0o600)
    shim.write_conf(shim.make_conf(str(broken), str(shim.keys / "a.key")))
    hup_and_wait(shim, "reload refused")
    log = shim.stderr_text()
    assert re.search(r"reload: \S*test\.conf:\d+: listen_cert \S*broken\.pem", log), log[-2000:]
    time.sleep(0.5)
    assert workers(shim) == old, "a refused reload replaced the workers"
    for _ in range(6):
        assert served_der(shim.port) == pem_der(pki.server)


def test_sighup_burst_kills_no_worker(make_shim, smtp_sink, ports):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": "2", "helo_name": "shim.test"},
                      "mx": service(port, sink.port)})
    wait_until(lambda: len(workers(shim)) == 2, 5, "two workers")
    for i in range(40):
        shim.proc.signal(signal.SIGHUP)
        time.sleep(0.002 * (i % 5))
    wait_until(lambda: shim.stderr_text().count("configuration reloaded") >= 1, 10, "a reload")
    time.sleep(1.5)
    log = shim.stderr_text()
    assert "killed by signal" not in log and "exited with status" not in log, log[-3000:]
    assert shim.proc.alive()
    wait_until(lambda: len(workers(shim)) == 2, 10, "two workers after the burst")
    for _ in range(6):
        assert swaks(port, quit_after=None).rc == 0
    wait_until(lambda: sink.count() == 6, 10, "the six messages")


@pytest.mark.parametrize("nworkers", ["1", "2"])
def test_session_mid_data_during_reload_completes(make_shim, smtp_sink, ports, nworkers):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": nworkers, "helo_name": "shim.test"},
                      "mx": service(port, sink.port)})
    live = SmtpConn(port)
    assert live.reply()[0] == 220
    assert live.cmd("EHLO live.test")[0] == 250
    assert live.cmd("MAIL FROM:<a@client.test>")[0] == 250
    assert live.cmd("RCPT TO:<b@legacy.test>")[0] == 250
    assert live.cmd("DATA")[0] == 354
    live.send(b"Subject: mid-data\r\n\r\nfirst half\r\n")
    old = workers(shim)
    hup_and_wait(shim)
    # New sessions go to the new workers meanwhile.
    assert swaks(port).rc == 0
    live.send(b"second half\r\n.\r\n")
    assert live.reply()[0] == 250
    assert live.cmd("QUIT")[0] == 221
    live.close()
    wait_until(lambda: sink.count() == 2, 10, "both messages")
    # The old worker leaves once its last session is over.
    wait_until(lambda: not set(workers(shim)) & set(old), 10, "the old workers to leave")
    assert len(workers(shim)) == int(nworkers)
