"""Fixtures of the integration tests: the real mailshim binary against real
peers (smtp-sink, aiosmtpd, a private Postfix) and hostile ones, all on
loopback ports 20000-32000, every process killed and reaped at teardown.

Run with Debian's interpreter (it sees python3-pytest and python3-aiosmtpd):

    MAILSHIM=$PWD/mailshim /usr/bin/python3 -m pytest -q tests/integration

The classes and functions behind them live in harness.py (processes,
ports, certificates, the shim), peers.py, clients.py and messages.py.
"""

import os
import shutil

import pytest

import tools
from harness import (HarnessError, Ports, Procs, Shim, make_pki, mailshim_binary,
                     public_dir)
from peers import Aiosmtpd, PrivatePostfix, RawServer, SmtpSink


def pytest_sessionstart(session):
    # Once, in the process that runs or dispatches the tests.
    if hasattr(session.config, "workerinput"):
        return
    gone = tools.missing()
    if gone:
        pytest.exit("the tests need tools this machine lacks: %s; run sh tests/deps.sh "
                    "as root" % "; ".join(gone), returncode=3)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "postfix: needs a private Postfix instance (root)")


@pytest.fixture(scope="session")
def ports():
    p = Ports()
    yield p
    p.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """The test PKI of tests/certs.sh, made once per session."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


@pytest.fixture
def procs(workdir):
    """Starts processes in the test's directory; kills and reaps them all."""
    p = Procs(workdir)
    yield p
    p.cleanup()


@pytest.fixture
def pubdir():
    """Factory of directories under /tmp reachable by nobody/postfix;
    removed at teardown."""
    made = []

    def make(prefix="mailshim-test-"):
        d = public_dir(prefix)
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def mailshim_path():
    path = mailshim_binary()
    if not os.access(path, os.X_OK):
        pytest.fail("no mailshim binary at %s (build it, or set MAILSHIM)" % path)
    return path


@pytest.fixture
def make_shim(procs, workdir, mailshim_path):
    """make_shim(conf, start=True) -> Shim. conf: {section: {key: value}}
    (a [global] with workers = 1 and helo_name = shim.test is added when
    missing) or INI text. At teardown each shim gets SIGTERM and must exit
    cleanly with no sanitizer report, or the test fails."""
    shims = []

    def make(conf=None, start=True, **kw):
        d = workdir / ("shim%d" % len(shims))
        s = Shim(procs, d, mailshim_path)
        shims.append(s)
        if conf is not None:
            s.write_conf(conf)
        if start:
            s.start(**kw)
        return s

    yield make
    problems = []
    for s in shims:
        try:
            s.stop()
        except HarnessError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def smtp_sink(procs, ports, pubdir):
    """smtp_sink(port=None, dumpdir=None) -> SmtpSink (Postfix's smtp-sink
    on 127.0.0.1, one dump file per message)."""
    def make(port=None, dumpdir=None, extra_args=()):
        return SmtpSink(procs, port or ports.get(), dumpdir or pubdir("mailshim-sink-"),
                        extra_args)
    return make


@pytest.fixture
def aiosmtpd(procs, ports, pki, workdir):
    """aiosmtpd(mode='plain'|'implicit'|'starttls', port=None, cert=, key=,
    require_tls=True) -> Aiosmtpd storing exact message bytes. The default
    certificate is upstream.pem (legacy.test, by the test CA)."""
    count = [0]

    def make(mode="plain", port=None, cert=None, key=None, require_tls=True, **kw):
        count[0] += 1
        return Aiosmtpd(procs, port or ports.get(), workdir / ("aiosmtpd%d" % count[0]),
                        mode, cert or pki.upstream, key or pki.upstream_key,
                        require_tls, **kw)
    return make


@pytest.fixture
def postfix(procs, ports, pki, pubdir):
    """postfix(cert=upstream.pem) -> a started PrivatePostfix; always
    stopped at teardown."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    made = []

    def make(cert=None, key=None):
        pf = PrivatePostfix(procs, ports, cert or pki.upstream, key or pki.upstream_key,
                            pubdir("mailshim-postfix-"))
        made.append(pf)
        return pf.start()

    yield make
    for pf in made:
        pf.stop()


@pytest.fixture
def raw_server(ports):
    """raw_server(handler, port=None, **kw) -> RawServer, closed at teardown."""
    servers = []

    def make(handler, port=None, **kw):
        s = RawServer(port or ports.get(), handler, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def pytest_report_header(config):
    return "mailshim: %s" % mailshim_binary()


# Hostile peers (hostile.py). Both request make_shim so that they are torn
# down before it: a session left open would hold mailshim in its SIGTERM
# grace period.

@pytest.fixture
def fake_upstream(make_shim, ports, pki):
    """fake_upstream(script, tls=None, port=None, rcvbuf=None) -> a scripted
    FakeUpstream (upstream.pem of the test PKI for TLS); closed at teardown."""
    from hostile import FakeUpstream
    made = []

    def make(script, tls=None, port=None, **kw):
        up = FakeUpstream(port or ports.get(), script, tls=tls, cert=pki.upstream,
                          key=pki.upstream_key, **kw)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


@pytest.fixture
def fake_client(make_shim, pki):
    """fake_client(port, tls=None) -> a scripted FakeClient trusting the
    test CA; closed at teardown."""
    from hostile import FakeClient
    made = []

    def make(port, tls=None, **kw):
        kw.setdefault("cafile", pki.ca)
        c = FakeClient(port, tls=tls, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
