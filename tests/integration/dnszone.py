"""A DNSSEC test DNS on loopback, for the tests of DNS, DANE and MX delivery.

Zones are made at test time in a work directory: signed with ldns-keygen and
ldns-signzone (ECDSAP256SHA256), served by nsd on 127.0.0.1 (UDP and TCP on
one port from the harness's Ports), with a trust-anchor file holding the DS
of every signed top zone. Point the shim (or tests/dnstest/dnsprobe) at it:

    dns_resolver        = 127.0.0.1@<server.port>
    dnssec_trust_anchor = <server.trust_anchor_path>

    zones = [Zone("test.", []),                       # the signed top: anchor
             Zone("dane.test.", ["mx A 127.0.0.1",    # secure delegation
                                 "_25._tcp.mx TLSA " + tlsa(cert, 3, 1, 1)]),
             Zone("plain.test.", ["mx A 127.0.0.1"], signed=False)]
    server = DnsServer(procs, ports, workdir, zones,
                       bogus=["bad.dane.test."],     # RRSIGs corrupted
                       bad_ds=["broken.test."])      # DS of another key
    server.restart(zones2)                            # new records, same keys

A zone whose parent is among the zones is delegated from it (NS and glue,
plus a DS when the child is signed: a secure delegation; none when it is
not: provably insecure). A zone with no parent among them is a top zone;
a signed top zone's DS goes into the trust anchor, an unsigned one is
outside every anchor (insecure). The names under test. are the default
(RFC 6761); the resolver must not answer those itself.

Uses only the standard library, the Debian packages ldnsutils (ldns-keygen,
ldns-signzone, drill), nsd and openssl, and harness.py's Procs and Ports.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from harness import HarnessError, tail

NSD = "/usr/sbin/nsd"
TOOLS = {"ldns-keygen": "ldnsutils", "ldns-signzone": "ldnsutils", "drill": "ldnsutils",
         NSD: "nsd", "openssl": "openssl"}
ALGORITHM = "ECDSAP256SHA256"


def missing_tools():
    """'tool (Debian package p)' for each tool this module needs and lacks."""
    return ["%s (Debian package %s)" % (t, p) for t, p in TOOLS.items()
            if not (shutil.which(t) or os.access(t, os.X_OK))]


def absolute(name):
    return name if name.endswith(".") else name + "."


def _run(argv, cwd=None, stdin=None):
    r = subprocess.run([str(a) for a in argv], cwd=cwd, input=stdin, capture_output=True,
                       timeout=60)
    if r.returncode != 0:
        raise HarnessError("%s failed (%d):\n%s%s" % (
            " ".join(map(str, argv)), r.returncode, r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace")))
    return r.stdout


def tlsa(cert_pem_path, usage, selector, mtype):
    """The TLSA rdata text "U S M HEX" for a PEM certificate: selector 0 is
    the whole DER certificate, 1 its DER SubjectPublicKeyInfo; matching type
    0 the bytes themselves, 1 their SHA-256, 2 their SHA-512."""
    der = _run(["openssl", "x509", "-in", cert_pem_path, "-outform", "DER"])
    if selector == 1:
        pub = _run(["openssl", "x509", "-in", cert_pem_path, "-pubkey", "-noout"])
        der = _run(["openssl", "pkey", "-pubin", "-outform", "DER"], stdin=pub)
    elif selector != 0:
        raise ValueError("TLSA selector %r" % selector)
    if mtype == 1:
        data = hashlib.sha256(der).hexdigest()
    elif mtype == 2:
        data = hashlib.sha512(der).hexdigest()
    elif mtype == 0:
        data = der.hex()
    else:
        raise ValueError("TLSA matching type %r" % mtype)
    return "%d %d %d %s" % (usage, selector, mtype, data)


def tlsa_wire_hex(rdata_text):
    """The rdata of "U S M HEX" as the hex of its wire form (what a DNS
    answer carries): one byte each for U, S, M, then the data."""
    u, s, m, data = rdata_text.split(None, 3)
    return "%02x%02x%02x%s" % (int(u), int(s), int(m), "".join(data.split()).lower())


class Zone:
    """One zone: name, and records as zone-file lines relative to it
    ("www A 127.0.0.1", "@ MX 10 mx", "alias 60 CNAME www", absolute names
    with a final dot). The SOA, the apex NS (ns.<zone>, 127.0.0.1) and the
    delegations to child zones are added by DnsServer."""

    def __init__(self, name, records=(), signed=True, ttl=300):
        self.name = absolute(name).lower()
        self.records = list(records)
        self.signed = signed
        self.ttl = ttl

    def text(self, children=(), serial=1):
        lines = ["$ORIGIN %s" % self.name, "$TTL %d" % self.ttl,
                 "@ SOA ns hostmaster %d 3600 600 86400 %d" % (serial, min(self.ttl, 300)),
                 "@ NS ns", "ns A 127.0.0.1"]
        lines += self.records
        for child, ds_lines in children:
            lines += ["%s NS ns.%s" % (child, child), "ns.%s A 127.0.0.1" % child]
            lines += ds_lines
        return "\n".join(lines) + "\n"


def _parent(zone, names):
    """The closest enclosing zone of zone among names, or None."""
    labels = zone.split(".")
    for i in range(1, len(labels) - 1):
        cand = ".".join(labels[i:])
        if cand in names:
            return cand
    return None


class DnsServer:
    """nsd serving zones on 127.0.0.1:port (UDP and TCP), signed unless a
    zone says signed=False or is in insecure_zones (names of zones, or Zone
    objects to serve unsigned). bogus lists owner
    names ("name" or "name/TYPE") whose RRSIGs are corrupted after signing;
    bad_ds names signed child zones whose parent publishes the DS of another
    key (a broken chain: everything in them is bogus).

    .port, .trust_anchor_path (DS of the signed top zones),
    .wrong_trust_anchor_path (DS of keys that signed nothing: every answer
    under those tops is bogus with it), .restart(zones, ...), .stop().
    Keys live as long as the object, so a restart keeps the anchor valid.
    The nsd process belongs to procs: the test's teardown kills it."""

    def __init__(self, procs, ports, workdir, zones, bogus=(), insecure_zones=(), bad_ds=()):
        gone = missing_tools()
        if gone:
            raise HarnessError("the DNS test server needs: " + "; ".join(gone))
        self.procs = procs
        self.port = ports.get()
        self.dir = Path(workdir) / ("dns-%d" % self.port)
        self.keydir = self.dir / "keys"
        self.keydir.mkdir(parents=True, exist_ok=True)
        self.keys = {}
        self.proc = None
        self.serial = 0
        self.trust_anchor_path = str(self.dir / "trust-anchor.ds")
        self.wrong_trust_anchor_path = str(self.dir / "wrong-anchor.ds")
        self.restart(zones, bogus, insecure_zones, bad_ds)

    # -- zones --------------------------------------------------------------

    def _keypair(self, zone):
        """(KSK basename, ZSK basename, KSK's DS line) of zone, made once."""
        if zone not in self.keys:
            ksk = _run(["ldns-keygen", "-a", ALGORITHM, "-k", zone],
                       cwd=self.keydir).decode().strip()
            zsk = _run(["ldns-keygen", "-a", ALGORITHM, zone],
                       cwd=self.keydir).decode().strip()
            ds = (self.keydir / (ksk + ".ds")).read_text().strip()
            self.keys[zone] = (ksk, zsk, ds)
        return self.keys[zone]

    def _sign(self, zone, path):
        ksk, zsk, _ = self._keypair(zone.name)
        now = int(time.time())
        # Inception an hour back: a clock a little behind still validates.
        _run(["ldns-signzone", "-i", time.strftime("%Y%m%d%H%M%S", time.gmtime(now - 3600)),
              "-e", time.strftime("%Y%m%d%H%M%S", time.gmtime(now + 30 * 86400)),
              "-o", zone.name, "-f", str(path) + ".signed", str(path),
              self.keydir / ksk, self.keydir / zsk])
        return Path(str(path) + ".signed")

    @staticmethod
    def _corrupt(path, bogus):
        """Flip one base64 character of each RRSIG named in bogus."""
        wanted = {}
        for b in bogus:
            name, _, rtype = b.partition("/")
            wanted.setdefault(absolute(name).lower(), set()).add(rtype.upper())
        out, hit = [], set()
        for line in path.read_text().splitlines():
            f = line.split()
            if len(f) > 5 and f[3] == "RRSIG" and f[0].lower() in wanted:
                types = wanted[f[0].lower()]
                if "" in types or f[4].upper() in types:
                    sig = f[-1]
                    f[-1] = ("B" if sig[0] == "A" else "A") + sig[1:]
                    line = "\t".join(f)
                    hit.add(f[0].lower())
            out.append(line)
        path.write_text("\n".join(out) + "\n")
        return hit

    def _build(self, zones, bogus, insecure_zones, bad_ds):
        insecure = {absolute(z).lower() for z in insecure_zones}
        bad_ds = {absolute(z).lower() for z in bad_ds}
        byname = {z.name: z for z in zones}
        signed = {n for n, z in byname.items() if z.signed and n not in insecure}
        children = {n: [] for n in byname}
        for n in byname:
            p = _parent(n, byname)
            if p:
                children[p].append(n)
        tops = [n for n in byname if _parent(n, byname) is None]
        files, corrupted = {}, set()
        # Deepest first: a parent needs its children's DS records.
        for n in sorted(byname, key=lambda x: -x.count(".")):
            kids = [(c, [] if c not in signed else
                     [self._stray_ds(c) if c in bad_ds else self._keypair(c)[2]])
                    for c in children[n]]
            path = self.dir / (n + "zone")
            path.write_text(byname[n].text(kids, self.serial))
            if n in signed:
                path = self._sign(byname[n], path)
                corrupted |= self._corrupt(path, bogus)
            files[n] = path
        asked = {absolute(b.partition("/")[0]).lower() for b in bogus}
        if asked - corrupted:
            raise HarnessError("no RRSIG to corrupt at %s" % ", ".join(sorted(asked - corrupted)))
        anchors = [self._keypair(n)[2] for n in tops if n in signed]
        Path(self.trust_anchor_path).write_text("\n".join(anchors) + "\n")
        Path(self.wrong_trust_anchor_path).write_text(
            "\n".join(self._stray_ds(n) for n in tops if n in signed) + "\n")
        return files

    def _stray_ds(self, zone):
        """The DS of a key made for zone that signs nothing."""
        k = _run(["ldns-keygen", "-a", ALGORITHM, "-k", zone], cwd=self.dir).decode().strip()
        ds = (self.dir / (k + ".ds")).read_text().strip()
        for ext in (".key", ".private", ".ds"):
            (self.dir / (k + ext)).unlink()
        return ds

    # -- nsd ----------------------------------------------------------------

    def _conf(self, files):
        d = self.dir
        lines = ["server:", "  ip-address: 127.0.0.1", "  port: %d" % self.port,
                 '  username: ""', '  chroot: ""', '  zonesdir: "%s"' % d, '  database: ""',
                 '  pidfile: "%s/nsd.pid"' % d, '  xfrdfile: "%s/xfrd.state"' % d,
                 '  xfrdir: "%s"' % d, '  zonelistfile: "%s/zone.list"' % d,
                 '  logfile: "%s/nsd.log"' % d, "  server-count: 1", "  verbosity: 1",
                 "remote-control:", "  control-enable: no"]
        for name, path in files.items():
            lines += ["zone:", "  name: %s" % name, '  zonefile: "%s"' % path]
        conf = d / "nsd.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _ready(self, names):
        # Over TCP: a UDP probe sent before nsd binds can stall for seconds.
        deadline = time.monotonic() + 15
        while True:
            ok = True
            for n in names:
                r = subprocess.run(["drill", "-t", "-p", str(self.port), "@127.0.0.1", "SOA", n],
                                   capture_output=True, text=True, timeout=10)
                if "rcode: NOERROR" not in r.stdout:
                    ok = False
                    break
            if ok:
                return
            if not self.proc.alive() or time.monotonic() > deadline:
                log = (self.dir / "nsd.log")
                raise HarnessError("nsd on port %d not ready:\n%s%s" % (
                    self.port, tail(self.proc.stderr_text()),
                    tail(log.read_text()) if log.exists() else ""))
            time.sleep(0.05)

    def restart(self, zones, bogus=(), insecure_zones=(), bad_ds=()):
        """Serve zones (re-signed with the same keys) from now on, on the
        same port. A resolver may keep old answers for their TTL."""
        self.stop()
        self.serial += 1
        # insecure_zones may name zones, or be Zone objects served unsigned.
        self.zones = list(zones) + [z for z in insecure_zones if isinstance(z, Zone)]
        unsigned = [z.name if isinstance(z, Zone) else z for z in insecure_zones]
        files = self._build(self.zones, list(bogus), unsigned, list(bad_ds))
        conf = self._conf(files)
        self.proc = self.procs.start("nsd", [NSD, "-d", "-c", conf])
        self._ready(list(files))

    def stop(self):
        if self.proc is not None and self.proc.alive():
            self.procs.stop(self.proc)
        self.proc = None
