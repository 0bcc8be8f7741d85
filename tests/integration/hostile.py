"""Hostile peers: a scriptable fake upstream (FakeUpstream) and a scriptable
fake client (FakeClient) for the tests of what mailshim does when the
other side misbehaves. Both speak one small step language, live on
127.0.0.1 only, and bound every wait in time.

A script is a list of steps, run in order on one connection:

    send(data)                  write bytes (str is encoded as UTF-8)
    send_slowly(data, every)    write them one byte at a time, `every`
                                seconds apart, stopping if the peer goes
    send_bulk(data, stall, limit)  push bytes without blocking: stops when
                                all went out, when nothing moved for
                                `stall` s, or after `limit` s (peer.bulk_sent)
    expect_line(regex)          the next line (up to LF) matches regex
    expect_reply(regex)         the next SMTP reply (every line up to the
                                one without '-' after the code) matches
    read_until(regex)           read until what came so far matches
    expect_closed(timeout)      the peer closes (EOF or reset) in time
    starttls()                  TLS on the existing socket: server side for
                                an upstream, client side for a client
    sleep(s)
    shutdown_write()            half-close (FIN)
    close()
    reset()                     close with SO_LINGER 0: the peer gets a RST
    stall(limit)                neither read nor write any more; wait until
                                the peer hangs up or `limit` s pass
    serve_smtp(...)             (upstream) a small SMTP server, see below
    call(fn)                    fn(peer), for anything else

Every byte a peer receives is recorded with whether TLS carried it:
peer.plaintext(), peer.tls_bytes(), peer.all_bytes(). A step that fails
(no match, EOF, timeout) stops the script and is kept in peer.error with
the transcript; FakeClient.run() raises it, FakeUpstream keeps it for the
test to look at (FakeUpstream.check()).

serve_smtp() answers EHLO/HELO/MAIL/RCPT/NOOP/RSET/QUIT, DATA (strict
CRLF.CRLF, or `lenient_dot` like the servers SMTP smuggling aims at: any
of LF.LF, CR.CR, CRLF.LF, LF.CRLF ends a body), BDAT with CHUNKING, and
STARTTLS when offered; each complete message is appended to
peer.messages (DATA bodies dot-unstuffed, BDAT chunks joined).
"""

import re
import select
import socket
import ssl
import struct
import threading
import time

from peers import loopback_listener

CRLF = b"\r\n"
STEP_TIMEOUT = 10.0      # default bound of one step
SCRIPT_LIMIT = 120.0     # no script runs longer than this
RECV = 65536


class StepFailed(AssertionError):
    pass


def _b(data):
    return data.encode() if isinstance(data, str) else bytes(data)


def _rx(regex):
    if isinstance(regex, (bytes, str)):
        return re.compile(_b(regex), re.S | re.M)
    return regex


class Step:
    """One step of a script: a name, arguments, and the peer method
    _step_NAME that performs it."""

    def __init__(self, step, *args, **kw):
        self.name = step
        self.args = args
        self.kw = kw

    def __call__(self, peer):
        return getattr(peer, "_step_" + self.name)(*self.args, **self.kw)

    def __repr__(self):
        def short(a):
            r = repr(a)
            return r if len(r) <= 60 else r[:57] + "..."
        parts = [short(a) for a in self.args]
        parts += ["%s=%s" % (k, short(v)) for k, v in self.kw.items()]
        return "%s(%s)" % (self.name, ", ".join(parts))


def send(data):
    return Step("send", _b(data))


def send_slowly(data, every=1.0):
    return Step("send_slowly", _b(data), every)


def send_bulk(data, stall=3.0, limit=30.0):
    return Step("send_bulk", _b(data), stall, limit)


def expect_line(regex, timeout=STEP_TIMEOUT):
    return Step("expect_line", regex, timeout)


def expect_reply(regex=rb"^\d{3}", timeout=STEP_TIMEOUT):
    return Step("expect_reply", regex, timeout)


def read_until(regex, timeout=STEP_TIMEOUT):
    return Step("read_until", regex, timeout)


def expect_closed(timeout=STEP_TIMEOUT):
    return Step("expect_closed", timeout)


def starttls():
    return Step("starttls")


def sleep(seconds):
    return Step("sleep", seconds)


def shutdown_write():
    return Step("shutdown_write")


def close():
    return Step("close")


def reset():
    return Step("reset")


def stall(limit=30.0):
    return Step("stall", limit)


def call(fn):
    return Step("call", fn)


def serve_smtp(greet=True, name="fake.test", ehlo=("PIPELINING", "8BITMIME"),
               chunking=False, offer_starttls=False, lenient_dot=False, stop_after=None,
               limit=SCRIPT_LIMIT):
    """A small SMTP server for the rest of the session (or until a command
    matching stop_after has been answered, so that later steps can
    misbehave at that point; after DATA that is right after the 354, with
    the body still unread)."""
    return Step("serve_smtp", greet=greet, name=name, ehlo=tuple(ehlo), chunking=chunking,
                offer_starttls=offer_starttls, lenient_dot=lenient_dot,
                stop_after=stop_after, limit=limit)


def reset_socket(sock):
    """Close sock so that the peer gets a RST (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def client_hello(server_name="shim.test"):
    """The bytes of a real TLS ClientHello (Python's ssl, TLS 1.2-1.3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class Peer:
    """One connection driven by a script (the common part of FakeClient
    and of FakeUpstream's connections)."""

    role = "peer"

    def __init__(self, sock):
        self.sock = sock
        # Every send is its own segment: tests decide how bytes are cut.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.tls = False
        self.buf = b""
        self.received = []          # [(tls, bytes)]
        self.sent = []              # [(tls, bytes)]
        self.events = []            # [(monotonic, what)]
        self.eof = False            # the other side closed (or reset)
        self.eof_at = None
        self.closed = False         # we closed
        self.error = None
        self.bulk_sent = 0
        self.bulk_last_progress = None   # when send_bulk last got a byte out
        self.messages = []          # serve_smtp: complete messages
        self.commands = []          # serve_smtp: command lines seen
        self.steps_done = 0
        self.stopping = threading.Event()
        self.t0 = time.monotonic()

    # ---- records ----

    def note(self, what):
        self.events.append((time.monotonic(), what))

    def plaintext(self):
        """Everything received before TLS (or without it)."""
        return b"".join(b for tls, b in self.received if not tls)

    def tls_bytes(self):
        return b"".join(b for tls, b in self.received if tls)

    def all_bytes(self):
        return b"".join(b for _, b in self.received)

    def transcript(self, limit=3000):
        def show(b):
            r = repr(b)
            return r if len(r) <= limit else r[:limit] + "...(%d bytes)" % len(b)
        return "%s received %s\n%s events %s" % (
            self.role, show(self.all_bytes()), self.role,
            [(round(t - self.t0, 2), w) for t, w in self.events][-30:])

    # ---- low level I/O ----

    def _fill(self, deadline):
        """One recv into buf; False on EOF/reset. socket.timeout when the
        deadline passes."""
        if self.eof or self.closed:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(RECV)
        except socket.timeout:
            if self.stopping.is_set():
                raise StepFailed("stopped")
            return True
        except ssl.SSLWantReadError:
            return True
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self._got_eof("recv: %s" % e)
            return False
        if not data:
            self._got_eof("eof")
            return False
        self.received.append((self.tls, data))
        self.buf += data
        return True

    def _got_eof(self, how):
        if not self.eof:
            self.eof = True
            self.eof_at = time.monotonic()
            self.note("peer closed (%s)" % how)

    def _sendall(self, data):
        self.sock.settimeout(STEP_TIMEOUT)
        self.sock.sendall(data)
        self.sent.append((self.tls, data))

    def _line(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            try:
                if not self._fill(deadline):
                    raise StepFailed("EOF before a complete line; pending %r" % self.buf[:200])
            except socket.timeout:
                raise StepFailed("no complete line in %.1fs; pending %r" % (
                    timeout, self.buf[:200])) from None
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def reply(self, timeout=STEP_TIMEOUT):
        """The next SMTP reply, all its lines, as bytes."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            line = self._line(max(0.01, deadline - time.monotonic()))
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    # ---- steps ----

    def _step_send(self, data):
        try:
            self._sendall(data)
        except (OSError, ssl.SSLError) as e:
            raise StepFailed("send failed: %s" % e) from None

    def _step_send_slowly(self, data, every):
        deadline = time.monotonic() + SCRIPT_LIMIT
        n = 0
        for i in range(len(data)):
            if self.eof or time.monotonic() > deadline or self.stopping.is_set():
                break
            try:
                self._sendall(data[i:i + 1])
            except (OSError, ssl.SSLError) as e:
                self._got_eof("send: %s" % e)
                break
            n += 1
            # Notice a close while waiting, without reading the data.
            if self._hangup_within(every):
                self._got_eof("hangup")
                break
        self.note("sent %d of %d bytes slowly" % (n, len(data)))

    def _hangup_within(self, seconds):
        """Wait up to seconds; True if the other side hung up meanwhile
        (seen with poll, without reading anything)."""
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                return False
            if p.poll(min(left, 0.1) * 1000):
                return True

    def _step_send_bulk(self, data, stall_s, limit):
        sock = self.sock
        sock.setblocking(False)
        view = memoryview(data)
        sent, t0 = 0, time.monotonic()
        last = t0
        try:
            while sent < len(data):
                now = time.monotonic()
                if now - last > stall_s or now - t0 > limit or self.stopping.is_set():
                    break
                _, w, _ = select.select([], [sock], [], 0.1)
                if not w:
                    continue
                try:
                    n = sock.send(view[sent:sent + 16384])
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError) as e:
                    self._got_eof("send: %s" % e)
                    break
                if n:
                    sent += n
                    last = time.monotonic()
        finally:
            self.bulk_last_progress = last
            try:
                sock.setblocking(True)
            except OSError:
                pass
        self.bulk_sent = sent
        self.sent.append((self.tls, bytes(view[:sent])))
        self.note("bulk: %d of %d bytes" % (sent, len(data)))

    def _step_expect_line(self, regex, timeout):
        line = self._line(timeout)
        if not _rx(regex).search(line):
            raise StepFailed("line %r does not match %r" % (line[:300], regex))
        return line

    def _step_expect_reply(self, regex, timeout):
        r = self.reply(timeout)
        if not _rx(regex).search(r):
            raise StepFailed("reply %r does not match %r" % (r[:300], regex))
        return r

    def _step_read_until(self, regex, timeout):
        rx = _rx(regex)
        deadline = time.monotonic() + timeout
        while not rx.search(self.buf):
            try:
                if not self._fill(deadline):
                    raise StepFailed("EOF before %r; got %r" % (regex, self.buf[-300:]))
            except socket.timeout:
                raise StepFailed("no %r in %.1fs; got %r" % (regex, timeout,
                                                            self.buf[-300:])) from None
        m = rx.search(self.buf)
        got, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return got

    def _step_expect_closed(self, timeout):
        data, closed = self.read_until_closed(timeout)
        if not closed:
            raise StepFailed("still open after %.1fs" % timeout)
        return data

    def read_until_closed(self, timeout):
        """Read and keep everything until EOF; (bytes read, closed)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                if not self._fill(deadline):
                    break
            except socket.timeout:
                break
        data, self.buf = self.buf, b""
        return data, self.eof

    def _step_sleep(self, seconds):
        self.stopping.wait(seconds)

    def _step_shutdown_write(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise StepFailed("shutdown: %s" % e) from None

    def _step_close(self):
        self.close()

    def _step_reset(self):
        self.closed = True
        self.note("reset")
        reset_socket(self.sock)

    def _step_stall(self, limit):
        self.note("stalling")
        if self._hangup_within(limit):
            self._got_eof("hangup while stalled")

    def _step_call(self, fn):
        return fn(self)

    def _tls_context(self):
        raise NotImplementedError

    def _wrap(self):
        raise NotImplementedError

    def _step_starttls(self):
        if self.buf:
            self.note("discarding %d plaintext bytes at STARTTLS" % len(self.buf))
            self.buf = b""
        try:
            self.sock.settimeout(STEP_TIMEOUT)
            self.sock = self._wrap()
        except (OSError, ssl.SSLError) as e:
            raise StepFailed("TLS handshake failed: %s" % e) from None
        self.tls = True
        self.note("tls up: %s" % self.sock.version())

    # ---- the small SMTP server ----

    def _step_serve_smtp(self, greet, name, ehlo, chunking, offer_starttls, lenient_dot,
                         stop_after, limit):
        deadline = time.monotonic() + limit
        stop_rx = _rx(stop_after) if stop_after else None
        if greet:
            self._step_send(b"220 %s ESMTP fake\r\n" % name.encode())
        chunks = []
        while time.monotonic() < deadline and not self.stopping.is_set():
            try:
                line = self._line(max(0.01, deadline - time.monotonic()))
            except StepFailed:
                if self.eof or self.stopping.is_set():
                    return
                raise
            self.commands.append(line)
            verb = line.split(None, 1)[0].upper() if line.strip() else b""
            if verb in (b"EHLO", b"HELO"):
                opts = list(ehlo)
                if chunking:
                    opts.append("CHUNKING")
                if offer_starttls and not self.tls:
                    opts.append("STARTTLS")
                lines = [name] + opts if verb == b"EHLO" else [name]
                out = b"".join(b"250%s%s\r\n" % (b" " if i == len(lines) - 1 else b"-",
                                                  l.encode()) for i, l in enumerate(lines))
                self._step_send(out)
            elif verb in (b"MAIL", b"RCPT", b"NOOP"):
                self._step_send(b"250 2.0.0 Ok\r\n")
            elif verb == b"RSET":
                chunks = []
                self._step_send(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                self._step_send(b"221 2.0.0 Bye\r\n")
                self.close()
                return
            elif verb == b"STARTTLS" and offer_starttls and not self.tls:
                self._step_send(b"220 2.0.0 Ready to start TLS\r\n")
                self._step_starttls()
            elif verb == b"DATA":
                self._step_send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                if stop_rx is not None and stop_rx.search(line):
                    self.note("serve_smtp stops after %r" % line)
                    return
                msg = self._read_body(lenient_dot, deadline)
                if msg is None:
                    return
                self.messages.append(msg)
                self.note("message of %d bytes" % len(msg))
                self._step_send(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"BDAT" and chunking:
                m = re.match(rb"(?i)BDAT (\d+)( LAST)?\r?\n$", line)
                if not m:
                    self._step_send(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n")
                    continue
                data = self._read_exact(int(m.group(1)), deadline)
                if data is None:
                    return
                chunks.append(data)
                if m.group(2):
                    self.messages.append(b"".join(chunks))
                    self.note("message of %d bytes (BDAT)" % len(self.messages[-1]))
                    chunks = []
                self._step_send(b"250 2.0.0 %d octets received\r\n" % len(data))
            else:
                self._step_send(b"500 5.5.2 command not recognized\r\n")
            if stop_rx is not None and stop_rx.search(line):
                self.note("serve_smtp stops after %r" % line)
                return

    def _read_exact(self, n, deadline):
        while len(self.buf) < n:
            try:
                if not self._fill(deadline):
                    return None
            except socket.timeout:
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    _STRICT_END = re.compile(rb"\r\n\.\r\n")
    _LENIENT_END = re.compile(rb"(?:\r\n|\n|\r)\.(?:\r\n|\n|\r)")

    def _read_body(self, lenient, deadline):
        """The body up to its end (None if the connection ends first),
        unstuffed; what follows stays in buf as commands."""
        rx = self._LENIENT_END if lenient else self._STRICT_END
        while True:
            # The DATA line's CRLF is the line end before a first '.'.
            s = b"\r\n" + self.buf
            m = rx.search(s)
            if m:
                break
            try:
                if not self._fill(deadline):
                    return None
            except socket.timeout:
                return None
        term = m.group(0)
        body = s[2:m.start()] + term[:term.index(b".")] if m.start() >= 2 else b""
        self.buf = s[m.end():]
        return re.sub(rb"(?m)^\.", b"", body)

    # ---- end ----

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def run_steps(self, steps, limit=SCRIPT_LIMIT):
        deadline = time.monotonic() + limit
        for step in steps:
            if time.monotonic() > deadline:
                self.error = StepFailed("script over its %.0fs limit at %r" % (limit, step))
                return
            try:
                step(self)
            except StepFailed as e:
                self.error = StepFailed("%s step %d %r failed: %s\n%s" % (
                    self.role, self.steps_done + 1, step, e, self.transcript()))
                return
            self.steps_done += 1
            self.note("done %r" % step)


class FakeClient(Peer):
    """A client connection to 127.0.0.1:port. tls: None (plaintext, may
    later starttls()) or 'implicit' (handshake on connect)."""

    role = "client"

    def __init__(self, port, tls=None, cafile=None, server_hostname="shim.test",
                 timeout=STEP_TIMEOUT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        super().__init__(sock)
        self.local = sock.getsockname()
        self.cafile = cafile
        self.server_hostname = server_hostname
        self.thread = None
        if tls == "implicit":
            self.sock = self._wrap()
            self.tls = True
        elif tls is not None:
            raise ValueError(tls)

    def _tls_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.cafile:
            ctx.load_verify_locations(self.cafile)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _wrap(self):
        return self._tls_context().wrap_socket(self.sock, server_hostname=self.server_hostname)

    def run(self, steps, check=True, limit=SCRIPT_LIMIT):
        """Run steps now; a failed step raises (check) or is kept in error."""
        self.error = None
        self.run_steps(steps, limit)
        if check and self.error is not None:
            raise self.error
        return self

    def start(self, steps, limit=SCRIPT_LIMIT):
        """Run steps in a thread; join() waits for them."""
        self.thread = threading.Thread(target=self.run_steps, args=(steps, limit),
                                       daemon=True)
        self.thread.start()
        return self

    def join(self, timeout=SCRIPT_LIMIT):
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise StepFailed("client script still running after %.0fs" % timeout)
        return self

    # Short names for tests that drive a client by hand.
    def send(self, data):
        self._step_send(_b(data))

    def cmd(self, line, timeout=STEP_TIMEOUT):
        self.send(_b(line) + CRLF)
        return self.reply(timeout)

    def stop(self):
        self.stopping.set()
        self.close()
        if self.thread is not None:
            self.thread.join(5)


class UpstreamConn(Peer):
    role = "upstream"

    def __init__(self, sock, server, index):
        super().__init__(sock)
        self.server = server
        self.index = index
        self.stopping = server.stopping
        self.done = threading.Event()

    def _wrap(self):
        return self.server.context().wrap_socket(self.sock, server_side=True)


class FakeUpstream:
    """A scripted SMTP server on 127.0.0.1:port. script: a list of steps
    run on every connection, a list of such lists (connection i runs
    script[i], the last one for the rest), or a function(index) returning
    steps; the connection is closed when its script ends (stall() to keep
    it open). tls: None, or 'implicit' (handshake right after accept).
    rcvbuf: a small receive window, so that a stalled upstream pushes back
    at once."""

    def __init__(self, port, script, tls=None, cert=None, key=None, rcvbuf=None, backlog=64):
        self.port = port
        self.script = script
        self.tls = tls
        self.cert, self.key = cert, key
        self._ctx = None
        self.conns = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.sock = loopback_listener(port, backlog, rcvbuf)
        self.threads = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def context(self):
        if self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cert, self.key)
            self._ctx = ctx
        return self._ctx

    def _steps_for(self, index):
        s = self.script
        if callable(s):
            return s(index)
        if s and isinstance(s[0], (list, tuple)):
            return s[min(index, len(s) - 1)]
        return s or []

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                conn = UpstreamConn(sock, self, len(self.conns))
                self.conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            if self.tls == "implicit":
                try:
                    conn.sock.settimeout(STEP_TIMEOUT)
                    conn.sock = conn._wrap()
                    conn.tls = True
                except (OSError, ssl.SSLError) as e:
                    conn.error = StepFailed("implicit TLS handshake failed: %s" % e)
                    return
            conn.run_steps(self._steps_for(conn.index))
        except Exception as e:  # kept for the test, never lost
            conn.error = e
        finally:
            # A script that ends hangs up, as a real server would.
            conn.close()
            conn.done.set()

    # ---- what tests look at ----

    def wait_conns(self, n=1, timeout=STEP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise StepFailed("%d of %d upstream connections after %.1fs" % (
                    len(self.conns), n, timeout))
            time.sleep(0.02)
        return self.conns[:n]

    def wait_done(self, n=1, timeout=STEP_TIMEOUT):
        """Wait until the first n connections finished their scripts."""
        deadline = time.monotonic() + timeout
        for c in self.wait_conns(n, timeout):
            if not c.done.wait(max(0.01, deadline - time.monotonic())):
                raise StepFailed("upstream connection %d still running after %.1fs\n%s" % (
                    c.index, timeout, c.transcript()))
        return self.conns[:n]

    def plaintext(self):
        return b"".join(c.plaintext() for c in self.conns)

    def all_bytes(self):
        return b"".join(c.all_bytes() for c in self.conns)

    def messages(self):
        return [m for c in self.conns for m in c.messages]

    def errors(self):
        return [c.error for c in self.conns if c.error is not None]

    def check(self):
        errs = self.errors()
        if errs:
            raise errs[0]

    def close(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in list(self.conns):
            c.close()
        for t in [self.thread] + self.threads:
            t.join(5)
