"""Several workers: the supervisor shares the listeners (SO_REUSEPORT),
restarts a worker that dies, and stops them all on SIGTERM."""

import os
import signal
import time

from harness import proc_tree, service, swaks, wait_until


def worker_pids(shim):
    return [p for p in proc_tree(shim.pid) if p != shim.pid]


def test_workers_share_listeners_and_restart(make_shim, smtp_sink, ports):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": "2", "helo_name": "shim.test"},
                      "mx": service(port, sink.port)})
    wait_until(lambda: len(worker_pids(shim)) == 2, 5, "two workers")
    first = worker_pids(shim)
    for _ in range(6):
        assert swaks(port, quit_after=None).rc == 0
    os.kill(first[0], signal.SIGKILL)
    wait_until(lambda: len(worker_pids(shim)) == 2 and first[0] not in worker_pids(shim),
               5, "the killed worker to be replaced")
    assert "killed by signal 9; restarting" in shim.stderr_text()
    # Every session still lands, whichever worker the kernel picks.
    for _ in range(6):
        assert swaks(port, quit_after=None).rc == 0
    lines = shim.wait_log(lambda d: d.get("result") == "ok", count=12)
    assert len({d["conn"] for d in lines}) == len(lines)
    assert sink.count() == 12
    kids = worker_pids(shim)
    shim.stop()
    time.sleep(0.2)
    assert not [p for p in kids if os.path.exists("/proc/%d" % p)]
