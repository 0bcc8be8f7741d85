"""Real peers for the integration tests: Postfix's smtp-sink, aiosmtpd, a
private Postfix instance, and hand-written upstreams for relay behaviour."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from harness import (CRLF, HERE, POSTFIX, PYTHON, SMTP_SINK, _read_text, HarnessError,
                     listening, proc_tree, tail, wait_until)
from messages import make_message

# --------------------------------------------------------------------------
# Real peers

def wait_listening(proc, port, timeout=10.0, host=None):
    def ready():
        if not proc.alive():
            raise HarnessError("%s exited with %s before listening on %d:\n%s%s" % (
                proc.name, proc.returncode, port, tail(proc.stdout_text()),
                tail(proc.stderr_text())))
        return listening(port, host)
    wait_until(ready, timeout, "%s to listen on %d" % (proc.name, port))


def sink_extract(dump):
    """The message bytes from one smtp-sink -d dump file.

    smtp-sink (Postfix 3.7) writes text lines ending in LF: first its own
    X-Client-Addr/X-Client-Proto/X-Helo-Args/X-Mail-Args/X-Rcpt-Args lines,
    then a three-line Received: header (continuations start with a tab),
    then the message as received, dot-unstuffed, each CRLF turned into LF,
    then one empty line. A bare CR inside a line is dropped and a bare LF
    ends a line, so the mapping back (LF -> CRLF) is exact only for
    messages made of CRLF-terminated lines without bare CR or LF, which is
    what make_message() produces and what valid SMTP carries. 8-bit bytes,
    NUL and lines of any length (tested: 100,000 bytes) come through."""
    i = dump.find(b"\nReceived: ")
    if i < 0:
        if not dump.startswith(b"Received: "):
            raise HarnessError("no Received: header in smtp-sink dump")
        i = 0
    else:
        i += 1
    end = dump.index(b"\n", i) + 1
    while dump[end:end + 1] == b"\t":
        end = dump.index(b"\n", end) + 1
    body = dump[end:]
    if not body.endswith(b"\n"):
        raise HarnessError("smtp-sink dump is incomplete (no final empty line)")
    return body[:-1].replace(b"\n", CRLF)


def sink_envelope(dump):
    """smtp-sink's X-* lines of a dump as a dict (X-Rcpt-Args as a list)."""
    env = {"X-Rcpt-Args": []}
    for line in dump.split(b"\n"):
        if line.startswith(b"Received: "):
            break
        k, _, v = line.decode("latin-1").partition(": ")
        if k == "X-Rcpt-Args":
            env[k].append(v)
        else:
            env[k] = v
    return env


def header_value(msg, name):
    """First value of header name in a CRLF message, as bytes, or None."""
    head = msg.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*([^\r\n]*)", head)
    return m.group(1) if m else None


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:port, keeping every message in a
    dump directory (owned by nobody, under /tmp)."""

    def __init__(self, procs, port, dumpdir, extra_args=()):
        self.port = port
        self.dir = Path(dumpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, user="nobody")
        argv = [SMTP_SINK, "-u", "nobody", "-m", "1000", *extra_args,
                "-d", "%s/%%H%%M%%S." % self.dir, "127.0.0.1:%d" % port, "1000"]
        self.proc = procs.start("smtp-sink", argv)
        wait_listening(self.proc, port)

    def dumps(self):
        """{path: bytes} of every dump file so far."""
        out = {}
        for p in sorted(self.dir.iterdir()):
            if p.is_file():
                out[p] = p.read_bytes()
        return out

    def count(self):
        return sum(1 for p in self.dir.iterdir() if p.is_file())

    def messages(self):
        """[(envelope dict, message bytes)] of complete dumps."""
        out = []
        for data in self.dumps().values():
            try:
                out.append((sink_envelope(data), sink_extract(data)))
            except (HarnessError, ValueError):
                pass
        return out

    def find(self, test_id):
        for env, msg in self.messages():
            if header_value(msg, "X-Test-Id") == test_id.encode():
                return env, msg
        return None

    def message(self, test_id, timeout=10.0):
        """Exact bytes of the message with this X-Test-Id (all sinks)."""
        return self.wait_message(test_id, timeout)

    def wait_message(self, test_id, timeout=10.0):
        """The message whose X-Test-Id is test_id. Call it once the client
        has its 250 for the DATA (smtp-sink closes the dump before it
        answers)."""
        env_msg = wait_until(lambda: self.find(test_id), timeout,
                             "message %s in smtp-sink's dumps" % test_id, 0.05)
        return env_msg[1]


class Aiosmtpd:
    """aiosmtpd with sinkhandler.Sink: a real SMTP server in plain,
    implicit (--smtpscert) or starttls (--tlscert) mode."""

    def __init__(self, procs, port, directory, mode="plain", cert=None, key=None,
                 require_tls=True, size=64 << 20, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [PYTHON, "-m", "aiosmtpd", "-n", "-l", "%s:%d" % (host, port),
                "-s", str(size), "-c", "sinkhandler.Sink", str(self.dir)]
        if mode == "implicit":
            argv += ["--smtpscert", cert, "--smtpskey", key]
        elif mode == "starttls":
            argv += ["--tlscert", cert, "--tlskey", key]
            if not require_tls:
                argv.append("--no-requiretls")
        elif mode != "plain":
            raise ValueError(mode)
        env = {"PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = procs.start("aiosmtpd-%s" % mode, argv, env=env)
        wait_listening(self.proc, port, host=host if host != "127.0.0.1" else None)

    def ids(self):
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def count(self):
        return len(self.ids())

    def find(self, test_id):
        meta = self.dir / (test_id + ".json")
        if not meta.exists():
            return None
        return (self.dir / (test_id + ".eml")).read_bytes(), json.loads(meta.read_text())

    def message(self, test_id, timeout=10.0):
        """Exact bytes of the message with this X-Test-Id (all sinks)."""
        return self.wait_message(test_id, timeout)[0]

    def wait_message(self, test_id, timeout=10.0):
        """(message bytes, metadata) of the message with this X-Test-Id."""
        try:
            return wait_until(lambda: self.find(test_id), timeout,
                              "message %s at aiosmtpd" % test_id, 0.05)
        except HarnessError as e:
            raise HarnessError("%s; aiosmtpd stderr:\n%s" % (e, tail(self.proc.stderr_text())))


class PrivatePostfix:
    """A private Postfix 3.7 on loopback (postfix -c DIR start, as root).

    Listeners: smtp_port offers STARTTLS (smtpd_tls_security_level=may),
    smtps_port is implicit TLS (smtpd_tls_wrappermode=yes); both with
    the given certificate; proxy_port reads a PROXY v1/v2 header first
    (smtpd_upstream_proxy_protocol=haproxy) and offers STARTTLS. Every accepted message is relayed to a private
    smtp-sink on sink_port. Traps this setup avoids: without syslog, errors
    vanish unless maillog_file (inside maillog_file_prefixes) and the
    postlog service are set; a main.cf modified "now" slows the start by
    about 2 s; with no proxymap service local_recipient_maps must be empty
    or smtpd hangs; smtpd_peername_lookup = no avoids DNS waits; the queue
    must be reachable by the postfix user, hence a directory under /tmp."""

    def __init__(self, procs, ports, cert, key, directory):
        self.procs = procs
        self.dir = Path(directory)
        self.conf = self.dir / "conf"
        self.spool = self.dir / "spool"
        self.maillog_path = self.dir / "maillog"
        self.smtp_port, self.smtps_port, self.proxy_port, sink_port = ports.many(4)
        # The queue directory must exist; data_directory must not (postfix
        # creates it owned by the postfix user, or the master cannot lock).
        for d in (self.conf, self.spool):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, self.conf / "cert.pem")
        shutil.copy(key, self.conf / "key.pem")
        os.chmod(self.conf / "key.pem", 0o600)
        self.sink = SmtpSink(procs, sink_port, self.dir / "sink")
        d = self.dir
        (self.conf / "main.cf").write_text("\n".join([
            "compatibility_level = 3.6",
            "queue_directory = %s" % self.spool,
            "data_directory = %s/data" % d,
            "syslog_name = pftest",
            "maillog_file = %s" % self.maillog_path,
            "maillog_file_prefixes = %s" % d,
            "myhostname = legacy.test",
            "mydestination =",
            "local_recipient_maps =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "relayhost = [127.0.0.1]:%d" % sink_port,
            "smtpd_peername_lookup = no",
            "smtpd_authorized_xclient_hosts = 127.0.0.1",
            "smtpd_tls_security_level = may",
            "smtpd_tls_cert_file = %s/cert.pem" % self.conf,
            "smtpd_tls_key_file = %s/key.pem" % self.conf,
            "smtpd_tls_loglevel = 1",
            "message_size_limit = 104857600",
            "",
        ]))
        (self.conf / "master.cf").write_text("\n".join([
            "127.0.0.1:%d inet n - n - - smtpd" % self.smtp_port,
            "127.0.0.1:%d inet n - n - - smtpd -o smtpd_tls_wrappermode=yes" % self.smtps_port,
            "127.0.0.1:%d inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
            % self.proxy_port,
            "cleanup  unix n - n - 0 cleanup",
            "qmgr     unix n - n 300 1 qmgr",
            "tlsmgr   unix - - n 1000? 1 tlsmgr",
            "rewrite  unix - - n - - trivial-rewrite",
            "bounce   unix - - n - 0 bounce",
            "defer    unix - - n - 0 bounce",
            "trace    unix - - n - 0 bounce",
            "smtp     unix - - n - - smtp",
            "relay    unix - - n - - smtp",
            "showq    unix n - n - - showq",
            "error    unix - - n - - error",
            "retry    unix - - n - - error",
            "anvil    unix - - n - 1 anvil",
            "scache   unix - - n - 1 scache",
            "postlog  unix-dgram n - n - 1 postlogd",
            "",
        ]))
        old = time.time() - 120
        for f in ("main.cf", "master.cf"):
            os.utime(self.conf / f, (old, old))
        self.started = False

    def _postfix(self, *args, timeout=30):
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=timeout)

    def start(self):
        r = self._postfix("start")
        self.started = True
        if r.returncode != 0:
            raise HarnessError("postfix start failed (%d):\n%s%s\nmaillog:\n%s" % (
                r.returncode, r.stdout, r.stderr, tail(self.maillog())))
        for port in (self.smtp_port, self.smtps_port, self.proxy_port):
            wait_until(lambda: listening(port), 10, "postfix to listen on %d" % port)
        return self

    def master_pid(self):
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        """Stop the instance (idempotent); kills what a stop leaves behind."""
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout=20)
        except subprocess.TimeoutExpired:
            pass
        if pid:
            def gone():
                return not os.path.exists("/proc/%d" % pid)
            try:
                wait_until(gone, 5, "postfix master %d to exit" % pid, 0.05)
            except HarnessError:
                for p in reversed(proc_tree(pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.started = False

    def maillog(self):
        return _read_text(self.maillog_path)

    @staticmethod
    def queue_id(transcript):
        """The queue id from a '250 2.0.0 Ok: queued as QID' reply."""
        m = re.search(r"queued as ([0-9A-Za-z]+)", transcript)
        return m.group(1) if m else None

    def wait_sent(self, qid, timeout=15.0):
        """The maillog line saying qid reached the sink (status=sent)."""
        pat = re.compile(r" %s: to=.*status=sent" % re.escape(qid))

        def sent():
            for line in self.maillog().splitlines():
                if pat.search(line):
                    return line
            return None

        try:
            return wait_until(sent, timeout, "%s status=sent" % qid, 0.05)
        except HarnessError as e:
            raise HarnessError("%s; maillog:\n%s" % (e, tail(self.maillog())))

    def client_line(self, qid):
        """Postfix's 'QID: client=...' log line (the client it believed)."""
        for line in self.maillog().splitlines():
            if " %s: client=" % qid in line:
                return line
        return None

    def client_of(self, c, test_id):
        """Send a short message on smtplib connection c (EHLO, MAIL, RCPT,
        DATA); once it is delivered, Postfix's client= line for it."""
        c.ehlo()
        c.mail("sender@client.test")
        c.rcpt("rcpt@legacy.test")
        code, text = c.data(make_message(500, test_id=test_id)[1])
        assert code == 250, (code, text)
        qid = self.queue_id(text.decode())
        self.wait_sent(qid)
        return self.client_line(qid)


def postfix_main_add(pf, *lines):
    """Add main.cf lines to a PrivatePostfix before its start (the last
    setting of a parameter wins), keeping the file's old mtime."""
    path = pf.conf / "main.cf"
    st = path.stat()
    with open(path, "a") as f:
        for line in lines:
            f.write(line + "\n")
    os.utime(path, (st.st_atime, st.st_mtime))


# --------------------------------------------------------------------------
# Hand-written upstreams for relay behaviour

def loopback_listener(port, backlog, rcvbuf=None):
    """A listening TCP socket on 127.0.0.1:port, polled every 0.1 s by an
    accept loop. rcvbuf is set before listen so accepted sockets inherit a
    small window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    sock.settimeout(0.1)
    return sock


class RawServer:
    """A TCP server on 127.0.0.1:port whose connections are handled by
    handler(conn, server) in threads. Sockets and threads end at close()."""

    def __init__(self, port, handler, backlog=16, rcvbuf=None):
        self.port = port
        self.handler = handler
        self.conns = []
        self.errors = []
        self.stopping = threading.Event()
        self.accepted = threading.Event()
        self.sock = loopback_listener(port, backlog, rcvbuf)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.threads = [self.thread]
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            self.handler(conn, self)
        except Exception as e:  # reported by the test through .errors
            if not self.stopping.is_set():
                self.errors.append(e)

    def close(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(2)
