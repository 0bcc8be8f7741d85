"""What the integration tests need of the tools they drive, checked once
before any test runs: a tool that is missing, or present without the
ability a test relies on (swaks without TLS, for one: its TLS comes from
a package it only recommends), fails the run with one line that names the
package, instead of a scatter of confusing test failures."""

import os
import shutil
import subprocess

PYTHON = "/usr/bin/python3"


def _run(argv):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    return r.returncode, r.stdout + r.stderr


def _swaks_tls():
    _, out = _run(["swaks", "--support"])
    return out is not None and "=== TLS supported" in out


def _swaks_ipv6():
    _, out = _run(["swaks", "--support"])
    return out is not None and "=== IPv6 supported" in out


def _aiosmtpd():
    rc, _ = _run([PYTHON, "-c", "import aiosmtpd.controller, aiosmtpd.handlers"])
    return rc == 0


def _openssl_starttls():
    rc, out = _run(["openssl", "s_client", "-help"])
    return out is not None and "-starttls" in out


def _which(name):
    return lambda: shutil.which(name) is not None or os.access(name, os.X_OK)


# (what, check, Debian package that provides it)
CHECKS = [
    ("swaks", _which("swaks"), "swaks"),
    ("swaks with TLS (Net::SSLeay)", _swaks_tls, "libnet-ssleay-perl"),
    ("swaks with IPv6 (IO::Socket::INET6)", _swaks_ipv6, "libio-socket-inet6-perl"),
    ("openssl s_client -starttls", _openssl_starttls, "openssl"),
    ("smtp-sink", _which("/usr/sbin/smtp-sink"), "postfix"),
    ("postfix", _which("/usr/sbin/postfix"), "postfix"),
    ("aiosmtpd for " + PYTHON, _aiosmtpd, "python3-aiosmtpd"),
    ("haproxy", _which("/usr/sbin/haproxy"), "haproxy"),
    ("testssl", _which("testssl"), "testssl.sh"),
    ("valgrind", _which("valgrind"), "valgrind"),
    ("prlimit", _which("prlimit"), "util-linux"),
    ("ss", _which("ss"), "iproute2"),
]


def missing():
    """One line per tool that cannot do what the tests need."""
    return ["%s (Debian package %s)" % (what, pkg)
            for what, ok, pkg in CHECKS if not ok()]
