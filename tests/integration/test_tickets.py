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


def try_session(port, version, sess_in=None, sess_out=None, cert=None, key=None):
    """'New', 'Reused' or None (no handshake finished) for one s_client
    session that the shim may refuse."""
    text = s_client_session(port, sess_out, sess_in, version, cert, key, must_end=False)
    m = re.search(r"(?m)^(New|Reused), TLSv1\.[23]", text)
    return (m.group(1) if m else None), text


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_a_session_resumes_only_where_it_was_checked(make_shim, smtp_sink, ports, pki,
                                                     workdir, version):
    """A ticket (whose keys every service shares and reloads keep) made
    where no client certificate was asked, or under other client CAs, is a
    full handshake where one is required, so the certificate is asked for
    and checked; within one service, and across a reload that keeps its
    CAs, tickets go on resuming."""
    sink = smtp_sink()
    a, b, c = ports.many(3)
    cfg = {"a": service(a, sink.port, "implicit", pki=pki),
           "b": service(b, sink.port, "implicit", pki=pki, listen_client_ca=pki.ca),
           "c": service(c, sink.port, "implicit", pki=pki, listen_client_ca=pki.other_ca)}
    shim = make_shim(cfg)
    good = (pki.client, pki.client_key)
    other = (pki.otherca_client, pki.otherca_client_key)
    s_a, s_b, s_c = (workdir / ("%s.sess" % n) for n in "abc")
    assert try_session(a, version, sess_out=s_a)[0] == "New"
    assert try_session(b, version, sess_out=s_b, cert=good[0], key=good[1])[0] == "New"
    assert try_session(c, version, sess_out=s_c, cert=other[0], key=other[1])[0] == "New"
    assert shim.wait_log(count=3) and all(d["result"] == "ok" for d in shim.log_lines())

    # The same service, the same certificate: resumed.
    got, text = try_session(b, version, sess_in=s_b, cert=good[0], key=good[1])
    assert got == "Reused", text[-2000:]
    # Another service's sessions: a full handshake, and the certificate
    # (none, or one of another CA) refused.
    for sess, cert in ((s_a, (None, None)), (s_c, other)):
        got, text = try_session(b, version, sess_in=sess, cert=cert[0], key=cert[1])
        assert got != "Reused", text[-2000:]
    lines = shim.wait_log(count=6)
    assert [d["result"] for d in lines[3:]] == ["ok", "refused", "refused"], \
        [d["_line"] for d in lines]
    assert all("client_cert" not in d for d in lines[4:]), [d["_line"] for d in lines]

    # a asks for a certificate after a reload: its old session no longer
    # resumes there; b's, its CAs unchanged, still does.
    cfg["a"] = service(a, sink.port, "implicit", pki=pki, listen_client_ca=pki.ca)
    shim.write_conf(cfg)
    reload(shim)
    got, text = try_session(a, version, sess_in=s_a)
    assert got != "Reused", text[-2000:]
    got, text = try_session(b, version, sess_in=s_b, cert=good[0], key=good[1])
    assert got == "Reused", text[-2000:]
    lines = shim.wait_log(count=8)
    assert [d["result"] for d in lines[6:]] == ["refused", "ok"], [d["_line"] for d in lines]


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_a_session_resumes_only_under_its_certificate(make_shim, smtp_sink, ports, pki,
                                                      workdir, version):
    """RFC 6066 3: a session made under one name (the certificate SNI
    picked) is not resumed under another; names that pick the same
    certificate (the default one) share its sessions."""
    sink = smtp_sink()
    port = ports.get()
    cfg = service(port, sink.port, "implicit", pki=pki)
    make_shim("[global]\nworkers = 1\nhelo_name = shim.test\n\n[sni]\n" +
              "".join("%s = %s\n" % kv for kv in cfg.items()) +
              "listen_cert = %s\nlisten_key = %s\n" % (pki.alt, pki.alt_key))
    alt, default = workdir / "alt.sess", workdir / "default.sess"

    def run(name, **kw):
        text = s_client_session(port, version=version, servername=name, **kw)
        return re.search(r"(?m)^(New|Reused), TLSv1\.[23]", text).group(1), text

    assert run("alt.test", sess_out=alt)[0] == "New"
    assert run("alt.test", sess_in=alt)[0] == "Reused"
    got, text = run("shim.test", sess_in=alt)
    assert got == "New" and ("CN=server" in text or "CN = server" in text), text[-2000:]
    assert run("shim.test", sess_out=default)[0] == "New"
    assert run("unknown.test", sess_in=default)[0] == "Reused"
    assert run("alt.test", sess_in=default)[0] == "New"
