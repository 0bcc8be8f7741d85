"""mailshim -t: nothing silently ignored, nothing that hangs. Every file a
key names must be a regular, readable file that parses (certificate chain,
key, CA bundle) and each certificate must match its key; a security key
that the chosen mode ignores is refused. Every message names the file and
line of the key at fault."""

import os
import re
import subprocess
import time

import pytest

from harness import mailshim_binary, run_shim


def conf(workdir, text):
    d = workdir / "conf.d"
    d.mkdir(exist_ok=True)
    (d / "test.conf").write_text(text)
    return d


def check(workdir, text, timeout=10):
    d = conf(workdir, text)
    t0 = time.monotonic()
    r = run_shim(["-t", "-c", d], timeout=timeout)
    return r, time.monotonic() - t0


HEAD = "[global]\nworkers = 1\n\n[s]\nlisten = 127.0.0.1:20001\nupstream = 127.0.0.1:20002\n"
# Lines 1-6 are HEAD; the keys of a case start at line 7.


def implicit(cert, key):
    return HEAD + "listen_tls = implicit\nlisten_cert = %s\nlisten_key = %s\n" % (cert, key)


def errors(r):
    """{line: message} of the FILE:LINE: lines for test.conf."""
    return {int(n): m for n, m in re.findall(r"(?m)^\S*test\.conf:(\d+): (.*)$", r.stderr)}


def assert_refused(r, line, *words):
    assert r.returncode == 1, r.stdout + r.stderr
    errs = errors(r)
    assert line in errs, r.stderr
    for w in words:
        assert w in errs[line], r.stderr


def test_fifo_as_certificate_does_not_hang(workdir, pki):
    fifo = workdir / "cert.fifo"
    os.mkfifo(fifo)
    r, took = check(workdir, implicit(fifo, pki.server_key))
    assert took < 5, "mailshim -t took %.1fs" % took
    assert_refused(r, 8, "listen_cert", str(fifo), "not a regular file")


def test_fifo_as_key_and_ca_do_not_hang(workdir, pki):
    fifo = workdir / "key.fifo"
    os.mkfifo(fifo)
    text = implicit(pki.server, fifo) + ("upstream_tls = implicit\nupstream_ca = %s\n" % fifo)
    r, took = check(workdir, text)
    assert took < 5, "mailshim -t took %.1fs" % took
    assert_refused(r, 9, "listen_key", "not a regular file")
    assert_refused(r, 11, "upstream_ca", "not a regular file")


def test_missing_file(workdir, pki):
    r, _ = check(workdir, implicit(workdir / "nope.pem", pki.server_key))
    assert_refused(r, 8, "listen_cert", "nope.pem", "No such file")


def test_directory_is_not_a_file(workdir, pki):
    r, _ = check(workdir, implicit(pki.server, workdir))
    assert_refused(r, 9, "listen_key", "not a regular file")


def test_unreadable_file(workdir, pki, pubdir):
    """A key only root may read, checked by a user who is not root."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    d = pubdir()
    cert, key = d / "server.pem", d / "root-only.key"
    cert.write_bytes(open(pki.server, "rb").read())
    os.chmod(cert, 0o644)
    key.write_bytes(open(pki.server_key, "rb").read())
    os.chmod(key, 0o600)
    cdir = d / "conf.d"
    cdir.mkdir()
    os.chmod(cdir, 0o755)
    (cdir / "test.conf").write_text(implicit(cert, key))
    os.chmod(cdir / "test.conf", 0o644)
    r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        str(mailshim_binary()), "-t", "-c", str(cdir)],
                       capture_output=True, text=True, timeout=10)
    assert_refused(r, 9, "listen_key", "Permission denied")


def test_garbage_pem(workdir, pki):
    bad = workdir / "garbage.pem"
    bad.write_text("this is not a certificate\n")
    r, _ = check(workdir, implicit(bad, pki.server_key))
    assert_refused(r, 8, "listen_cert", "no PEM certificate")


def test_truncated_pem(workdir, pki):
    text = open(pki.server).read()
    bad = workdir / "truncated.pem"
    bad.write_text(text[:len(text) // 2] + "\n-----END CERTIFICATE-----\n")
    r, _ = check(workdir, implicit(bad, pki.server_key))
    assert_refused(r, 8, "listen_cert")


def test_garbage_key(workdir, pki):
    bad = workdir / "garbage.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    r, _ = check(workdir, implicit(pki.server, bad))
    assert_refused(r, 9, "listen_key", "private key")


def test_certificate_not_matching_key(workdir, pki):
    r, _ = check(workdir, implicit(pki.server, pki.upstream_key))
    assert_refused(r, 9, "listen_key", "does not match")


def test_second_pair_mismatch_names_its_own_line(workdir, pki):
    text = implicit(pki.server, pki.server_key) + \
        "listen_cert = %s\nlisten_key = %s\n" % (pki.upstream, pki.client_key)
    r, _ = check(workdir, text)
    assert_refused(r, 11, "listen_key", "does not match")
    assert set(errors(r)) == {11}, r.stderr


def test_upstream_client_certificate_not_matching_key(workdir, pki):
    text = HEAD + ("upstream_tls = implicit\nupstream_ca = %s\nupstream_name = legacy.test\n"
                   "upstream_cert = %s\nupstream_key = %s\n"
                   % (pki.ca, pki.client, pki.server_key))
    r, _ = check(workdir, text)
    assert_refused(r, 11, "upstream_key", "does not match")


def test_garbage_ca_bundles(workdir, pki):
    bad = workdir / "ca.txt"
    bad.write_text("nothing\n")
    text = implicit(pki.server, pki.server_key) + \
        "listen_client_ca = %s\nupstream_tls = implicit\nupstream_ca = %s\n" % (bad, bad)
    r, _ = check(workdir, text)
    assert_refused(r, 10, "listen_client_ca", "no PEM certificate")
    assert_refused(r, 12, "upstream_ca", "no PEM certificate")


def test_every_bad_file_is_reported(workdir, pki):
    text = implicit(workdir / "a.pem", pki.server_key) + \
        "upstream_tls = implicit\nupstream_ca = %s\n" % (workdir / "b.pem")
    r, _ = check(workdir, text)
    assert {8, 11} <= set(errors(r)), r.stderr


def test_good_files_pass(workdir, pki):
    text = implicit(pki.server, pki.server_key) + \
        ("listen_cert = %s\nlisten_client_ca = %s\nupstream_tls = implicit\n"
         "upstream_ca = %s\nupstream_name = legacy.test\nupstream_cert = %s\n"
         "upstream_key = %s\n" % (pki.upstream_chain, pki.ca, pki.ca, pki.client, pki.client_key))
    r, _ = check(workdir, text)
    assert r.returncode == 0, r.stderr


# key lines, the line at fault (the key itself, not the section), words
IGNORED = {
    "pin-plain": ("upstream_pin = sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n",
                  7, "upstream_tls = plain"),
    "ca-plain": ("upstream_ca = /etc/ssl/certs/ca-certificates.crt\n", 7, "upstream_tls = plain"),
    "verify-plain": ("upstream_verify = verify\n", 7, "upstream_tls = plain"),
    "name-plain": ("upstream_name = mx.test\n", 7, "upstream_tls = plain"),
    "cert-plain": ("upstream_cert = /x.pem\n", 7, "upstream_tls = plain"),
    "key-plain": ("upstream_cert = /x.pem\nupstream_key = /x.key\n", 8, "upstream_tls = plain"),
    "ciphers-plain": ("upstream_ciphers = ECDHE+AESGCM\n", 7, "upstream_tls = plain"),
    "min-version-plain": ("upstream_min_version = TLSv1.3\n", 7, "upstream_tls = plain"),
    "client-ca-plain": ("listen_client_ca = /ca.pem\n", 7, "listen_tls = plain"),
    "plain-from-plain": ("listen_plain_from = any\n", 7, "listen_tls = plain"),
    "listen-ciphers-plain": ("listen_ciphers = ECDHE+AESGCM\n", 7, "listen_tls = plain"),
    "listen-min-plain": ("listen_min_version = TLSv1.3\n", 7, "listen_tls = plain"),
    "listen-cert-plain": ("listen_tls = plain\nlisten_cert = /x.pem\n", 8, "listen_tls = plain"),
    "plain-from-implicit": ("listen_tls = implicit\nlisten_cert = CERT\nlisten_key = KEY\n"
                            "listen_plain_from = 127.0.0.0/8\n", 10, "listen_tls = implicit"),
    "ca-encrypt": ("upstream_tls = implicit\nupstream_verify = encrypt\n"
                   "upstream_ca = /etc/ssl/certs/ca-certificates.crt\n", 9,
                   "upstream_verify = encrypt"),
    "name-encrypt": ("upstream_tls = implicit\nupstream_verify = encrypt\n"
                     "upstream_name = mx.test\n", 9, "upstream_verify = encrypt"),
    "ciphers-tls13": ("upstream_tls = implicit\nupstream_ca = CA\nupstream_min_version = TLSv1.3\n"
                      "upstream_ciphers = ECDHE+AESGCM\n", 10, "TLSv1.3"),
}


@pytest.mark.parametrize("case", sorted(IGNORED))
def test_ignored_key_is_refused(workdir, pki, case):
    keys, line, words = IGNORED[case]
    keys = keys.replace("CERT", pki.server).replace("KEY", pki.server_key).replace("CA", pki.ca)
    r, _ = check(workdir, HEAD + keys)
    assert_refused(r, line, "is set but", words)
    # Only the key at fault: never the section header.
    assert 4 not in errors(r), r.stderr


def test_ignored_check_also_refuses_a_reload_at_start(workdir, pki):
    """The same check runs on every load, not only -t: the shim refuses to start."""
    d = conf(workdir, HEAD + "upstream_pin = sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
    r = subprocess.run([str(mailshim_binary()), "-c", str(d)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1
    assert re.search(r"test\.conf:7: upstream_pin is set but", r.stderr), r.stderr


def test_global_tls_min_version_no_hop_takes(workdir):
    r, _ = check(workdir, "[global]\nworkers = 1\ntls_min_version = TLSv1.3\n\n"
                          "[s]\nlisten = 127.0.0.1:20001\nupstream = 127.0.0.1:20002\n")
    assert_refused(r, 3, "tls_min_version is set but no TLS hop takes it")


def test_unknown_user(workdir):
    r, _ = check(workdir, "[global]\nworkers = 1\nuser = no-such-user-here\n\n"
                          "[s]\nlisten = 127.0.0.1:20001\nupstream = 127.0.0.1:20002\n")
    assert_refused(r, 3, "does not exist")
