"""Workers: the supervisor shares the listeners (SO_REUSEPORT), restarts a
worker that dies, raises the descriptor limit, and stops them all on
SIGTERM (stop accepting, sessions finish within shutdown_grace, exit 0)."""

import os
import signal
import time

import pytest

from harness import proc_tree, service, wait_until
from clients import swaks


def worker_pids(shim):
    return [p for p in proc_tree(shim.pid) if p != shim.pid]


def test_workers_share_listeners_and_restart(make_shim, smtp_sink, ports):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": "2", "helo_name": "shim.test"},
                      "mx": service(port, sink.port)})
    wait_until(lambda: len(worker_pids(shim)) == 2, 5, "two workers")
    first = worker_pids(shim)
    for _ in range(6):
        assert swaks(port, quit_after=None).rc == 0
    # A session is logged once the shim has seen the client close, a
    # moment after swaks has its 221: all six lines, before the kill.
    shim.wait_log(lambda d: d.get("result") == "ok", count=6)
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(worker_pids(shim)) == 2 and first[0] not in worker_pids(shim),
               5, "the killed worker to be replaced")
    assert "killed by signal 9; restarting" in shim.stderr_text()
    # Every session still lands, whichever worker the kernel picks.
    for _ in range(6):
        assert swaks(port, quit_after=None).rc == 0
    lines = shim.wait_log(lambda d: d.get("result") == "ok", count=12)
    assert len({d["conn"] for d in lines}) == len(lines)
    assert sink.count() == 12
    kids = worker_pids(shim)
    shim.stop()
    time.sleep(0.2)
    assert not [p for p in kids if os.path.exists("/proc/%d" % p)]


# --------------------------------------------------------------------------
# Descriptors: the soft RLIMIT_NOFILE goes up to the hard one at start.

import re
import select
import socket
import subprocess

from harness import mailshim_binary
from clients import SmtpConn


def limited(workdir, soft, hard):
    w = workdir / ("mailshim-nofile-%d-%d" % (soft, hard))
    w.write_text("#!/bin/sh\nexec prlimit --nofile=%d:%d -- %s \"$@\"\n"
                 % (soft, hard, mailshim_binary()))
    w.chmod(0o755)
    return w


def test_soft_fd_limit_is_raised_for_700_idle_sessions(make_shim, smtp_sink, ports, workdir):
    """Under systemd's default soft limit of 1024, 700 idle clients (1400
    descriptors) must all get the greeting: the shim raises its soft limit
    to the hard one (4096) and says so."""
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"mx": service(port, sink.port, timeout_idle="60s")}, start=False)
    shim.binary = str(limited(workdir, 1024, 4096))
    shim.start()
    wait_until(lambda: "file descriptor limit 4096" in shim.stderr_text(), 5, "the limit log line")
    assert re.search(r"file descriptor limit 4096: up to \d+ sessions per worker",
                     shim.stderr_text()), shim.stderr_text()
    for pid in proc_tree(shim.pid):
        with open("/proc/%d/limits" % pid) as f:
            assert re.search(r"(?m)^Max open files\s+4096\s+4096", f.read()), pid
    socks = []
    try:
        for _ in range(700):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        got = {s: b"" for s in socks}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = [s for s in socks if b"\r\n" not in got[s]]
            if not waiting:
                break
            # poll, not select: the test process may hold descriptors past 1024.
            poller = select.poll()
            byfd = {}
            for s in waiting:
                poller.register(s, select.POLLIN)
                byfd[s.fileno()] = s
            r = [byfd[fd] for fd, _ in poller.poll(200)]
            for s in r:
                try:
                    got[s] += s.recv(512) or b"EOF\r\n"
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    got[s] += b"ERR\r\n"
        greeted = sum(1 for s in socks if got[s].startswith(b"220 "))
        assert greeted == 700, "%d of 700 idle clients greeted" % greeted
    finally:
        for s in socks:
            s.close()
    assert swaks(port).rc == 0


def test_check_warns_when_max_connections_exceeds_the_hard_limit(workdir):
    d = workdir / "conf.d"
    d.mkdir()
    for maxc, warns in (("5000", True), ("2000", False)):
        (d / "t.conf").write_text("[global]\nworkers = 1\nmax_connections = %s\n\n[mx]\n"
                                  "listen = 127.0.0.1:20001\nupstream = 127.0.0.1:20002\n" % maxc)
        r = subprocess.run(["prlimit", "--nofile=1024:4096", "--", str(mailshim_binary()),
                            "-t", "-c", str(d)], capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        assert bool(re.search(r"t\.conf:3: warning: max_connections = %s cannot be met: the "
                              r"hard limit of 4096" % maxc, r.stderr)) == warns, r.stderr


# --------------------------------------------------------------------------
# SIGTERM: stop accepting at once, let sessions finish within shutdown_grace.

@pytest.mark.parametrize("nworkers", ["1", "2"])
def test_sigterm_drains_and_exits_zero(make_shim, smtp_sink, ports, nworkers):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": nworkers, "helo_name": "shim.test",
                                 "shutdown_grace": "10s"},
                      "mx": service(port, sink.port)})
    live = SmtpConn(port)
    assert live.reply()[0] == 220
    assert live.cmd("EHLO live.test")[0] == 250
    assert live.cmd("MAIL FROM:<a@client.test>")[0] == 250
    shim.proc.signal(signal.SIGTERM)
    # No new client is accepted once the listeners are closed.
    wait_until(lambda: not listening_now(port), 5, "the listener to close")
    assert live.cmd("RCPT TO:<b@legacy.test>")[0] == 250
    assert live.cmd("DATA")[0] == 354
    live.send(b"Subject: during stop\r\n\r\nbody\r\n.\r\n")
    assert live.reply()[0] == 250
    assert live.cmd("QUIT")[0] == 221
    live.close()
    shim.stopped_rc = shim.proc.wait(5)
    assert shim.stopped_rc == 0
    assert sink.count() == 1


def test_sigterm_grace_bounds_a_silent_session(make_shim, smtp_sink, ports):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": "1", "helo_name": "shim.test",
                                 "shutdown_grace": "1s"},
                      "mx": service(port, sink.port)})
    idle = SmtpConn(port)
    assert idle.reply()[0] == 220
    t0 = time.monotonic()
    shim.proc.signal(signal.SIGTERM)
    rc = shim.stopped_rc = shim.proc.wait(10)
    assert rc == 0, rc
    assert time.monotonic() - t0 < 8
    assert "grace period over" in shim.stderr_text()
    idle.close()


def listening_now(port):
    s = socket.socket()
    s.settimeout(1)
    try:
        return s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        s.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_workers_auto_counts_the_cpus_it_may_use(make_shim, smtp_sink, ports):
    """workers = auto is one worker per CPU this process may run on (a
    cpuset, taskset, systemd's CPUAffinity=), not per CPU of the machine."""
    sink = smtp_sink()
    mine = os.sched_getaffinity(0)
    conf = {"global": {"workers": "auto", "helo_name": "shim.test"}}
    try:
        os.sched_setaffinity(0, {min(mine)})       # inherited by the shim
        one = make_shim(dict(conf, mx=service(ports.get(), sink.port)))
    finally:
        os.sched_setaffinity(0, mine)
    wait_until(lambda: len(worker_pids(one)) == 1, 5, "one worker")
    time.sleep(0.5)
    assert len(worker_pids(one)) == 1
    port = ports.get()
    two = make_shim(dict(conf, mx=service(port, sink.port)))
    wait_until(lambda: len(worker_pids(two)) == min(len(mine), 64), 5, "a worker per CPU")
    assert swaks(port, quit_after=None).rc == 0
