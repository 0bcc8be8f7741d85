"""Test messages: bodies of each kind (text, 8bit, long lines, dots,
command look-alikes, mixed), each with its test id, and their digest."""

import hashlib
import random

from harness import CRLF

# --------------------------------------------------------------------------
# Test messages

_TEXT = bytes(range(0x20, 0x7f))
_TEXT_TABLE = bytes(_TEXT[i % len(_TEXT)] for i in range(256))
# 8-bit: every byte value but CR and LF (a line never holds a bare one).
_BIN_TABLE = bytes((i if i not in (10, 13) else i + 0x70) for i in range(256))

KINDS = ("text", "8bit", "long", "dots", "commands", "mixed")

_SPECIAL = [b".", b"..", b".hidden", b"..double", b"STARTTLS", b"EHLO x", b"QUIT",
            b"RSET", b"DATA", b"MAIL FROM:<evil@x.test>", b". ", b""]


def make_message(size, seed=0, kind="text", test_id=None, subject=None):
    """Exact bytes of a message: CRLF lines, headers with a unique
    X-Test-Id, then a body of exactly size bytes (size 1 is rounded up to
    2 since every line ends in CRLF). kind:
      text      printable ASCII lines of 0-200 bytes
      8bit      random bytes (NUL and 0x80-0xff included, no CR/LF)
      long      lines of 998, 999, 1000 and 5000 bytes among short ones
      dots      lines that are '.' or start with '.', and SMTP commands
      commands  lines reading STARTTLS, EHLO x, QUIT, DATA, ...
      mixed     all of the above
    Returns (test_id, message)."""
    rnd = random.Random("%s/%s/%s" % (seed, kind, size))
    test_id = test_id or "t%d-%s-%d-%08x" % (seed, kind, size, rnd.getrandbits(32))
    head = (b"From: Sender <sender@client.test>\r\n"
            b"To: <rcpt@legacy.test>\r\n"
            b"Subject: " + (subject or "mailshim test %s" % test_id).encode() + b"\r\n"
            b"X-Test-Id: " + test_id.encode() + b"\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    return test_id, head + make_body(size, rnd, kind)


def make_body(size, rnd, kind):
    if size == 0:
        return b""
    size = max(size, 2)
    pool = rnd.randbytes(min(size, 1 << 16) + 5000)
    table = _BIN_TABLE if kind in ("8bit", "mixed") else _TEXT_TABLE
    pool = pool.translate(table)
    out, total = [], 0

    def chunk(n):
        start = rnd.randrange(0, len(pool) - n) if n < len(pool) else 0
        return pool[start:start + n]

    # Lines every message of the kind starts with, as far as size allows.
    first = {
        "dots": [b".", b"..", b".x", b"STARTTLS", b"EHLO x", b"QUIT"],
        "commands": [b"STARTTLS", b"EHLO x", b"QUIT", b"DATA", b"RSET", b"."],
        "long": [chunk(998), chunk(5000)],
        "mixed": [b".", b"..", b"STARTTLS", b"EHLO x", b"QUIT", chunk(998), chunk(5000)],
    }.get(kind, [])
    while total < size:
        room = size - total - 2
        choice = rnd.random()
        if first:
            line = first.pop(0)
        elif kind in ("dots", "commands", "mixed") and choice < 0.15:
            line = rnd.choice(_SPECIAL if kind != "commands" else _SPECIAL[4:])
        elif kind in ("long", "mixed") and choice < 0.25:
            line = chunk(rnd.choice((998, 999, 1000, 5000)))
        else:
            line = chunk(rnd.randint(0, 200))
        line = line[:room]
        if size - total - len(line) - 2 == 1:
            line += b"x"  # never leave a single byte that no line can hold
        out.append(line + CRLF)
        total += len(line) + 2
    body = b"".join(out)
    assert len(body) == size, (len(body), size)
    return body


def sha256(b):
    return hashlib.sha256(b).hexdigest()
