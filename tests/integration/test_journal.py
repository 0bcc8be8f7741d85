"""`log = syslog` lines reach the systemd journal with the session id: a
private systemd-journald in a mount namespace of the test's own (its /run
and /dev/log, the machine's untouched), mailshim logging to it, one SMTP
session through a real smtp-sink, and journalctl reading the result."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

JOURNALD = "/lib/systemd/systemd-journald"
SCRIPT = Path(__file__).parent / "scripts" / "journal.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_syslog_lines_reach_the_journal(mailshim_path, smtp_sink, ports, workdir):
    assert os.access(JOURNALD, os.X_OK) and shutil.which("unshare"), \
        "systemd-journald and unshare are needed (Debian packages systemd, util-linux)"
    sink = smtp_sink()
    port = ports.get()
    conf = workdir / "conf.d"
    conf.mkdir()
    (conf / "a.conf").write_text(
        "[global]\nworkers = 1\nhelo_name = shim.test\nlog = syslog\n\n"
        "[j]\nlisten = 127.0.0.1:%d\nupstream = 127.0.0.1:%d\n" % (port, sink.port))
    r = subprocess.run(["unshare", "-m", "sh", str(SCRIPT), str(workdir), str(mailshim_path),
                        str(conf), str(port)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    entries = []
    for line in (workdir / "journal.json").read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "mailshim"]
    sessions = [e for e in ours if str(e.get("MESSAGE", "")).startswith("conn=")]
    assert len(sessions) == 1, (ours, (workdir / "shim.out").read_text())
    msg = sessions[0]["MESSAGE"]
    assert " service=j " in msg and msg.endswith("result=ok"), msg
    # Facility mail (2), priority info (6).
    assert sessions[0].get("SYSLOG_FACILITY") == "2", sessions[0]
    assert sessions[0].get("PRIORITY") == "6", sessions[0]
    # The session id in the journal is the one the sink's message came with.
    assert len(msg.split()[0]) == len("conn=") + 8
    assert sink.count() == 1
