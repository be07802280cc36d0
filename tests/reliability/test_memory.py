"""Memory: the target gains nothing from being read; snapcore itself stays small."""

import re
import subprocess
import sys

import pytest

import snapcore
from snapcore import procmaps

from support.oracles import read_core_memory
from support.procs import assert_runs_on

# VmHWM is the high-water RSS of this process's own address space.  getrusage's
# ru_maxrss is not: it keeps the RSS the parent had when it forked us (the kernel
# carries it over exec), so it measures the test runner, not snapcore.
PEAK = r"""
import sys
from snapcore.cli import main
rc = main(sys.argv[1:])
with open("/proc/self/status") as f:
    print("MAXRSS", [l.split()[1] for l in f if l.startswith("VmHWM:")][0])
sys.exit(rc)
"""


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))


def test_target_rss_does_not_grow(spawn, tmp_path):
    t = spawn("mt", "mib=64")
    t.wait_blocked()
    before = _rss_kb(t.pid)
    for i in range(3):
        snapcore.snapshot(t.pid, tmp_path / f"core.{i}")
    after = _rss_kb(t.pid)
    # the target's own stdout buffers may move a page or two; reading must not fault
    # in the untouched 3 MiB buffer or its thread stacks (megabytes)
    assert after - before < 256, (before, after)
    assert_runs_on(t)


def test_snapcore_peak_rss_is_bounded(spawn, tmp_path):
    t = spawn("mt", "mib=384")
    t.wait_blocked()
    p = subprocess.run(
        [sys.executable, "-c", PEAK, str(t.pid), "-o", str(tmp_path / "core"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    peak_kb = int(re.search(r"MAXRSS (\d+)", p.stdout).group(1))
    assert peak_kb < 64 * 1024, f"snapcore peaked at {peak_kb} KiB for a 384 MiB target"
    assert_runs_on(t)


def _region(pid, start):
    for v in procmaps.read_smaps(pid):
        if v.start == start:
            return v
    raise AssertionError(f"no mapping at {start:#x}")


@pytest.mark.parametrize("live", [False, True], ids=["normal", "live"])
def test_copy_on_write_shared_pages_stay_shared(spawn, tmp_path, live):
    """Pages a prefork-style target shares with its child must not be copied by a read.

    process_vm_readv pins pages, and the kernel answers a pin of a shared anonymous
    page by copying it into the process read from; /proc/PID/mem does not.
    """
    t = spawn("cowshare", "64")
    before = _region(t.pid, t.info["buf"])
    assert before.shared_rss >= 60 << 20, before  # shared with the child
    s = snapcore.snapshot(t.pid, tmp_path / "core", live=live)
    assert s.live == live
    after = _region(t.pid, t.info["buf"])
    assert after.shared_rss == before.shared_rss, (before.shared_rss, after.shared_rss)
    assert after.anonymous == before.anonymous
    assert read_core_memory(s.path, t.info["buf"], 4096) != b"\0" * 4096
    assert_runs_on(t)
