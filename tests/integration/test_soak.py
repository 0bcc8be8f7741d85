"""The short soak: tests/soak/soak.py with 100 messages per translation
(sizes log-uniform from 0 to 10 MiB, 50 concurrent sessions) through
all nine listen_tls x upstream_tls translations of one mailshim.

It checks that every message arrives exactly once and byte-identical,
that every session logs result=ok, that the shim's RSS after the run is
within 10% (+512 KiB) of its RSS after the warm-up, and that no file
descriptor is left behind. `make soak` runs the long version (1000
messages per translation). SOAK_TEST_MESSAGES, SOAK_TEST_CONCURRENCY and
SOAK_TEST_MAX_SIZE change the short version's parameters."""

import os
import sys
from pathlib import Path

import pytest

SOAK_DIR = Path(__file__).resolve().parent.parent / "soak"
sys.path.insert(0, str(SOAK_DIR))

import soak  # noqa: E402


def _env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


@pytest.mark.slow
def test_soak_short(make_shim, procs, ports, pki, workdir):
    params = soak.Params(messages=_env_int("SOAK_TEST_MESSAGES", 100),
                         concurrency=_env_int("SOAK_TEST_CONCURRENCY", 50),
                         max_size=_env_int("SOAK_TEST_MAX_SIZE", 10 << 20),
                         seed=_env_int("SOAK_TEST_SEED", 7), timeout=150)
    lines = []

    def out(text):
        lines.append(text)
        print(text, flush=True)

    run = soak.Soak(procs, ports, pki, make_shim, params, workdir, out=out)
    ok = run.run()
    report = "\n".join(lines)
    assert ok, "soak failed:\n%s\n\nproblems:\n%s" % (report, "\n".join(run.problems()))
    # Every translation ran and carried every message.
    assert [r.name for r in run.results] == [soak.tname(*t) for t in soak.TRANSLATIONS]
    for r in run.results:
        assert r.messages == params.messages, report
        assert r.fd_end == r.fd_before, report
