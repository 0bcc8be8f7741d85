"""The release mailshim under valgrind's memcheck: 1,000 sessions over
three services (plain -> plain, implicit -> plain, starttls -> starttls)
with small messages at 20 concurrent sessions, then shutdown with live
sessions: the first SIGTERM lets one of them finish (QUIT gets 221), the
second closes the rest. valgrind's report must show no invalid access,
no use of uninitialised values, nothing definitely or indirectly lost,
and its exit status must not be the error code 99.

    valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect
             --error-exitcode=99 --track-fds=no --log-file=... mailshim -c DIR
"""

import random
import re
import shutil
import signal
import smtplib
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import Shim, tail, wait_until
from clients import SmtpConn, client_context

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "soak"))
import soak  # noqa: E402

VALGRIND = "valgrind"
VALGRIND_ARGS = ["--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                 "--error-exitcode=99", "--track-fds=no", "--num-callers=30"]
SESSIONS = 1000
CONCURRENCY = 20
MAX_SIZE = 8192
SERVICES = [("plain", "plain"), ("implicit", "plain"), ("starttls", "starttls")]
RUN_LIMIT = 150      # seconds for the 1,000 sessions
EXIT_LIMIT = 90      # seconds for valgrind to exit after the last signal

pytestmark = pytest.mark.slow


def valgrind_wrapper(workdir, binary, logfile):
    """A script that runs binary under valgrind (exec, so the pid the
    harness signals is valgrind's own)."""
    path = Path(workdir) / "mailshim-valgrind.sh"
    path.write_text("#!/bin/sh\nexec %s %s --log-file=%s %s \"$@\"\n" % (
        VALGRIND, " ".join(VALGRIND_ARGS), logfile, binary))
    path.chmod(0o755)
    return path


def report_problems(report):
    """What is wrong in a valgrind memcheck report (empty list: clean)."""
    probs = []
    if not re.search(r"ERROR SUMMARY: \d+ errors", report):
        return ["the report is incomplete (no ERROR SUMMARY)"]
    for pat, what in ((r"Invalid (read|write|free|realloc)", "invalid memory access"),
                      (r"uninitialised", "use of uninitialised values"),
                      (r"Mismatched free|Source and destination overlap|"
                       r"Argument '\w+' of function \w+ has a fishy", "misuse of the allocator"),
                      (r"Process terminating with default action", "killed by a signal")):
        m = re.search(pat, report)
        if m:
            probs.append("%s: %s" % (what, _context(report, m.start())))
    if "All heap blocks were freed -- no leaks are possible" not in report:
        for kind in ("definitely lost", "indirectly lost"):
            m = re.search(kind + r": ([\d,]+) bytes in ([\d,]+) blocks", report)
            if not m:
                probs.append("no '%s' line in the leak summary" % kind)
            elif m.group(1) != "0":
                probs.append("%s: %s bytes in %s blocks" % (kind, m.group(1), m.group(2)))
    m = re.search(r"ERROR SUMMARY: ([\d,]+) errors", report)
    if m and m.group(1) != "0":
        probs.append("ERROR SUMMARY: %s errors" % m.group(1))
    return probs


def _context(text, pos):
    start = text.rfind("\n", 0, max(0, pos - 1))
    return text[start + 1:start + 2500]


def test_report_problems_sees_errors():
    """The parser itself: a clean report passes, a dirty one does not."""
    clean = ("==1== HEAP SUMMARY:\n==1==     in use at exit: 0 bytes in 0 blocks\n"
             "==1== All heap blocks were freed -- no leaks are possible\n"
             "==1== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)\n")
    assert report_problems(clean) == []
    leak = ("==1== LEAK SUMMARY:\n==1==    definitely lost: 48 bytes in 1 blocks\n"
            "==1==    indirectly lost: 0 bytes in 0 blocks\n"
            "==1== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)\n")
    assert any("definitely lost: 48" in p for p in report_problems(leak))
    bad = ("==1== Invalid read of size 4\n==1==    at 0x1: conn_free (conn.c:10)\n"
           "==1== All heap blocks were freed -- no leaks are possible\n"
           "==1== ERROR SUMMARY: 1 errors from 1 contexts (suppressed: 0 from 0)\n")
    assert any(p.startswith("invalid memory access") for p in report_problems(bad))
    assert report_problems("") == ["the report is incomplete (no ERROR SUMMARY)"]


def release_binary(mailshim_path):
    """The release build to run under valgrind. valgrind cannot run an
    AddressSanitizer build (make test SAN=1): then the release binary
    beside the sources is used if it is up to date, else the test skips."""
    if not soak.sanitizer_build(mailshim_path):
        return mailshim_path
    release = soak.REPO / "mailshim"
    sources = list((soak.REPO / "shim").glob("*.[ch]"))
    if (release.exists() and not soak.sanitizer_build(release)
            and all(release.stat().st_mtime >= p.stat().st_mtime for p in sources)):
        return release
    pytest.skip("%s is an AddressSanitizer build and no up-to-date release build is at %s "
                "(run make, or make test without SAN=1)" % (mailshim_path, release))


def test_valgrind_1000_sessions(procs, ports, pki, workdir, mailshim_path):
    if shutil.which(VALGRIND) is None:
        pytest.fail("valgrind is not installed (Debian package valgrind)")
    binary = release_binary(mailshim_path)
    vglog = workdir / "valgrind.log"
    sinks = {m: soak.HashSink(procs, ports.get(), m, pki, workdir) for m in ("plain", "starttls")}
    svc_ports = {t: ports.get() for t in SERVICES}
    conf = soak.shim_config(svc_ports, sinks, pki)
    shim = Shim(procs, workdir / "shim", valgrind_wrapper(workdir, binary, vglog))
    shim.start(conf, timeout=60)

    # 1,000 sessions of one small message each, round-robin over the services.
    pool = soak.Pool(1 << 17, 3)
    rnd = random.Random(3)
    sessions = []
    for i in range(SESSIONS):
        listen, upstream = SERVICES[i % len(SERVICES)]
        size = int(2 ** rnd.uniform(0, 13)) - 1
        spec = soak.MessageSpec("vg-%s-%s-%04d" % (listen, upstream, i), min(size, MAX_SIZE),
                                rnd.getrandbits(64))
        sessions.append((listen, upstream, spec))
    ctx = soak.client_ctx(pki.ca)
    sent, errors = {}, []
    lock = threading.Lock()
    it = iter(sessions)
    t0 = time.monotonic()
    deadline = t0 + RUN_LIMIT

    def worker():
        while time.monotonic() < deadline:
            with lock:
                item = next(it, None)
            if item is None:
                return
            listen, upstream, spec = item
            try:
                soak.run_session(listen, svc_ports[(listen, upstream)], [spec], pool, ctx, 60,
                                 sent)
            except (soak.SessionError, smtplib.SMTPException, OSError, ssl.SSLError) as e:
                errors.append("%s: %s: %s" % (spec.id, type(e).__name__, e))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 70)
    elapsed = time.monotonic() - t0
    print("valgrind: %d sessions in %.1f s" % (len(sent), elapsed))
    assert not errors, "%d failed sessions, e.g.:\n%s\nshim stderr:\n%s" % (
        len(errors), "\n".join(errors[:10]), tail(shim.stderr_text()))
    assert len(sent) == SESSIONS, "%d of %d sessions done in %.0f s" % (len(sent), SESSIONS,
                                                                        elapsed)

    # Every message arrived once and intact; every session logged result=ok.
    received = {}
    for sink in sinks.values():
        received.update(sink.received())
    bad = [k for k, (size, digest, _) in sent.items()
           if [(r[0], r[1]) for r in received.get(k, [])] != [(size, digest)]]
    assert not bad, "%d messages missing, duplicated or changed: %s" % (len(bad), bad[:10])
    lines = shim.wait_log(lambda d: True, timeout=30, count=SESSIONS)
    not_ok = [d["_line"] for d in lines if d.get("result") != "ok"]
    assert len(lines) == SESSIONS and not not_ok, "\n".join(not_ok[:10])

    # Shutdown with live sessions: plain, implicit TLS, STARTTLS done,
    # and one in the middle of a DATA body.
    live = []
    try:
        c = SmtpConn(svc_ports[("plain", "plain")], timeout=30)
        live.append(c)
        assert c.reply(30)[0] == 220 and c.cmd("EHLO client.test", 30)[0] == 250
        c = SmtpConn(svc_ports[("implicit", "plain")], tls=True, cafile=pki.ca, timeout=30)
        live.append(c)
        assert c.reply(30)[0] == 220 and c.cmd("EHLO client.test", 30)[0] == 250
        c = SmtpConn(svc_ports[("plain", "plain")], timeout=30)
        live.append(c)
        assert c.reply(30)[0] == 220 and c.cmd("EHLO client.test", 30)[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>", 30)[0] == 250
        assert c.cmd("RCPT TO:<rcpt@legacy.test>", 30)[0] == 250
        assert c.cmd("DATA", 30)[0] == 354
        c.send(b"Subject: cut short\r\n\r\n" + b"x" * 3000 + b"\r\n")
        s = smtplib.SMTP("127.0.0.1", svc_ports[("starttls", "starttls")],
                         local_hostname="client.test", timeout=30)
        live.append(s)
        s.ehlo()
        assert s.starttls(context=client_context(pki.ca))[0] == 220
        s.ehlo()

        t1 = time.monotonic()
        shim.proc.signal(signal.SIGTERM)
        wait_until(lambda: "stopping:" in shim.stderr_text(), 30, "mailshim to begin stopping")
        # A live session may still finish after the first SIGTERM, and
        # logs result=ok once both sides closed.
        code, _ = live[0].cmd("QUIT", 30)
        assert code == 221, "QUIT after SIGTERM got %s" % code
        client = "%s:%d" % live[0].local[:2]
        live[0].close()
        done = shim.wait_log(lambda d: d.get("client") == client, timeout=30)[0]
        assert done.get("result") == "ok", done["_line"]
        assert shim.proc.alive(), "mailshim exited while sessions were live"
        # The second SIGTERM closes the others.
        shim.proc.signal(signal.SIGTERM)
        rc = shim.proc.wait(EXIT_LIMIT)
        shim.stopped_rc = rc if rc is not None else "hung"
        stop_seconds = time.monotonic() - t1
    finally:
        for c in live:
            try:
                c.close()
            except (OSError, smtplib.SMTPException):
                pass
    print("valgrind: exit status %s, %.1f s after the first SIGTERM; whole test %.1f s"
          % (rc, stop_seconds, time.monotonic() - t0))
    report = vglog.read_text(errors="replace") if vglog.exists() else ""
    assert rc is not None, "valgrind did not exit within %d s of the second SIGTERM:\n%s" % (
        EXIT_LIMIT, tail(shim.stderr_text()))
    probs = report_problems(report)
    assert not probs, "valgrind found:\n%s\n\nreport tail:\n%s" % ("\n\n".join(probs),
                                                                  tail(report, 60))
    assert rc != 99, "valgrind's error exit status:\n%s" % tail(report, 60)
    assert rc in (0, 128 + signal.SIGTERM, -signal.SIGTERM), \
        "mailshim under valgrind exited with %s:\n%s" % (rc, tail(shim.stderr_text()))
