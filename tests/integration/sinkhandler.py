"""An aiosmtpd handler that keeps the exact bytes of every message.

Run with Debian's interpreter:

    /usr/bin/python3 -m aiosmtpd -n -l 127.0.0.1:PORT \
        -c sinkhandler.Sink [DIR] [--smtpscert C --smtpskey K | --tlscert C --tlskey K]

(with this directory on PYTHONPATH). DIR, or the environment variable
SINK_DIR when no argument is given, receives for each message:

    ID.eml   the message as received: dot-unstuffed, CRLF kept, nothing
             added or decoded (aiosmtpd's envelope.original_content)
    ID.json  envelope and session facts: mail_from, rcpt_tos, peer, tls,
             size, sha256

ID is the message's X-Test-Id header (letters, digits, '.', '_', '-'),
or msg-N when it has none. Both files appear atomically (written under
a temporary name, then renamed), the .json last: once ID.json exists the
message is complete.

aiosmtpd's stock limits get in the way of a transparency test: lines
longer than 1001 bytes (RFC 5321's 1000 plus a stuffed dot) are refused
with "500 Line too long" and messages are capped at 32 MiB. Loading this
module lifts the line limit (SINK_LINE_LIMIT bytes, default 1 MiB); pass
-s SIZE on the command line for bigger messages. Without -d/decode_data
the CLI hands us bytes, so 8-bit data is never decoded or re-encoded.
"""

import hashlib
import itertools
import json
import os
import re

from aiosmtpd import smtp as _smtp

# The StreamReader's limit is read from this class attribute when each
# session starts; the CLI builds its SMTP instances after importing us.
_smtp.SMTP.line_length_limit = int(os.environ.get("SINK_LINE_LIMIT", str(1 << 20)))

_ID_RE = re.compile(rb"^X-Test-Id:[ \t]*([A-Za-z0-9._-]+)[ \t]*\r?$", re.I | re.M)


def _header_block(data):
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


class Sink:
    """Stores each message under DIR; see the module's docstring."""

    def __init__(self, directory=None):
        self.dir = directory or os.environ.get("SINK_DIR")
        if not self.dir:
            raise SystemExit("sinkhandler: give DIR or set SINK_DIR")
        os.makedirs(self.dir, exist_ok=True)
        self.counter = itertools.count(1)

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) > 1:
            parser.error("sinkhandler.Sink takes at most one argument: DIR")
        return cls(*args)

    def _write(self, name, data):
        tmp = os.path.join(self.dir, ".%s.tmp" % name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.dir, name))

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or b""
        m = _ID_RE.search(_header_block(data))
        ident = m.group(1).decode() if m else "msg-%d" % next(self.counter)
        # A second delivery of one message is kept beside the first, so a
        # test can see it.
        while os.path.exists(os.path.join(self.dir, ident + ".json")):
            ident = "%s.dup%d" % (m.group(1).decode() if m else "msg", next(self.counter))
        # Covers implicit TLS and STARTTLS alike (session.ssl is set only
        # after STARTTLS).
        transport = getattr(server, "transport", None)
        obj = transport.get_extra_info("ssl_object") if transport else None
        tls = obj.version() if obj is not None else None
        meta = {
            "id": ident,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "peer": list(session.peer) if session.peer else None,
            "helo": session.host_name,
            "tls": tls,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        self._write(ident + ".eml", data)
        self._write(ident + ".json", json.dumps(meta).encode())
        return "250 2.0.0 Ok: stored as %s" % ident
