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
import json
import os
import random
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from procs import (CLK_TCK, BenchError, CpuCaps, cpu_ticks, env_int, free_port, memory_kb,
                   need_bin, pin, spawn, stop, stop_all, wait_listening)
from proxies import PROXIES, Mailshim
from report import FIGS, SHAPES, Report, parse_kv

class Bench(Report):
    def __init__(self, args):
        self.args = args
        self.mailshim = os.path.abspath(args.mailshim)
        self.client = os.path.join(args.out, "client")
        self.sink_bin = os.path.join(args.out, "sink")
        self.floor_bin = os.path.join(args.out, "floor")
        self.floor_peer_bin = os.path.join(args.out, "floor-openssl")
        quick = bool(os.environ.get("BENCH_QUICK"))
        self.quick = quick
        self.sessions = env_int("BENCH_SESSIONS", 300 if quick else 2000)
        self.conc = env_int("BENCH_CONC", 50)
        # about 1.5 s of a proxy's CPU: 150 clock ticks, not 40
        self.mib = env_int("BENCH_MIB", 32 if quick else 1024)
        self.streams = env_int("BENCH_STREAMS", 4)
        self.idle = env_int("BENCH_IDLE", 300 if quick else 2000)
        self.repeat = env_int("BENCH_REPEAT", 1 if quick else 3)
        self.idle_repeat = env_int("BENCH_IDLE_REPEAT", 1)
        self.rate = env_int("BENCH_RATE", 100)
        self.paced_sessions = env_int("BENCH_PACED_SESSIONS", 100 if quick else 500)
        # 8 s at 32 MiB/s: a paced bulk run spans 15-30 clock ticks of CPU
        # at 64 MiB, too few to tell two proxies apart.
        self.paced_mib = env_int("BENCH_PACED_MIB", 16 if quick else 256)
        self.paced_mibps = env_int("BENCH_PACED_MIBPS", 32)
        self.resume_n = env_int("BENCH_RESUME", 200 if quick else 1000)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lim = soft if soft != resource.RLIM_INFINITY else 20000
        # two descriptors a session, a few dozen for the proxy itself
        self.max_idle = env_int("BENCH_MAX_IDLE", 1000 if quick else max(100, (lim - 64) // 2))
        self.client_limit = env_int("BENCH_CLIENT_TIMEOUT", 120)
        # Each worker's share of a CPU in the capped scaling figure: two
        # capped workers and the load client (which needs more CPU per
        # session than a worker) must fit in the machine with room to spare.
        self.cap_share = env_int("BENCH_CAP_PERCENT", 25) / 100.0
        self.cap_sessions = env_int("BENCH_CAP_SESSIONS", 300 if quick else 2000)
        self.caps = None
        names = os.environ.get("BENCH_PROXIES", "mailshim stunnel hitch haproxy").split()
        for n in names:
            if n not in PROXIES:
                raise BenchError("unknown proxy in BENCH_PROXIES: %s" % n)
        if "mailshim" not in names:
            names.insert(0, "mailshim")
        self.names = names
        self.tmp = None
        self.fixture = None
        self.raw = []          # lines for results.txt
        self.values = {n: {f[0]: [] for f in FIGS} for n in names + ["direct"]}
        self.by_round = {}     # (proxy, figure, round): value
        for n in names + ["direct"]:
            self.values[n].update({k: [] for k in ("txn_p50", "txn_p99", "txn1_p50",
                                                    "txn1_p99")})
        # the direct transaction, client and sink on one CPU, then on two
        self.wake = {"same": [], "cross": []}
        self.cpus = sorted(os.sched_getaffinity(0))
        self.floor = {}
        self.peer_library = "OpenSSL"
        self.profile = []
        self.tls = {}
        self.failures = []

    # ---- setup

    def setup(self):
        for f in (self.client, self.sink_bin, self.floor_bin, self.floor_peer_bin,
                  self.mailshim):
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
        # The STARTTLS upstream of the STARTTLS -> STARTTLS shape: a
        # mailshim (STARTTLS -> plain sink), the same for every proxy and
        # never measured.
        self.fixture = Mailshim(self, "fixture", workers=2)
        self.fixture.start("fixture")
        self.caps = CpuCaps()

    def cleanup(self):
        stop_all()
        if self.caps is not None:
            self.caps.close()
        if self.tmp and not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the floor: what the work itself costs with BoringSSL

    def bssl_speed(self, group, chunks=None):
        """{description: CPU microseconds per call} of one bssl speed
        group, scaled from wall to the CPU time the tool really used."""
        argv = [need_bin("bssl-tool"), "speed", "-filter", group, "-json",
                "-timeout", "1"]
        if chunks:
            argv += ["-chunks", str(chunks)]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise BenchError("bssl-tool speed -filter %s: %s" % (group, err.strip()))
        ops, wall = {}, 0
        for line in out.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                d = json.loads(line)
                ops[d["description"]] = d["microseconds"] / d["numCalls"]
                wall += d["microseconds"]
        return ops, wall

    def measure_floor(self):
        table = {}
        for group, chunks in (("25519", None), ("P-256", None), ("AES-128-GCM", 16384)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            ops, wall = self.bssl_speed(group, chunks)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e6
            scale = min(1.0, cpu / wall) if wall > 0 else 1.0
            for k, v in ops.items():
                table[k] = v * scale
                self.raw.append("floor op=%r us_per_call=%.3f (wall %.3f, cpu/wall %.3f)"
                                % (k, v * scale, v, scale))

        def op(name):
            if name not in table:
                raise BenchError("bssl-tool speed printed no %r" % name)
            return table[name]
        x = op("Curve25519 base-point multiplication") + \
            op("Curve25519 arbitrary point multiplication")
        self.floor["ops_server"] = x + op("ECDSA P-256 signing")
        self.floor["ops_client"] = x + op("ECDSA P-256 verify")
        self.floor["mib"] = op("AES-128-GCM (16384 bytes) seal") * 64 / 1000.0
        # The whole handshake (floor.c): the public-key operations above
        # and what they leave out (transcript hashes, key schedule, the
        # certificate message, tickets, SSL_new and SSL_free), in memory.
        # The median of five runs: this figure is the one the ratios use.
        # The same program built against OpenSSL gives the peers' floor
        # ("peer_hs_*"): how much of a lead is the library's.
        for exe, pre in ((self.floor_bin, "hs_"), (self.floor_peer_bin, "peer_hs_")):
            whole = []
            for _ in range(5):
                r = subprocess.run([exe, self.cert, self.key, "1000"],
                                   capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    raise BenchError("%s: status %d: %s"
                                     % (os.path.basename(exe), r.returncode, r.stderr.strip()))
                whole.append(parse_kv(r.stdout.strip().splitlines()[-1]))
                self.raw.append("floor whole handshake " + r.stdout.strip())
            for side in ("server", "client"):
                self.floor[pre + side] = statistics.median(
                    float(w["hs_%s_us" % side]) for w in whole)
            if pre == "peer_hs_":
                self.peer_library = whole[0].get("library", "OpenSSL")
        self.raw.append("floor hs_server_us=%.1f hs_client_us=%.1f peer_hs_server_us=%.1f "
                        "peer_hs_client_us=%.1f ops_server_us=%.1f "
                        "ops_client_us=%.1f aes_ms_per_mib=%.3f"
                        % (self.floor["hs_server"], self.floor["hs_client"],
                           self.floor["peer_hs_server"], self.floor["peer_hs_client"],
                           self.floor["ops_server"], self.floor["ops_client"],
                           self.floor["mib"]))

    # ---- client runs

    def client_argv(self, mode, port, n, c, body=None, extra=()):
        argv = [self.client, "-m", mode, "-p", str(port), "-n", str(n), "-c", str(c),
                "-t", str(self.client_limit)] + list(extra)
        if body is not None:
            argv += ["-b", str(body)]
        return argv

    def run_client(self, mode, port, n, c, body=None, extra=(), cpus=None):
        argv = self.client_argv(mode, port, n, c, body, extra)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pre = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        try:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=self.client_limit + 30, preexec_fn=pre)
        except subprocess.TimeoutExpired:
            raise BenchError("client %s did not finish in time" % mode) from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = r.stdout.strip().splitlines()
        res = parse_kv(lines[-1]) if lines else {}
        res["client_cpu_s"] = "%.3f" % ((after.ru_utime - before.ru_utime) +
                                        (after.ru_stime - before.ru_stime))
        if r.returncode != 0 or res.get("ok") != str(n):
            raise BenchError("client %s %s on port %d: status %d: %s %s"
                             % (mode, " ".join(extra), port, r.returncode, r.stdout.strip(),
                                r.stderr.strip()))
        return res

    def note_tls(self, name, res):
        self.tls[name] = "%s %s %s" % (res.get("version"), res.get("cipher"), res.get("group"))

    def put(self, name, fig, v, rnd, **info):
        self.values[name][fig].append(v)
        self.by_round[(name, fig, rnd)] = v
        self.raw.append("run=%d proxy=%s figure=%s value=%.3f %s"
                        % (rnd, name, fig, v, " ".join("%s=%s" % kv for kv in info.items())))

    def cpu_of(self, proxy, fn):
        """(result of fn(), CPU seconds the proxy spent during it)."""
        t0 = cpu_ticks(proxy.pids())
        res = fn()
        t1 = cpu_ticks(proxy.pids())
        return res, (t1 - t0) / CLK_TCK

    # ---- the figures

    def measure_shape(self, proxy, rnd):
        """CPU per session and per MiB of one shape, saturated and paced;
        for implicit TLS also the sessions/s of one worker, the latency and
        the resumption figures."""
        name, pre = proxy.name, dict(SHAPES)[proxy.shape]
        flags = {"implicit": [], "plain": ["-P"]}.get(proxy.shape, ["-s"])
        port = None
        proxy.start("cpu%d" % rnd)
        try:
            port = proxy.port
            self.run_client("sessions", port, 20, 5, extra=flags)   # warm-up

            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "sessions", port, self.sessions, self.conc, extra=flags))
            if proxy.shape == "implicit":
                self.note_tls(name, res)
                sps = self.sessions / max(float(res["secs"]), 1e-6)
                self.put(name, "sps_w1", sps, rnd, secs=res["secs"])
                self.put(name, "client_cpu", float(res["client_cpu_s"]) * 1e6 / self.sessions,
                         rnd)
            self.put(name, pre + "cpu_session", cpu * 1e6 / self.sessions, rnd,
                     sessions=self.sessions, conc=self.conc, cpu_s=cpu, secs=res["secs"])

            per = self.mib * 1024 * 1024 // self.streams
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "bulk", port, self.streams, self.streams, per, extra=flags))
            self.put(name, pre + "cpu_mib", cpu * 1e3 / self.mib, rnd, mib=self.mib,
                     streams=self.streams, cpu_s=cpu, secs=res["secs"])

            # Implicit TLS: the same paced transaction goes straight to
            # the sink at the same time, so both see the same load on the
            # machine; the added latency is the difference.
            direct = None
            if proxy.shape == "implicit":
                direct = subprocess.Popen(
                    self.client_argv("sessions", self.upstream, self.paced_sessions, self.conc,
                                     extra=["-P", "-R", str(self.rate)]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
            try:
                res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                    "sessions", port, self.paced_sessions, self.conc,
                    extra=flags + ["-R", str(self.rate)]))
            finally:
                if direct is not None:
                    try:
                        dout, _ = direct.communicate(timeout=self.client_limit + 30)
                    except subprocess.TimeoutExpired:
                        direct.kill()
                        dout, _ = direct.communicate()
            self.put(name, pre + "cpu_session_paced", cpu * 1e6 / self.paced_sessions, rnd,
                     sessions=self.paced_sessions, rate=self.rate, cpu_s=cpu, secs=res["secs"])
            if direct is not None:
                d = parse_kv(dout.strip().splitlines()[-1]) if dout.strip() else {}
                if direct.returncode != 0 or d.get("ok") != str(self.paced_sessions):
                    raise BenchError("direct client: status %d: %s"
                                     % (direct.returncode, dout.strip()))
                for q in ("p50", "p99"):
                    via = float(res["lat_%s_us" % q]) / 1e3
                    straight = float(d["lat_%s_us" % q]) / 1e3
                    self.put(name, "txn_" + q, via, rnd)
                    self.put("direct", "txn_" + q, straight, rnd, beside=name)
                    self.put(name, "lat_" + q, via - straight, rnd)

            per = self.paced_mib * 1024 * 1024 // self.streams
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "bulk", port, self.streams, self.streams, per,
                extra=flags + ["-R", str(self.paced_mibps)]))
            self.put(name, pre + "cpu_mib_paced", cpu * 1e3 / self.paced_mib, rnd,
                     mib=self.paced_mib, mibps=self.paced_mibps, cpu_s=cpu, secs=res["secs"])

            if proxy.shape == "implicit":
                res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                    "sessions", port, self.resume_n, self.conc, extra=["-r"]))
                self.put(name, "resumed", 100.0 * int(res["resumed"]) / self.resume_n, rnd,
                         resumed=res["resumed"], sessions=self.resume_n)
                self.put(name, "cpu_session_resumed", cpu * 1e6 / self.resume_n, rnd,
                         cpu_s=cpu, secs=res["secs"])
                self.measure_one_cpu(proxy, rnd)
        finally:
            proxy.stop()

    def paced_direct(self, cpus):
        """The paced transaction straight to the sink, its client on cpus:
        its p50 and p99 in ms."""
        d = self.run_client("sessions", self.upstream, self.paced_sessions, self.conc,
                            extra=["-P", "-R", str(self.rate)], cpus=cpus)
        return float(d["lat_p50_us"]) / 1e3, float(d["lat_p99_us"]) / 1e3

    def measure_one_cpu(self, proxy, rnd):
        """The added latency with the client, the proxy and the sink all
        on one CPU, where no hop wakes a process on the other CPU: the
        direct run, then the one through the proxy (one after the other:
        on one CPU two clients at once would delay each other)."""
        if len(self.cpus) < 2:
            return
        one = {self.cpus[-1]}
        try:
            refused = pin(proxy.pids() + [self.sink.pid], one)
            if refused:
                raise BenchError("%s: could not pin threads %s to one CPU"
                                 % (proxy.name, refused))
            straight = self.paced_direct(one)
            res = self.run_client("sessions", proxy.port, self.paced_sessions, self.conc,
                                  extra=["-R", str(self.rate)], cpus=one)
        finally:
            pin(proxy.pids() + [self.sink.pid], set(self.cpus))
        for q, s in zip(("p50", "p99"), straight):
            via = float(res["lat_%s_us" % q]) / 1e3
            self.put(proxy.name, "txn1_" + q, via, rnd)
            self.put("direct", "txn1_" + q, s, rnd, beside=proxy.name)
            self.put(proxy.name, "lat1_" + q, via - s, rnd)

    def measure_wake(self, rnd):
        """What a wake-up on the other CPU costs this machine: the direct
        transaction (6 round trips, each waking the sink and the client
        once) with the client and the sink on one CPU, then on two."""
        if len(self.cpus) < 2:
            return
        a, b = {self.cpus[0]}, {self.cpus[1]}
        try:
            for key, sink_cpu in (("same", a), ("cross", b)):
                if pin([self.sink.pid], sink_cpu):
                    raise BenchError("could not pin the sink to one CPU")
                p50, _ = self.paced_direct(a)
                self.wake[key].append(p50)
                self.raw.append("run=%d wake direct client and sink on %s: p50=%.3f ms"
                                % (rnd, "one CPU" if key == "same" else "two CPUs", p50))
        finally:
            pin([self.sink.pid], set(self.cpus))

    def measure_workers2(self, proxy, rnd):
        proxy.start("w2-%d" % rnd)
        try:
            self.run_client("sessions", proxy.port, 20, 5)
            res = self.run_client("sessions", proxy.port, self.sessions, self.conc)
            sps = self.sessions / max(float(res["secs"]), 1e-6)
            self.put(proxy.name, "sps_w2", sps, rnd, secs=res["secs"],
                     client_cpu_us_per_session="%.0f" % (
                         float(res["client_cpu_s"]) * 1e6 / self.sessions))
        finally:
            proxy.stop()

    def measure_capped(self, proxy, rnd):
        """Sessions/s with each worker held to self.cap_share of a CPU."""
        proxy.start("cap%d-%d" % (proxy.workers, rnd))
        try:
            for pid, n in proxy.worker_shares():
                self.caps.cap(pid, n * self.cap_share)
            self.run_client("sessions", proxy.port, 20, 5)
            t0 = self.caps.throttled()
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "sessions", proxy.port, self.cap_sessions, self.conc))
            secs = max(float(res["secs"]), 1e-6)
            # A worker that never ran out of its quota was not bound by it:
            # the figure would measure the machine again.
            throttled = self.caps.throttled() - t0
            if throttled == 0:
                raise BenchError("%s: no worker reached its CPU cap" % proxy.name)
            self.put(proxy.name, "sps_cap%d" % proxy.workers, self.cap_sessions / secs, rnd,
                     secs=res["secs"], cpu_share=self.cap_share, throttled=throttled,
                     cpu_used="%.2f" % (cpu / secs))
        finally:
            proxy.stop()
            self.caps.release()

    def idle_sessions(self, proxy, n, strict):
        """Opens n idle sessions; returns (ready, held, pss, rss, base_pss,
        base_rss, procs)."""
        self.run_client("sessions", proxy.port, 20, 5)   # warm-up
        time.sleep(0.5)
        base_pss, base_rss = memory_kb(proxy.pids())
        argv = self.client_argv("idle", proxy.port, n, self.conc)
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            ready = select.select([client.stdout], [], [], self.client_limit + 10)[0]
            line = client.stdout.readline() if ready else ""
            if not line.startswith("ready "):
                raise BenchError("idle client never got ready: %r" % line)
            n_ok, n_failed, held = (int(x) for x in line.split()[1:4])
            if strict and (n_ok != n or n_failed):
                raise BenchError("idle client: %d sessions ready, %d failed" % (n_ok, n_failed))
            # Let every session settle (late tickets, lazy buffers), then
            # take the larger of two readings a moment apart.
            time.sleep(1.0)
            pids = proxy.pids()
            pss1, rss1 = memory_kb(pids)
            time.sleep(0.5)
            pss2, rss2 = memory_kb(proxy.pids())
            out, err = client.communicate(timeout=60)   # closes its stdin: release
            res = parse_kv(out.strip().splitlines()[-1]) if out.strip() else {}
            if strict and res.get("dropped", "0") != "0":
                raise BenchError("the proxy closed %s idle sessions early" % res.get("dropped"))
            client = None
            return (n_ok, held, max(pss1, pss2), max(rss1, rss2), base_pss, base_rss,
                    len(pids), res)
        finally:
            if client is not None:
                client.kill()
                client.wait()

    def measure_idle(self, proxy, rnd):
        name = proxy.name
        proxy.start("idle%d" % rnd)
        try:
            _, _, pss, rss, bp, br, procs, _ = self.idle_sessions(proxy, self.idle, True)
            self.put(name, "mem_idle", (pss - bp) / self.idle, rnd, sessions=self.idle,
                     procs=procs, pss_base_kib=bp, pss_kib=pss)
            self.put(name, "rss_idle", (rss - br) / self.idle, rnd, rss_base_kib=br, rss_kib=rss)
        finally:
            proxy.stop()

    def measure_held(self, proxy, rnd):
        """How many idle sessions one worker holds without an error, up to
        the descriptor limit, and the memory per session at that count."""
        proxy.start("held%d" % rnd)
        try:
            n_ok, held, pss, _, bp, _, _, res = self.idle_sessions(proxy, self.max_idle, False)
            self.put(proxy.name, "held", held, rnd, tried=self.max_idle, ready=n_ok,
                     failed=res.get("failed"), dropped=res.get("dropped"),
                     last_error='"%s"' % res.get("last_error", ""))
            if n_ok:
                self.put(proxy.name, "held_mem", (pss - bp) / n_ok, rnd, pss_base_kib=bp,
                         pss_kib=pss)
        finally:
            proxy.stop()

    # ---- optional: where mailshim's time goes (BENCH_PROFILE=1)

    def traced(self, tool_argv, fn):
        """Runs fn() while tool_argv (strace or perf attached to a pid)
        runs; stops the tool with SIGINT and waits for it."""
        log = os.path.join(self.tmp, "profile.log")
        tool = spawn(tool_argv, log)
        time.sleep(1.0)   # attached
        try:
            return fn()
        finally:
            time.sleep(0.3)
            if tool.poll() is None:
                os.kill(tool.pid, signal.SIGINT)
            try:
                tool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            stop(tool)

    def strace_counts(self, worker, fn):
        out = os.path.join(self.tmp, "strace.%d" % random.randint(0, 1 << 30))
        self.traced([need_bin("strace"), "-c", "-p", str(worker), "-o", out], fn)
        counts = {}
        with open(out) as f:
            for line in f:
                t = line.split()
                if len(t) in (5, 6) and t[0][0].isdigit() and t[-1] != "total":
                    counts[t[-1]] = int(t[3])
        return counts

    def perf_top(self, worker, fn):
        out = os.path.join(self.tmp, "perf.%d" % random.randint(0, 1 << 30))
        self.traced([need_bin("perf"), "record", "-F", "1999", "-p", str(worker), "-o", out], fn)
        res = {}
        for key in ("dso", "symbol"):
            r = subprocess.run([need_bin("perf"), "report", "-i", out, "--no-children",
                                "--sort", key, "--stdio"], capture_output=True, text=True,
                               timeout=120)
            rows = [ln.strip() for ln in r.stdout.splitlines()
                    if ln.strip() and not ln.startswith("#")]
            res[key] = [" ".join(x.split()[:3]) for x in rows[:8]]
        return res

    def measure_profile(self):
        proxy = Mailshim(self)
        proxy.start("profile")
        self.profile = []
        try:
            pids = proxy.pids()
            workers = [x for x in pids if x != proxy.proc.pid]
            if len(workers) != 1:
                raise BenchError("expected one worker, found %s" % workers)
            w = workers[0]
            self.run_client("sessions", proxy.port, 20, 5)
            n, mib = 1000, 64
            per = mib * 1024 * 1024 // self.streams
            sess = lambda: self.run_client("sessions", proxy.port, n, self.conc)  # noqa: E731
            bulk = lambda: self.run_client("bulk", proxy.port, self.streams,      # noqa: E731
                                           self.streams, per)
            for what, fn, div, unit in (("session", sess, n, "session"),
                                        ("MiB", bulk, mib, "MiB")):
                c = self.strace_counts(w, fn)
                total = sum(c.values()) / div
                top = sorted(c.items(), key=lambda kv: -kv[1])[:8]
                line = ("syscalls per %s: %.1f (%s)" % (unit, total, ", ".join(
                    "%s %.1f" % (k, v / div) for k, v in top)))
                self.profile.append(line)
                self.raw.append("profile " + line)
                if shutil.which("perf"):
                    t = self.perf_top(w, fn)
                    self.profile.append("  perf, per %s run: by object: %s" % (
                        unit, "; ".join(t["dso"][:5])))
                    self.profile.append("  perf, top symbols: %s" % "; ".join(t["symbol"][:8]))
        finally:
            proxy.stop()

    def step(self, what, fn, *a):
        print("bench: %s" % what, file=sys.stderr, flush=True)
        try:
            fn(*a)
        except BenchError as e:
            print("bench: FAILED %s: %s" % (what, e), file=sys.stderr, flush=True)
            self.failures.append("%s: %s" % (what, e))

    def run(self):
        t_start = time.monotonic()
        self.load_before = os.getloadavg()[0]
        if os.environ.get("BENCH_PROFILE") != "only":
            self.run_figures()
        if os.environ.get("BENCH_PROFILE"):
            self.step("mailshim: strace -c and perf of one worker", self.measure_profile)
        self.elapsed = time.monotonic() - t_start
        self.load_after = os.getloadavg()[0]

    def run_figures(self):
        self.step("floor (bssl-tool speed, floor.c)", self.measure_floor)
        plan = []   # (proxy, what, fn) per round, rotated
        for n in self.names:
            cls = PROXIES[n]
            for shape, _ in SHAPES:
                if shape in cls.shapes:
                    plan.append((cls(self, shape), "cpu " + shape, self.measure_shape))
            if n != "stunnel":   # one thread per connection: no worker count
                plan.append((cls(self, "implicit", 2), "2 workers", self.measure_workers2))
                if self.caps.base is not None:
                    for w in (1, 2):
                        plan.append((cls(self, "implicit", w), "%d worker(s) capped" % w,
                                     self.measure_capped))
        if self.caps.base is None:
            self.failures.append("CPU-capped scaling: %s" % self.caps.why)
        for rnd in range(1, self.repeat + 1):
            self.step("run %d/%d wake-ups across CPUs" % (rnd, self.repeat),
                      self.measure_wake, rnd)
            k = (rnd - 1) % len(plan)
            for proxy, what, fn in plan[k:] + plan[:k]:
                self.step("run %d/%d %-8s %s" % (rnd, self.repeat, proxy.name, what),
                          fn, proxy, rnd)
            if rnd <= self.idle_repeat:
                for n in self.names:
                    self.step("run %d %-8s idle" % (rnd, n), self.measure_idle,
                              PROXIES[n](self), rnd)
        self.step("mailshim: %d idle sessions on one worker" % self.max_idle,
                  self.measure_held, Mailshim(self), 1)


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
