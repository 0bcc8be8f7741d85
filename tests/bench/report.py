"""The bench's figures and its report: medians, targets, the floor's
multiples, results.txt and the bar chart (bench.py's Bench takes these
methods)."""

import os
import statistics
import sys
import time

from procs import CLK_TCK

# --------------------------------------------------------------------------
# the figures: key, label, unit, "low" or "high" is better

FIGS = [
    ("cpu_session", "CPU/session, implicit TLS, saturated", "us", "low"),
    ("cpu_session_paced", "CPU/session, implicit TLS, paced", "us", "low"),
    ("cpu_mib", "CPU/MiB, implicit TLS, saturated", "ms", "low"),
    ("cpu_mib_paced", "CPU/MiB, implicit TLS, paced", "ms", "low"),
    ("st_cpu_session", "CPU/session, STARTTLS->plain, saturated", "us", "low"),
    ("st_cpu_session_paced", "CPU/session, STARTTLS->plain, paced", "us", "low"),
    ("st_cpu_mib", "CPU/MiB, STARTTLS->plain, saturated", "ms", "low"),
    ("st_cpu_mib_paced", "CPU/MiB, STARTTLS->plain, paced", "ms", "low"),
    ("ch_cpu_session", "CPU/session, STARTTLS->STARTTLS, saturated", "us", "low"),
    ("ch_cpu_session_paced", "CPU/session, STARTTLS->STARTTLS, paced", "us", "low"),
    ("ch_cpu_mib", "CPU/MiB, STARTTLS->STARTTLS, saturated", "ms", "low"),
    ("ch_cpu_mib_paced", "CPU/MiB, STARTTLS->STARTTLS, paced", "ms", "low"),
    ("pl_cpu_session", "CPU/session, no TLS (plain->plain), saturated", "us", "low"),
    ("pl_cpu_session_paced", "CPU/session, no TLS (plain->plain), paced", "us", "low"),
    ("pl_cpu_mib", "CPU/MiB, no TLS (plain->plain), saturated", "ms", "low"),
    ("pl_cpu_mib_paced", "CPU/MiB, no TLS (plain->plain), paced", "ms", "low"),
    ("cpu_session_resumed", "CPU/session, tickets offered, saturated", "us", "low"),
    ("resumed", "handshakes resumed when tickets offered", "%", "high"),
    ("mem_idle", "memory/idle session (Pss)", "KiB", "low"),
    ("rss_idle", "memory/idle session (Rss)", "KiB", "low"),
    ("sps_w1", "sessions/s saturated, 1 worker", "1/s", "high"),
    ("sps_w2", "sessions/s saturated, 2 workers", "1/s", "high"),
    ("scaling", "scaling 1 -> 2 workers", "x", "high"),
    ("client_cpu", "load client's CPU/session, 1 worker, saturated", "us", "low"),
    ("sps_cap1", "sessions/s, 1 worker held to a CPU share", "1/s", "high"),
    ("sps_cap2", "sessions/s, 2 workers held to a share each", "1/s", "high"),
    ("scaling_cap", "scaling 1 -> 2 workers, held to a share", "x", "high"),
    ("lat_p50", "added latency per transaction, p50", "ms", "low"),
    ("lat_p99", "added latency per transaction, p99", "ms", "low"),
    ("lat1_p50", "added latency, every process on one CPU, p50", "ms", "low"),
    ("lat1_p99", "added latency, every process on one CPU, p99", "ms", "low"),
    ("held", "idle sessions one worker holds", "sessions", "high"),
    ("held_mem", "memory/session at that count (Pss)", "KiB", "low"),
]
FIG = {f[0]: f for f in FIGS}
# shown for reading the others (what bounds sessions/s), not compared
NOT_COMPARED = {"client_cpu"}
# the shapes of load a CPU figure comes in, and the prefix of its keys
SHAPES = (("implicit", ""), ("starttls", "st_"), ("chain", "ch_"), ("plain", "pl_"))


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v.strip('"')
    return out


def fmt(v, unit=None):
    if v is None:
        return "-"
    if unit in ("1/s", "sessions", " sessions") or abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 100:
        return "%.1f" % v
    return "%.2f" % v


class Report:
    """Bench's report: medians, targets and the files it writes."""

    def medians(self):
        med = {n: {f: (statistics.median(v) if v else None) for f, v in d.items()}
               for n, d in self.values.items()}
        for n in self.names:
            m = med[n]
            # A scaling factor compares the two runs of one round (closer in
            # time, so nearer the same load on the machine than two
            # medians), then takes the median over the rounds.
            for fig, one, two in (("scaling", "sps_w1", "sps_w2"),
                                  ("scaling_cap", "sps_cap1", "sps_cap2")):
                ratios = [self.by_round[(n, two, r)] / self.by_round[(n, one, r)]
                          for r in range(1, self.repeat + 1)
                          if (n, one, r) in self.by_round and (n, two, r) in self.by_round]
                if ratios:
                    m[fig] = statistics.median(ratios)
        return med

    def best_peer(self, med, fig):
        cand = [(med[n][fig], n) for n in self.names
                if n != "mailshim" and med[n][fig] is not None]
        if not cand:
            return None, None
        return (max(cand) if FIG[fig][3] == "high" else min(cand))

    def targets(self, med):
        """(PASS|MISS, text) per target."""
        m = med["mailshim"]
        out = []

        def check(label, v, limit, at_most, unit="x", detail=""):
            if v is None:
                out.append(("----", "%s: not measured" % label))
                return
            ok = v <= limit if at_most else v >= limit
            margin = ((limit - v) if at_most else (v - limit)) / limit * 100
            out.append(("PASS" if ok else "MISS",
                        "%s: %s%s (target %s %s%s, margin %+.0f%%)%s"
                        % (label, fmt(v, unit), unit, "<=" if at_most else ">=",
                           fmt(limit, unit), unit, margin, detail)))

        def vs_peer(fig, limit, what):
            bv, bn = self.best_peer(med, fig)
            if m[fig] is None or not bv:
                check(what, None, limit, True)
                return
            check(what, m[fig] / bv, limit, True,
                  detail="  [%s %s vs %s %s]" % (fmt(m[fig]), FIG[fig][2], bn, fmt(bv)))

        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain"),
                           ("ch_", "STARTTLS->STARTTLS")):
            for pace in ("", "_paced"):
                tag = "%s, %s" % (shape, "paced" if pace else "saturated")
                vs_peer(pre + "cpu_session" + pace, 0.5, "CPU/session <= 0.5x best peer, " + tag)
                floor = self.floor.get("hs_server")
                if floor and pre == "ch_":
                    floor += self.floor["hs_client"]
                f, pl = pre + "cpu_session" + pace, m["pl_cpu_session" + pace]
                check("CPU/session <= 2x handshake floor, " + tag,
                      m[f] / floor if m[f] is not None and floor else None, 2.0, True,
                      detail="  [%s us vs %s; with no TLS the dialogue alone costs %s us]"
                      % (fmt(m[f]), fmt(floor), fmt(pl)) if pl is not None and floor else "")
        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain"),
                           ("ch_", "STARTTLS->STARTTLS")):
            for pace in ("", "_paced"):
                vs_peer(pre + "cpu_mib" + pace, 0.65, "CPU/MiB <= 0.65x best peer, %s, %s"
                        % (shape, "paced" if pace else "saturated"))
        vs_peer("mem_idle", 0.25, "memory/idle session <= 0.25x best peer")
        check("sessions/s 1 -> 2 workers >= 1.8x, each worker held to %.2f CPU"
              % self.cap_share, m["scaling_cap"], 1.8, False)
        check("sessions/s 1 -> 2 workers >= 1.8x, uncapped (load client on the same CPUs)",
              m["scaling"], 1.8, False)
        check("one worker holds >= 9000 idle sessions", m["held"], 9000, False, unit=" sessions",
              detail="  [tried %d]" % self.max_idle)
        check("p99 added latency <= 1 ms", m["lat_p99"], 1.0, True, unit=" ms",
              detail="  [every process on one CPU: %s ms]" % fmt(m["lat1_p99"])
              if m["lat1_p99"] is not None else "")
        return out

    def wake_line(self):
        if not self.wake["same"] or not self.wake["cross"]:
            return None
        same = statistics.median(self.wake["same"])
        cross = statistics.median(self.wake["cross"])
        # 6 round trips, each with two wake-ups (the sink's, the client's)
        return ("wake-ups across CPUs (this machine): the paced direct transaction takes "
                "p50 %.2f ms with the client and the sink on one CPU, %.2f ms on two: "
                "%+.0f us a wake-up that crosses to the other CPU (12 a transaction)"
                % (same, cross, (cross - same) * 1e3 / 12))

    def tls_share(self, med):
        """Lines: what TLS adds to mailshim's figures (implicit TLS minus
        the same dialogue with no TLS), against the floor."""
        mm, fl, out = med["mailshim"], self.floor, []
        for pace, what in (("", "saturated"), ("_paced", "paced")):
            tls, pl = mm["cpu_session" + pace], mm["pl_cpu_session" + pace]
            tm, pm = mm["cpu_mib" + pace], mm["pl_cpu_mib" + pace]
            if None in (tls, pl, tm, pm):
                continue
            out.append("  %s: the dialogue with no TLS costs mailshim %s us a session "
                       "(%.1fx the handshake floor by itself); TLS adds %s us (%.1fx the "
                       "floor); a MiB: %s ms with no TLS, TLS adds %s ms (%.1fx AES-GCM)"
                       % (what, fmt(pl), pl / fl["hs_server"], fmt(tls - pl),
                          (tls - pl) / fl["hs_server"], fmt(pm), fmt(tm - pm),
                          (tm - pm) / fl["mib"]))
        if out:
            out.insert(0, "what TLS adds (mailshim, implicit TLS minus the same dialogue "
                       "plain->plain):")
        return out

    def above_floor(self, med):
        """Lines: each proxy's CPU per session less its own library's
        server-side handshake floor (mailshim: BoringSSL; the peers:
        OpenSSL), i.e. what the proxy itself adds to the library's work."""
        fl, out = self.floor, []
        if "peer_hs_server" not in fl:
            return out
        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain")):
            for pace in ("", "_paced"):
                fig, cells, own, best = pre + "cpu_session" + pace, [], None, None
                for n in self.names:
                    v = med[n][fig]
                    if v is None:
                        continue
                    left = v - (fl["hs_server"] if n == "mailshim" else fl["peer_hs_server"])
                    cells.append("%s %s" % (n, fmt(left)))
                    if n == "mailshim":
                        own = left
                    elif best is None or left < best:
                        best = left
                if own is None or best is None:
                    continue
                out.append("  %s, %s: %s us (mailshim / best peer %.2f)"
                           % (shape, "paced" if pace else "saturated", ", ".join(cells),
                              own / best if best > 0 else float("nan")))
        if out:
            out.insert(0, "CPU/session less each one's own library's handshake floor (what "
                       "the proxy adds to BoringSSL's or OpenSSL's work):")
        return out

    def report(self):
        med = self.medians()
        lines = []
        lines.append("mailshim benchmark: %d sessions at concurrency %d (paced: %d at %d/s); "
                     "%d MiB in %d streams (paced: %d MiB at %d MiB/s); %d idle; %d resumed; "
                     "median of %d run(s)"
                     % (self.sessions, self.conc, self.paced_sessions, self.rate, self.mib,
                        self.streams, self.paced_mib, self.paced_mibps, self.idle,
                        self.resume_n, self.repeat))
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
        w = 50
        lines.append("%-*s%6s" % (w, "figure", "unit") + "".join("%10s" % n for n in self.names)
                     + "%10s%10s" % ("best peer", "m/best"))
        for fig, label, unit, better in FIGS:
            cells = "".join("%10s" % fmt(med[n][fig], unit) for n in self.names)
            bv, bn = self.best_peer(med, fig) if fig not in NOT_COMPARED else (None, None)
            mv = med["mailshim"][fig]
            ratio = "%.2f" % (mv / bv) if mv is not None and bv else "-"
            lines.append("%-*s%6s%s%10s%10s" % (w, label, unit, cells, bn or "-", ratio))
        d = med["direct"]
        lines.append("%-*s%6s%10s%10s" % (w, "transaction direct to the sink, p50 / p99", "ms",
                                         fmt(d["txn_p50"]), fmt(d["txn_p99"])))
        lines.append("%-*s%6s%10s%10s" % (w, "the same, every process on one CPU, p50 / p99",
                                         "ms", fmt(d["txn1_p50"]), fmt(d["txn1_p99"])))
        lines.append("(m/best: mailshim / best peer; < 1 is better for low-is-better figures. "
                     "Added latency: the proxy's p50/p99 minus that of the same paced "
                     "transactions sent at the same time straight to the sink; on one CPU: "
                     "the client, the proxy and the sink pinned to one CPU, the direct run "
                     "just before.)")
        wake = self.wake_line()
        if wake:
            lines.append("")
            lines.append(wake)
        if self.floor:
            fl = self.floor
            lines.append("")
            lines.append("floor (this machine): one whole TLS 1.3 handshake in memory "
                         "(floor.c, BoringSSL, the bench's certificate): server side %.0f us, "
                         "client side (chain and name checked) %.0f us; of which the "
                         "public-key operations (bssl-tool speed: X25519 keygen + X25519 + "
                         "ECDSA P-256 sign, or verify) %.0f and %.0f us; AES-128-GCM "
                         "%.3f ms/MiB"
                         % (fl["hs_server"], fl["hs_client"], fl["ops_server"],
                            fl["ops_client"], fl["mib"]))
            if "peer_hs_server" in fl:
                lines.append("the same handshake in the peers' library (floor.c built against "
                             "%s, which stunnel, hitch and haproxy link): server side %.0f us, "
                             "client side %.0f us"
                             % (self.peer_library, fl["peer_hs_server"], fl["peer_hs_client"]))
            mm = med["mailshim"]
            multiples = []
            for fig in ("cpu_session", "cpu_session_paced", "st_cpu_session",
                        "st_cpu_session_paced", "cpu_session_resumed"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / fl["hs_server"]))
            for fig in ("ch_cpu_session", "ch_cpu_session_paced"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / (fl["hs_server"] +
                                                                   fl["hs_client"])))
            for fig in ("cpu_mib", "cpu_mib_paced", "st_cpu_mib", "st_cpu_mib_paced"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / fl["mib"]))
            for fig in ("ch_cpu_mib", "ch_cpu_mib_paced"):
                if mm[fig] is not None:   # decrypt + encrypt
                    multiples.append("%s %.1fx" % (fig, mm[fig] / (2 * fl["mib"])))
            lines.append("mailshim as multiples of the floor (STARTTLS->STARTTLS: of two "
                         "handshakes, of AES twice):")
            for k in range(0, len(multiples), 4):
                lines.append("  " + ", ".join(multiples[k:k + 4]))
            lines.extend(self.tls_share(med))
            lines.extend(self.above_floor(med))
        if self.profile:
            lines.append("")
            lines.append("profile of one mailshim worker (BENCH_PROFILE=1; strace and perf "
                         "slow it: counts, not times):")
            lines.extend("  " + x for x in self.profile)
        lines.append("")
        lines.append("targets:")
        for verdict, text in self.targets(med):
            lines.append("  %s  %s" % (verdict, text))
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
            for n in self.names + ["direct"]:
                for fig, v in sorted(med[n].items()):
                    if v is not None:
                        f.write("median proxy=%s figure=%s value=%.3f\n" % (n, fig, v))
            f.write("\n" + text)
        svg = os.path.join(self.args.out, "bench.svg")
        with open(svg, "w") as f:
            f.write(self.svg(med))
        print("raw numbers: %s\nchart: %s" % (path, svg))

    # ---- the chart

    def svg(self, med):
        """A grouped horizontal bar chart, one group per figure, one bar per
        proxy (and the floor where there is one), each figure normalised to
        its largest value."""
        colors = {"mailshim": "#1f77b4", "stunnel": "#d62728", "hitch": "#2ca02c",
                  "haproxy": "#ff7f0e", "floor": "#7f7f7f"}
        floor_of = {}
        if self.floor:
            fl = self.floor
            for fig in ("cpu_session", "cpu_session_paced", "st_cpu_session",
                        "st_cpu_session_paced"):
                floor_of[fig] = fl["hs_server"]
            for fig in ("ch_cpu_session", "ch_cpu_session_paced"):
                floor_of[fig] = fl["hs_server"] + fl["hs_client"]
            for fig in ("cpu_mib", "cpu_mib_paced", "st_cpu_mib", "st_cpu_mib_paced"):
                floor_of[fig] = fl["mib"]
            for fig in ("ch_cpu_mib", "ch_cpu_mib_paced"):
                floor_of[fig] = 2 * fl["mib"]
        groups = []
        for fig, label, unit, better in FIGS:
            if fig in NOT_COMPARED:
                continue
            bars = [(n, med[n][fig]) for n in self.names if med[n][fig] is not None]
            if fig in floor_of and bars:
                bars.append(("floor", floor_of[fig]))
            if bars:
                groups.append(("%s (%s, %s is better)" % (label, unit, "lower" if better == "low"
                                                            else "higher"), bars))

        def esc(t):
            return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        bar_h, title_h, gap, left, width, top = 13, 16, 10, 150, 600, 64
        height = top + sum(title_h + len(b) * bar_h + gap for _, b in groups) + 20
        out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
               'font-family="sans-serif" font-size="11">' % (left + width + 70, height),
               '<rect width="100%" height="100%" fill="white"/>',
               '<text x="10" y="20" font-size="14" font-weight="bold">mailshim benchmark: '
               'each figure normalised to its largest value; labels are absolute</text>']
        x = 10
        for n in self.names + (["floor"] if floor_of else []):
            label = "floor (BoringSSL: whole handshake, AES-GCM)" if n == "floor" else n
            out.append('<rect x="%d" y="34" width="12" height="12" fill="%s"/>'
                       % (x, colors.get(n, "#9467bd")))
            out.append('<text x="%d" y="44">%s</text>' % (x + 16, esc(label)))
            x += 30 + 7 * len(label)
        y = top
        for title, bars in groups:
            out.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (y + 11, esc(title)))
            y += title_h
            vmax = max(abs(v) for _, v in bars) or 1.0
            for n, v in bars:
                wbar = max(0.0, v) / vmax * width
                out.append('<text x="%d" y="%d" text-anchor="end" font-size="10">%s</text>'
                           % (left - 6, y + bar_h - 3, esc(n)))
                out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                           % (left, y, wbar, bar_h - 2, colors.get(n, "#9467bd")))
                out.append('<text x="%.1f" y="%d" font-size="10">%s</text>'
                           % (left + wbar + 4, y + bar_h - 3, fmt(v)))
                y += bar_h
            y += gap
        out.append("</svg>\n")
        return "\n".join(out)
