"""tls_ticket_keys: session tickets shared by several mailshim processes
(as on several machines) through one key file, in nginx's binary format
or haproxy's base64 lines; rotated by replacing the file and SIGHUP; a
ticket of a key the process lacks is a full handshake, never an error;
a bad file is refused by -t at the key's line."""

import base64
import os
import re
import signal

import pytest

from harness import Shim, run_shim, service, wait_until
from clients import s_client_session


def key(size):
    return os.urandom(size)


def write_binary(path, *keys):
    path.write_bytes(b"".join(keys))
    return path


def write_base64(path, *keys):
    path.write_text("".join(base64.b64encode(k).decode() + "\n" for k in keys))
    return path


def session(port, version, sess_out=None, sess_in=None):
    """One implicit-TLS session with openssl s_client (greeting, QUIT);
    returns 'New' or 'Reused' as s_client reports the handshake."""
    text = s_client_session(port, sess_out, sess_in, version)
    m = re.search(r"(?m)^(New|Reused), (TLSv1\.[23])", text)
    assert m, text[-2000:]
    assert m.group(2) == {"tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}[version], text[-2000:]
    if sess_out:
        assert os.path.getsize(sess_out) > 0, "no session saved"
    return m.group(1)


def conf(port, upstream, pki, keyfile):
    return {"global": dict(Shim.DEFAULT_GLOBAL, tls_ticket_keys=str(keyfile)),
            "sub": service(port, upstream, "implicit", pki=pki)}


def reload(shim):
    before = shim.stderr_text().count("configuration reloaded")
    shim.proc.signal(signal.SIGHUP)
    wait_until(lambda: shim.stderr_text().count("configuration reloaded") > before, 10,
               "the reload")


@pytest.fixture
def pair(make_shim, smtp_sink, ports, pki, workdir):
    """pair(keyfile) -> two mailshim processes, each with its own port,
    both reading keyfile."""
    sink = smtp_sink()

    def make(keyfile):
        a, b = ports.many(2)
        return (make_shim(conf(a, sink.port, pki, keyfile)), a,
                make_shim(conf(b, sink.port, pki, keyfile)), b)
    return make


FORMATS = {
    "binary48": lambda p: write_binary(p, key(48)),
    "binary80": lambda p: write_binary(p, key(80)),
    "base64-48": lambda p: write_base64(p, key(48)),
    "base64-80": lambda p: write_base64(p, key(80)),
}


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_ticket_of_one_process_resumes_on_the_other(pair, workdir, fmt, version):
    keyfile = FORMATS[fmt](workdir / "ticket.keys")
    _, a, _, b = pair(keyfile)
    sess = workdir / "sess.pem"
    assert session(a, version, sess_out=sess) == "New"
    assert session(b, version, sess_in=sess) == "Reused"
    assert session(a, version, sess_in=sess) == "Reused"


def test_processes_with_different_keys_do_full_handshakes(make_shim, smtp_sink, ports, pki,
                                                          workdir):
    sink = smtp_sink()
    a, b = ports.many(2)
    make_shim(conf(a, sink.port, pki, write_base64(workdir / "a.keys", key(80))))
    make_shim(conf(b, sink.port, pki, write_base64(workdir / "b.keys", key(80))))
    sess = workdir / "sess.pem"
    for version in ("tls1_2", "tls1_3"):
        assert session(a, version, sess_out=sess) == "New"
        assert session(b, version, sess_in=sess) == "New"
        assert session(a, version, sess_in=sess) == "Reused"


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
@pytest.mark.parametrize("fmt", ["base64", "binary"])
def test_rotation_by_replacing_the_file_and_sighup(pair, workdir, fmt, version):
    write = write_base64 if fmt == "base64" else write_binary
    old, new = key(80), key(80)
    keyfile = write(workdir / "ticket.keys", old)
    s1, a, s2, b = pair(keyfile)
    old_sess, new_sess = workdir / "old.pem", workdir / "new.pem"
    assert session(a, version, sess_out=old_sess) == "New"
    assert session(b, version, sess_in=old_sess) == "Reused"

    # The new key first, the old one second; only the first process reloads.
    write(keyfile, new, old)
    reload(s1)
    assert session(a, version, sess_in=old_sess) == "Reused"
    assert session(a, version, sess_out=new_sess) == "New"
    # The second still has only the old key: the new ticket means a full
    # handshake there, and the session goes on.
    assert session(b, version, sess_in=new_sess) == "New"

    # The old key retired: only the new one, on the second process too.
    write(keyfile, new)
    reload(s2)
    assert session(b, version, sess_in=new_sess) == "Reused"
    assert session(b, version, sess_in=old_sess) == "New"


def test_a_bad_file_refuses_the_reload(pair, workdir):
    keyfile = write_base64(workdir / "ticket.keys", key(48))
    s1, a, _, _ = pair(keyfile)
    sess = workdir / "sess.pem"
    assert session(a, "tls1_3", sess_out=sess) == "New"
    keyfile.write_text("not base64 at all!\n")
    before = s1.stderr_text().count("reload refused")
    s1.proc.signal(signal.SIGHUP)
    wait_until(lambda: s1.stderr_text().count("reload refused") > before, 10, "the refusal")
    assert re.search(r"tls_ticket_keys \S+: line 1: ", s1.stderr_text()), s1.stderr_text()
    # The keys in force stay.
    assert session(a, "tls1_3", sess_in=sess) == "Reused"


# --------------------------------------------------------------------------
# mailshim -t

def check(workdir, pki, value, tls="implicit"):
    d = workdir / "conf.d"
    d.mkdir(exist_ok=True)
    text = ("[global]\nworkers = 1\ntls_ticket_keys = %s\n\n[s]\nlisten = 127.0.0.1:20001\n"
            "upstream = 127.0.0.1:20002\nlisten_tls = %s\n" % (value, tls))
    if tls != "plain":
        text += "listen_cert = %s\nlisten_key = %s\n" % (pki.server, pki.server_key)
    (d / "test.conf").write_text(text)
    return run_shim(["-t", "-c", d])


def test_check_accepts_each_format(workdir, pki):
    for i, make in enumerate(FORMATS.values()):
        r = check(workdir, pki, make(workdir / ("k%d" % i)))
        assert r.returncode == 0, r.stderr
    several = write_binary(workdir / "three", key(80), key(80), key(80))
    assert check(workdir, pki, several).returncode == 0


@pytest.mark.parametrize("case,words", [
    ("missing", "cannot open"),
    ("directory", "not a regular file"),
    ("empty", "empty file"),
    ("short", "47 bytes"),
    ("two48", "96 bytes"),
    ("badb64", "line 2: not valid base64"),
    ("badsize", "line 1: the key is 32 bytes"),
])
def test_check_refuses_a_bad_file_at_the_keys_line(workdir, pki, case, words):
    p = workdir / "keys"
    if case == "directory":
        p.mkdir()
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "short":
        p.write_bytes(b"\x80" * 47)
    elif case == "two48":
        p.write_bytes(b"\x81" * 96)
    elif case == "badb64":
        p.write_text(base64.b64encode(key(48)).decode() + "\n%%%%\n")
    elif case == "badsize":
        p.write_text(base64.b64encode(key(32)).decode() + "\n")
    r = check(workdir, pki, p)
    assert r.returncode == 1, r.stderr
    m = re.search(r"^(\S+):(\d+): tls_ticket_keys (.*)$", r.stderr, re.M)
    assert m, r.stderr
    assert m.group(1).endswith("test.conf") and m.group(2) == "3", r.stderr
    assert words in m.group(3), r.stderr


def test_check_refuses_the_key_without_a_tls_listener(workdir, pki):
    r = check(workdir, pki, write_binary(workdir / "k", key(80)), tls="plain")
    assert r.returncode == 1
    assert re.search(r"test\.conf:3: tls_ticket_keys is set but no listener uses TLS",
                     r.stderr), r.stderr
