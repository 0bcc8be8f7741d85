"""Clients for the integration tests: swaks, openssl s_client, a raw SMTP
connection and Python's smtplib."""

import os
import re
import socket
import ssl
import smtplib
import subprocess
import tempfile
import threading
import time

from harness import CRLF, HarnessError

# --------------------------------------------------------------------------
# Clients

def dot_stuff(msg):
    """msg (CRLF lines) as sent inside DATA, without the final '.' line."""
    return re.sub(rb"(?m)^\.", b"..", msg)


def expected_received(msg):
    """What a server stores when smtplib sends msg: smtplib dot-stuffs and
    appends CRLF when msg does not end with one (the server unstuffs)."""
    return msg if msg.endswith(CRLF) else msg + CRLF


class SwaksResult:
    def __init__(self, rc, out):
        self.rc = rc
        self.out = out

    def replies(self):
        """Lines the server sent (swaks marks them with '<-' or '<~')."""
        return [l[4:] for l in self.out.splitlines() if l.startswith(("<- ", "<~ ", "<** ", "<~* "))]

    def __repr__(self):
        return "SwaksResult(rc=%d)\n%s" % (self.rc, self.out)


def swaks(port, tls=None, data=None, workdir=None, from_="sender@client.test",
          to="rcpt@legacy.test", helo="client.test", ca=None, protocol=None,
          quit_after=None, timeout=60, extra=(), server="127.0.0.1"):
    """Run swaks against server:port. tls: None, 'starttls' or 'implicit'.
    data: the exact message bytes (CRLF lines); they are written dot-stuffed
    and dot-terminated to a file and sent with --no-data-fixup, so swaks
    neither expands %TOKENS%/\\n nor rewrites headers or line ends: the
    receiver gets expected_received(data). ca: verify the server against it.
    """
    argv = ["swaks", "--server", "%s:%d" % (server, port), "--from", from_, "--to", to,
            "--helo", helo, "--timeout", "%ds" % timeout]
    if tls == "starttls":
        argv.append("--tls")
    elif tls == "implicit":
        argv.append("--tlsc")
    elif tls is not None:
        raise ValueError(tls)
    if ca:
        argv += ["--tls-verify", "--tls-ca-path", ca]
    if protocol:
        argv += ["--tls-protocol", protocol]
    if quit_after:
        argv += ["--quit-after", quit_after]
    tmp = None
    if data is not None:
        fd, tmp = tempfile.mkstemp(prefix="swaks-", suffix=".eml", dir=workdir)
        with os.fdopen(fd, "wb") as f:
            f.write(dot_stuff(expected_received(data)) + b".")
        argv += ["--data", "@" + tmp, "--no-data-fixup", "--suppress-data"]
    argv += list(extra)
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout + 30)
    finally:
        if tmp:
            os.unlink(tmp)
    return SwaksResult(r.returncode, r.stdout.decode("utf-8", "replace"))


class SClientResult:
    def __init__(self, rc, out, err):
        self.rc = rc
        self.out = out
        self.err = err
        m = re.search(r"^Protocol version: (\S+)", err, re.M)
        self.protocol = m.group(1) if m else None
        m = re.search(r"^Ciphersuite: (\S+)", err, re.M)
        self.cipher = m.group(1) if m else None
        m = re.search(r"^Verification: (.*)$", err, re.M)
        self.verification = m.group(1).strip() if m else None

    @property
    def handshake_ok(self):
        return self.protocol is not None

    def lines(self):
        return self.out.splitlines()

    def __repr__(self):
        return "SClientResult(rc=%s protocol=%s)\nstdout:\n%s\nstderr:\n%s" % (
            self.rc, self.protocol, self.out, self.err)


def s_client(port, script=(), starttls=False, version=None, cafile=None, ciphers=None,
             ciphersuites=None, servername=None, delay=0.2, timeout=15, wait_close=True,
             until=None, extra=()):
    """openssl s_client to 127.0.0.1:port feeding an SMTP dialogue.

    script: lines (str or bytes, CRLF added when missing) written one by one
    with delay seconds in between; then stdin is closed and, with
    -ign_eof, the transcript runs until the server closes (or timeout).
    version: 'tls1', 'tls1_1', 'tls1_2', 'tls1_3'; for TLS 1.0/1.1 the
    client also lowers its own security level so that it really offers
    them. -brief puts the protocol, cipher and verification on stderr;
    -nocommands keeps lines starting with Q/R/k from being taken as
    s_client commands. until: a regular expression; once the server's
    output matches it (e.g. r"^221 " after QUIT) the client is stopped
    instead of waiting for the server to close."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-brief",
            "-nocommands", "-ign_eof"]
    if starttls:
        argv += ["-starttls", "smtp", "-name", "client.test"]
    if version:
        argv.append("-" + version)
        if version in ("tls1", "tls1_1") and not ciphers:
            ciphers = "DEFAULT@SECLEVEL=0"
    if ciphers:
        argv += ["-cipher", ciphers]
    if ciphersuites:
        argv += ["-ciphersuites", ciphersuites]
    if cafile:
        argv += ["-CAfile", cafile, "-verify_return_error"]
    if servername:
        argv += ["-servername", servername]
    argv += list(extra)
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = [], []
    seen = threading.Event()
    pattern = re.compile(until.encode(), re.M) if until else None

    def read(stream, acc):
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                return
            acc.append(chunk)
            if pattern is not None and pattern.search(b"".join(acc)):
                seen.set()

    readers = [threading.Thread(target=read, args=(s, acc), daemon=True)
               for s, acc in ((p.stdout, out), (p.stderr, err))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        time.sleep(delay)
        for line in script:
            if p.poll() is not None:
                break
            if isinstance(line, str):
                line = line.encode()
            if not line.endswith(CRLF):
                line += CRLF
            p.stdin.write(line)
            p.stdin.flush()
            time.sleep(delay)
        p.stdin.close()
    except BrokenPipeError:
        pass
    if pattern is not None:
        while p.poll() is None and not seen.is_set() and time.monotonic() < deadline:
            seen.wait(0.05)
        wait_close = False
    try:
        p.wait(max(0.1, deadline - time.monotonic()) if wait_close else delay)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for t in readers:
        t.join(5)
    return SClientResult(p.returncode, b"".join(out).decode("utf-8", "replace"),
                         b"".join(err).decode("utf-8", "replace"))


def s_client_session(port, sess_out=None, sess_in=None, version=None, cert=None,
                     key=None, must_end=True, servername="shim.test"):
    """One implicit-TLS session with openssl s_client: greeting, QUIT (after
    a moment, so TLS 1.3 tickets arrive first). Returns s_client's output,
    which says 'New' or 'Reused' for the handshake. version: 'tls1_2'...;
    cert, key: a client certificate; must_end=False: a session the shim may
    refuse (no 221) returns its output too; servername: the SNI."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            servername, "-ign_eof", "-nocommands"]
    if version:
        argv.append("-" + version)
    if cert:
        argv += ["-cert", str(cert), "-key", str(key)]
    if sess_out:
        argv += ["-sess_out", str(sess_out)]
    if sess_in:
        argv += ["-sess_in", str(sess_in)]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + 10
    os.set_blocking(p.stdout.fileno(), False)
    sent = False
    while time.monotonic() < deadline and p.poll() is None:
        try:
            chunk = p.stdout.read() or b""
        except BlockingIOError:
            chunk = b""
        out += chunk
        # s_client prints a TLS 1.3 ticket's dump as it comes, so the
        # greeting may stand inside it, not at a line start.
        if not sent and re.search(rb"220 \S", out):
            time.sleep(0.1)          # let TLS 1.3 tickets arrive before QUIT
            p.stdin.write(b"QUIT\r\n")
            p.stdin.flush()
            sent = True
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
    p.wait()
    try:
        out += p.stdout.read() or b""
    except (BlockingIOError, ValueError):
        pass
    text = out.decode("utf-8", "replace")
    if must_end and "221" not in text:
        raise HarnessError("s_client session did not end with 221:\n" + text[-2000:])
    return text


class SmtpConn:
    """A hand-driven SMTP client connection (plain, or implicit TLS) for
    tests that need to see single replies, EOF and timing."""

    def __init__(self, port, tls=False, cafile=None, server_hostname="shim.test",
                 timeout=10.0, context=None, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.local = self.sock.getsockname()
        if tls:
            ctx = context or (client_context(cafile) if cafile else client_context(verify=False))
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""
        self.eof = False

    @property
    def tls_version(self):
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return data

    def reply(self, timeout=10.0):
        """(code, [lines]) of the next reply; HarnessError on EOF/timeout."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                if self.eof or time.monotonic() >= deadline:
                    raise HarnessError("no complete reply (eof=%s) after %r" % (self.eof, lines))
                try:
                    self._fill(deadline)
                except socket.timeout:
                    pass
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]) if text[:3].isdigit() else 0, lines

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line, timeout=10.0):
        self.send(line + "\r\n")
        return self.reply(timeout)

    def read_until_closed(self, timeout):
        """Everything up to EOF; (data, closed) with closed False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            try:
                self._fill(deadline)
            except socket.timeout:
                pass
        data, self.buf = self.buf, b""
        return data, self.eof

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def client_context(cafile=None, verify=True, minimum=None, maximum=None):
    """An ssl.SSLContext for test clients trusting the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def smtp_send(port, msg, mode="plain", cafile=None, from_="sender@client.test",
              rcpts=("rcpt@legacy.test",), helo="client.test", timeout=60,
              server_hostname="shim.test"):
    """Send msg (exact bytes) with smtplib; mode plain|implicit|starttls.
    Returns the (code, text) of the reply to the end of DATA. smtplib
    dot-stuffs, and appends CRLF when msg lacks one: the server gets
    expected_received(msg). BODY=8BITMIME is announced when offered."""
    ctx = client_context(cafile) if cafile else client_context(verify=False)
    if mode == "implicit":
        # smtplib would check the certificate against the IP it connects to;
        # check the name the tests mean instead.
        s = _NamedSMTP_SSL(local_hostname=helo, timeout=timeout, context=ctx)
        s.server_hostname = server_hostname
        s.connect("127.0.0.1", port)
    else:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout)
    try:
        s.ehlo()
        if mode == "starttls":
            s.starttls(context=ctx)
            s.ehlo()
        opts = ["BODY=8BITMIME"] if s.has_extn("8bitmime") else []
        code, text = _send_data(s, from_, list(rcpts), msg, opts)
        try:
            s.quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            pass
        return code, text
    finally:
        s.close()


class _NamedSMTP_SSL(smtplib.SMTP_SSL):
    server_hostname = None

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self.server_hostname)


def _send_data(s, from_, rcpts, msg, opts):
    code, resp = s.mail(from_, opts)
    if code != 250:
        return code, resp.decode("latin-1")
    for r in rcpts:
        code, resp = s.rcpt(r)
        if code not in (250, 251):
            return code, resp.decode("latin-1")
    code, resp = s.data(msg)
    return code, resp.decode("latin-1")
