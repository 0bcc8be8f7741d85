"""The bench's processes: /proc readings (CPU ticks, memory), loopback
ports, starting and stopping processes, and CPU caps (cgroups). Used by
bench.py; standard library only."""

import os
import random
import shutil
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_LO, PORT_HI = 20000, 32000


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


class BenchError(Exception):
    """Something needed for a measurement could not run."""


# --------------------------------------------------------------------------
# /proc

def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (rest[0] is
    field 3 of proc(5)), or None when the process is gone."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def proc_tree(root):
    """root and every descendant process, from /proc/*/stat parent links."""
    children = {}
    for d in os.listdir("/proc"):
        rest = stat_fields(d) if d.isdigit() else None
        if rest is not None:
            children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def pin(pids, cpus):
    """Every thread of pids to the set cpus (threads and children made
    later inherit it from the thread that makes them). Returns the
    threads that could not be moved (another user's, when not root); a
    thread that has exited meanwhile is not one of them."""
    refused = []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass
            except OSError:
                refused.append(tid)
    return refused


def cpu_ticks(pids):
    """utime+stime of each process (all its threads, live and exited) plus
    cutime+cstime (its children that exited and were reaped), in ticks."""
    total = 0
    for p in pids:
        rest = stat_fields(p)
        if rest is not None:
            # fields 14-17 of proc(5)
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
# CPU caps: one cgroup per process, for the scaling figure

class CpuCaps:
    """Holds chosen processes to a fixed share of one CPU each, one cgroup
    per process (v2 cpu.max, or v1 cpu.cfs_quota_us). On a 2-CPU machine
    the load client needs more CPU per session than the proxy, so 1 -> 2
    workers uncapped measures the machine; with each worker held to a
    quarter of a CPU, the client has room for both and the ratio measures
    how the proxy spreads its load over its workers."""
    PERIOD_US = 20000

    def __init__(self):
        self.base = None
        self.v2 = False
        self.why = None
        self.groups = []
        try:
            self._find()
        except OSError as e:
            self.why = "cgroups: %s" % e
            self.base = None

    def _find(self):
        root = "/sys/fs/cgroup"
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "cpu" not in f.read().split():
                    self.why = "cgroup v2 without the cpu controller"
                    return
            with open(os.path.join(root, "cgroup.subtree_control")) as f:
                if "cpu" not in f.read().split():
                    with open(os.path.join(root, "cgroup.subtree_control"), "w") as w:
                        w.write("+cpu")
            self.v2 = True
            mount = root
        else:
            mount = None
            with open("/proc/mounts") as f:
                for line in f:
                    dev, path, fstype, opts = line.split()[:4]
                    if fstype == "cgroup" and "cpu" in opts.split(","):
                        mount = path
                        break
            if mount is None:
                self.why = "no cgroup with the cpu controller is mounted"
                return
        base = os.path.join(mount, "mailshim-bench.%d" % os.getpid())
        os.mkdir(base)
        self.base = base
        if self.v2:
            with open(os.path.join(base, "cgroup.subtree_control"), "w") as w:
                w.write("+cpu")

    def cap(self, pid, share):
        """Moves pid (all its threads) into a group of its own that may use
        share of one CPU."""
        if self.base is None:
            raise BenchError("cannot cap CPU: %s" % self.why)
        g = os.path.join(self.base, "p%d" % pid)
        os.mkdir(g)
        self.groups.append(g)
        quota = max(1000, int(share * self.PERIOD_US))
        if self.v2:
            files = [("cpu.max", "%d %d" % (quota, self.PERIOD_US))]
        else:
            files = [("cpu.cfs_period_us", str(self.PERIOD_US)),
                     ("cpu.cfs_quota_us", str(quota))]
        for name, value in files + [("cgroup.procs", str(pid))]:
            with open(os.path.join(g, name), "w") as f:
                f.write(value)

    def throttled(self):
        """Periods in which a capped group ran out of its quota, summed."""
        n = 0
        for g in self.groups:
            try:
                with open(os.path.join(g, "cpu.stat")) as f:
                    for line in f:
                        k, v = line.split()
                        if k == "nr_throttled":
                            n += int(v)
            except OSError:
                pass
        return n

    def release(self):
        """Removes the groups of processes that have exited (a group's last
        task may take a moment to leave)."""
        for g in self.groups:
            for _ in range(50):
                try:
                    os.rmdir(g)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.groups = []

    def close(self):
        self.release()
        if self.base is not None:
            try:
                os.rmdir(self.base)
            except OSError:
                pass
            self.base = None
