#!/usr/bin/python3
"""mailshim benchmarks: mailshim against stunnel4, hitch and haproxy, all
measured in the same run, in front of the same plaintext upstream, driven
by the same load client. See README.md beside this file.

Figures (lower is better for all three):
  cpu_session  CPU time of the proxy's processes per full session
               (TLS 1.3 handshake + EHLO/MAIL/RCPT/DATA ~2 KiB/QUIT)
  cpu_mib      CPU time of the proxy's processes per MiB relayed client ->
               upstream (a few long DATA bodies)
  mem_idle     growth of the proxy's memory (Pss, smaps_rollup) per idle
               session (handshake done, greeting read, nothing more)

Standard library only; run with Debian's /usr/bin/python3.
Exit status: 0 when every measurement ran, 1 when something could not run.
"""

import argparse
import os
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_LO, PORT_HI = 20000, 32000


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


class BenchError(Exception):
    """Something needed for a measurement could not run."""


# --------------------------------------------------------------------------
# /proc

def proc_tree(root):
    """root and every descendant process, from /proc/*/stat parent links."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_ticks(pids):
    """utime+stime of each process (all its threads, live and exited) plus
    cutime+cstime (its children that exited and were reaped), in ticks."""
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        # fields 14-17 of proc(5); rest[0] is field 3
        total += sum(int(x) for x in rest[11:15])
    return total


def memory_kb(pids):
    """(Pss, Rss) summed over pids, in KiB."""
    pss = rss = 0
    for p in pids:
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


# --------------------------------------------------------------------------
# ports and processes

_used_ports = set()


def free_port():
    """A loopback TCP port in 20000-32000 that binds right now."""
    for _ in range(500):
        port = random.randint(PORT_LO, PORT_HI)
        if port in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise BenchError("no free loopback port in %d-%d" % (PORT_LO, PORT_HI))


_live = []   # Popen objects to stop at exit


def spawn(argv, log_path, cwd=None):
    log = open(log_path, "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         cwd=cwd, start_new_session=True)
    log.close()
    _live.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM to the process group we started (pgid = its pid), SIGKILL
    after grace seconds, and reap it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
    else:
        # the leader is gone; children it left in its group may remain
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in _live:
        _live.remove(p)


def stop_all():
    for p in list(_live):
        try:
            stop(p, grace=3.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def wait_listening(port, proc, log_path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("exited with status %s before listening:\n%s"
                             % (proc.returncode, tail(log_path)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError("not listening on %d after %.0fs:\n%s" % (port, timeout, tail(log_path)))


def need_bin(*names):
    for n in names:
        path = shutil.which(n) or shutil.which(n, path="/usr/sbin:/sbin:/usr/bin")
        if path:
            return path
    raise BenchError("%s is not installed" % " or ".join(names))


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# the proxies

class Proxy:
    name = "?"

    def __init__(self, bench):
        self.b = bench
        self.proc = None
        self.port = None
        self.log = None

    def argv_and_config(self, d):
        raise NotImplementedError

    def start(self, tag):
        self.port = free_port()
        d = os.path.join(self.b.tmp, "%s-%s" % (self.name, tag))
        os.makedirs(d)
        self.log = os.path.join(d, "log")
        argv = self.argv_and_config(d)
        self.proc = spawn(argv, self.log, cwd=d)
        try:
            wait_listening(self.port, self.proc, self.log)
        except BenchError as e:
            self.stop()
            raise BenchError("%s: %s" % (self.name, e)) from None
        time.sleep(0.2)   # let forked workers come up

    def pids(self):
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError("%s is not running:\n%s" % (self.name, tail(self.log)))
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Mailshim(Proxy):
    name = "mailshim"

    def argv_and_config(self, d):
        conf = os.path.join(d, "conf.d")
        os.makedirs(conf)
        with open(os.path.join(conf, "bench.conf"), "w") as f:
            f.write(f"""[global]
workers = 1
helo_name = bench.test
log_level = warn
max_connections = 100000
tls_min_version = TLSv1.2

[bench]
listen = 127.0.0.1:{self.port}
listen_tls = implicit
listen_cert = {self.b.cert}
listen_key = {self.b.key}
upstream = 127.0.0.1:{self.b.upstream}
upstream_tls = plain
""")
        check = subprocess.run([self.b.mailshim, "-t", "-c", conf], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise BenchError("mailshim -t rejected the bench configuration:\n%s%s"
                             % (check.stdout, check.stderr))
        return [self.b.mailshim, "-c", conf]


class Stunnel(Proxy):
    name = "stunnel"

    def argv_and_config(self, d):
        path = os.path.join(d, "stunnel.conf")
        with open(path, "w") as f:
            # debug = 3 (errors) like mailshim's log_level = warn: no line
            # per connection.
            f.write(f"""foreground = yes
pid =
debug = 3
[smtps]
accept = 127.0.0.1:{self.port}
connect = 127.0.0.1:{self.b.upstream}
cert = {self.b.cert}
key = {self.b.key}
sslVersionMin = TLSv1.2
""")
        return [need_bin("stunnel4", "stunnel"), path]


class Hitch(Proxy):
    name = "hitch"

    def argv_and_config(self, d):
        path = os.path.join(d, "hitch.conf")
        ocsp = os.path.join(d, "ocsp")
        os.makedirs(ocsp)
        with open(path, "w") as f:
            f.write(f"""frontend = "[127.0.0.1]:{self.port}"
backend = "[127.0.0.1]:{self.b.upstream}"
pem-file = "{self.b.combined}"
workers = 1
daemon = off
tls-protos = TLSv1.2 TLSv1.3
write-proxy-v2 = off
ocsp-dir = "{ocsp}"
log-level = 1
""")
            if os.geteuid() == 0:
                # hitch refuses to run its workers as root
                f.write('user = "nobody"\n')
        return [need_bin("hitch"), "--config=" + path]


class Haproxy(Proxy):
    name = "haproxy"

    def argv_and_config(self, d):
        path = os.path.join(d, "haproxy.cfg")
        with open(path, "w") as f:
            # maxconn bounds haproxy's own fd needs below this machine's
            # 20000-per-process cap.
            f.write(f"""global
    nbthread 1
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode tcp
    timeout connect 10s
    timeout client 300s
    timeout server 300s

frontend bench
    bind 127.0.0.1:{self.port} ssl crt {self.b.combined}
    default_backend upstream

backend upstream
    server up 127.0.0.1:{self.b.upstream}
""")
        return [need_bin("haproxy"), "-db", "-f", path]


PROXIES = {"mailshim": Mailshim, "stunnel": Stunnel, "hitch": Hitch, "haproxy": Haproxy}


# --------------------------------------------------------------------------
# the load client

def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v.strip('"')
    return out


class Bench:
    def __init__(self, args):
        self.args = args
        self.mailshim = os.path.abspath(args.mailshim)
        self.client = os.path.join(args.out, "client")
        self.sink_bin = os.path.join(args.out, "sink")
        self.sessions = env_int("BENCH_SESSIONS", 2000)
        self.conc = env_int("BENCH_CONC", 50)
        self.mib = env_int("BENCH_MIB", 256)
        self.streams = env_int("BENCH_STREAMS", 4)
        self.idle = env_int("BENCH_IDLE", 2000)
        self.repeat = env_int("BENCH_REPEAT", 3)
        self.idle_repeat = env_int("BENCH_IDLE_REPEAT", 1)
        self.client_limit = env_int("BENCH_CLIENT_TIMEOUT", 120)
        names = os.environ.get("BENCH_PROXIES", "mailshim stunnel hitch haproxy").split()
        for n in names:
            if n not in PROXIES:
                raise BenchError("unknown proxy in BENCH_PROXIES: %s" % n)
        if "mailshim" not in names:
            names.insert(0, "mailshim")
        self.names = names
        self.tmp = None
        self.raw = []          # lines for results.txt
        self.values = {n: {"cpu_session": [], "cpu_mib": [], "mem_idle": [], "rss_idle": []}
                       for n in names}
        self.tls = {}
        self.failures = []

    # ---- setup

    def setup(self):
        for f in (self.client, self.sink_bin, self.mailshim):
            if not os.access(f, os.X_OK):
                raise BenchError("missing executable: %s" % f)
        self.tmp = tempfile.mkdtemp(prefix="mailshim-bench.")
        self.cert = os.path.join(self.tmp, "cert.pem")
        self.key = os.path.join(self.tmp, "key.pem")
        self.combined = os.path.join(self.tmp, "combined.pem")
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", self.key, "-out", self.cert],
            capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError("openssl could not make the certificate:\n" + r.stderr)
        with open(self.combined, "w") as out:
            for f in (self.cert, self.key):
                with open(f) as src:
                    out.write(src.read())
        self.upstream = free_port()
        log = os.path.join(self.tmp, "sink.log")
        self.sink = spawn([self.sink_bin, str(self.upstream)], log)
        wait_listening(self.upstream, self.sink, log)

    def cleanup(self):
        stop_all()
        if self.tmp and not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- client runs

    def run_client(self, mode, port, n, c, body=None):
        argv = [self.client, "-m", mode, "-p", str(port), "-n", str(n), "-c", str(c),
                "-t", str(self.client_limit)]
        if body is not None:
            argv += ["-b", str(body)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=self.client_limit + 30)
        except subprocess.TimeoutExpired:
            raise BenchError("client %s did not finish in time" % mode) from None
        lines = r.stdout.strip().splitlines()
        res = parse_kv(lines[-1]) if lines else {}
        if r.returncode != 0 or res.get("ok") != str(n):
            raise BenchError("client %s on port %d: status %d: %s %s"
                             % (mode, port, r.returncode, r.stdout.strip(), r.stderr.strip()))
        return res

    def note_tls(self, name, res):
        self.tls[name] = "%s %s %s" % (res.get("version"), res.get("cipher"), res.get("group"))

    # ---- the figures

    def measure_cpu(self, proxy, rnd):
        name = proxy.name
        proxy.start("cpu%d" % rnd)
        try:
            self.run_client("sessions", proxy.port, 20, 5)   # warm-up
            pids = proxy.pids()
            t0 = cpu_ticks(pids)
            res = self.run_client("sessions", proxy.port, self.sessions, self.conc)
            pids = proxy.pids()
            t1 = cpu_ticks(pids)
            self.note_tls(name, res)
            us = (t1 - t0) / CLK_TCK * 1e6 / self.sessions
            self.values[name]["cpu_session"].append(us)
            self.raw.append("run=%d proxy=%s figure=cpu_session sessions=%d concurrency=%d "
                            "cpu_ticks=%d clk_tck=%d wall_s=%s procs=%d us_per_session=%.1f"
                            % (rnd, name, self.sessions, self.conc, t1 - t0, CLK_TCK,
                               res.get("secs"), len(pids), us))

            per = self.mib * 1024 * 1024 // self.streams
            t0 = cpu_ticks(proxy.pids())
            res = self.run_client("bulk", proxy.port, self.streams, self.streams, per)
            t1 = cpu_ticks(proxy.pids())
            mib = per * self.streams / (1024 * 1024)
            ms = (t1 - t0) / CLK_TCK * 1e3 / mib
            self.values[name]["cpu_mib"].append(ms)
            self.raw.append("run=%d proxy=%s figure=cpu_mib streams=%d mib=%.0f cpu_ticks=%d "
                            "clk_tck=%d wall_s=%s ms_per_mib=%.3f"
                            % (rnd, name, self.streams, mib, t1 - t0, CLK_TCK,
                               res.get("secs"), ms))
        finally:
            proxy.stop()

    def measure_idle(self, proxy, rnd):
        name = proxy.name
        proxy.start("idle%d" % rnd)
        client = None
        try:
            self.run_client("sessions", proxy.port, 20, 5)   # warm-up
            time.sleep(0.5)
            base_pss, base_rss = memory_kb(proxy.pids())
            argv = [self.client, "-m", "idle", "-p", str(proxy.port), "-n", str(self.idle),
                    "-c", str(self.conc), "-t", str(self.client_limit)]
            client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            ready = select.select([client.stdout], [], [], self.client_limit + 10)[0]
            line = client.stdout.readline() if ready else ""
            if not line.startswith("ready "):
                raise BenchError("idle client never got ready: %r" % line)
            n_ok, n_failed = (int(x) for x in line.split()[1:3])
            if n_ok != self.idle or n_failed:
                raise BenchError("idle client: %d sessions ready, %d failed" % (n_ok, n_failed))
            # Let every session settle (late tickets, lazy buffers), then
            # take the larger of two readings a moment apart.
            time.sleep(1.0)
            pids = proxy.pids()
            pss1, rss1 = memory_kb(pids)
            time.sleep(0.5)
            pss2, rss2 = memory_kb(proxy.pids())
            pss, rss = max(pss1, pss2), max(rss1, rss2)
            out, err = client.communicate(timeout=60)   # closes its stdin: release
            res = parse_kv(out.strip().splitlines()[-1]) if out.strip() else {}
            if res.get("dropped", "0") != "0":
                raise BenchError("the proxy closed %s idle sessions early" % res.get("dropped"))
            client = None
            per_pss = (pss - base_pss) / self.idle
            per_rss = (rss - base_rss) / self.idle
            self.values[name]["mem_idle"].append(per_pss)
            self.values[name]["rss_idle"].append(per_rss)
            self.raw.append("run=%d proxy=%s figure=mem_idle sessions=%d procs=%d "
                            "pss_base_kib=%d pss_kib=%d rss_base_kib=%d rss_kib=%d "
                            "pss_kib_per_session=%.2f rss_kib_per_session=%.2f"
                            % (rnd, name, self.idle, len(pids), base_pss, pss, base_rss, rss,
                               per_pss, per_rss))
        finally:
            if client is not None:
                client.kill()
                client.wait()
            proxy.stop()

    def run(self):
        t_start = time.monotonic()
        self.load_before = os.getloadavg()[0]
        proxies = [PROXIES[n](self) for n in self.names]
        for rnd in range(1, self.repeat + 1):
            # rotate the order so no proxy always runs first or last
            k = (rnd - 1) % len(proxies)
            for p in proxies[k:] + proxies[:k]:
                for what, fn in (("cpu", self.measure_cpu), ("idle", self.measure_idle)):
                    if what == "idle" and rnd > self.idle_repeat:
                        continue
                    print("bench: run %d/%d %-8s %s" % (rnd, self.repeat, p.name, what),
                          file=sys.stderr, flush=True)
                    try:
                        fn(p, rnd)
                    except BenchError as e:
                        msg = "run %d %s %s: %s" % (rnd, p.name, what, e)
                        print("bench: FAILED " + msg, file=sys.stderr, flush=True)
                        self.failures.append(msg)
        self.elapsed = time.monotonic() - t_start
        self.load_after = os.getloadavg()[0]

    # ---- report

    def report(self):
        figs = [
            ("cpu_session", "CPU per session", "us"),
            ("cpu_mib", "CPU per MiB relayed", "ms"),
            ("mem_idle", "memory per idle session (Pss)", "KiB"),
            ("rss_idle", "memory per idle session (Rss)", "KiB"),
        ]
        med = {n: {f: (statistics.median(v) if v else None) for f, v in d.items()}
               for n, d in self.values.items()}
        others = [n for n in self.names if n != "mailshim"]
        lines = []
        lines.append("mailshim benchmark: %d full sessions at concurrency %d; %d MiB in %d "
                     "stream(s); %d idle sessions; median of %d run(s) (idle: %d)"
                     % (self.sessions, self.conc, self.mib, self.streams, self.idle,
                        self.repeat, min(self.repeat, self.idle_repeat)))
        for n in self.names:
            if n in self.tls:
                lines.append("  %-9s TLS: %s" % (n, self.tls[n]))
        ncpu = os.cpu_count() or 1
        load = max(self.load_before, self.load_after)
        if load > ncpu:
            lines.append("  note: the machine was busy (load average %.1f on %d CPUs): CPU "
                         "figures are noisy; compare ratios, or run again when idle"
                         % (load, ncpu))
        lines.append("")
        w = 40
        lines.append("%-*s" % (w, "absolute (lower is better)") +
                     "".join("%12s" % n for n in self.names))
        for f, label, unit in figs:
            cells = []
            for n in self.names:
                v = med[n][f]
                cells.append("%12s" % ("-" if v is None else "%.2f" % v))
            lines.append("%-*s" % (w, "%s (%s)" % (label, unit)) + "".join(cells))
        lines.append("")
        lines.append("%-*s" % (w, "ratio mailshim/X (<1: mailshim better)") +
                     "".join("%12s" % n for n in others))
        for f, label, unit in figs:
            cells = []
            m = med["mailshim"][f]
            for n in others:
                v = med[n][f]
                if m is None or v is None or v <= 0:
                    cells.append("%12s" % "-")
                else:
                    cells.append("%12.2f" % (m / v))
            lines.append("%-*s" % (w, label) + "".join(cells))
        lines.append("")
        for f, label, unit in figs[:3]:
            m = med["mailshim"][f]
            cand = [(med[n][f], n) for n in others if med[n][f] is not None]
            if m is None or not cand:
                lines.append("%s: not measured" % label)
                continue
            best_v, best_n = min(cand)
            beats = m < best_v
            ratio = ("%.2f" % (m / best_v)) if best_v > 0 else "-"
            lines.append("%s: mailshim %.2f %s vs best competitor %s %.2f %s -> mailshim/%s = "
                         "%s: %s" % (label, m, unit, best_n, best_v, unit, best_n, ratio,
                                     "mailshim BEATS the best competitor" if beats
                                     else "mailshim does NOT beat the best competitor"))
        if self.failures:
            lines.append("")
            lines.append("could not run:")
            lines.extend("  " + x for x in self.failures)
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)

        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, "results.txt")
        with open(path, "w") as f:
            f.write("# mailshim benchmark raw results, %s, %d CPU(s), clk_tck=%d, elapsed %.0fs\n"
                    % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.cpu_count() or 0, CLK_TCK,
                       self.elapsed))
            f.write("# mailshim binary: %s\n" % self.mailshim)
            f.write("# load average (1 min) before %.2f after %.2f\n"
                    % (self.load_before, self.load_after))
            for n in self.names:
                f.write("# %s TLS: %s\n" % (n, self.tls.get(n, "-")))
            f.write("\n".join(self.raw) + "\n\n")
            for n in self.names:
                for fig, _, unit in figs:
                    v = med[n][fig]
                    f.write("median proxy=%s figure=%s unit=%s value=%s\n"
                            % (n, fig, unit, "-" if v is None else "%.3f" % v))
            f.write("\n" + text)
        print("raw numbers: %s" % path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mailshim", required=True, help="the mailshim binary")
    ap.add_argument("--out", required=True, help="directory with client and sink; results")
    args = ap.parse_args()

    # Stop cleanly (and stop every process we started) on TERM and HUP too.
    def on_signal(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    try:
        b = Bench(args)
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    try:
        b.setup()
        b.run()
        b.report()
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        b.cleanup()
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
