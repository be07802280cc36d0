"""The C copy loop on scattered memory: batched reads, holes, and every byte in place.

The target maps two regions.  A: a page per VMA (read-write and read-only in
turn, so none merge), some pages never touched, some written with zeros, one
made PROT_NONE (read through /proc/PID/mem).  B: one VMA, every 7th page
written, the rest never touched: thousands of one-page resident runs, more
than one process_vm_readv batch holds.  The oracle is the target itself
(/proc/PID/mem), read after the snapshot; untouched pages must be holes in the
file and must not have been faulted in.
"""

import os
import sys

import pytest

import snapcore
from snapcore import procmaps

from support.coreparse import Core
from support.procs import assert_runs_on
from support.strict import need_module

PAGE = 4096

TARGET = r"""
import ctypes, ctypes.util, json, mmap, sys
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE, RW, R, NONE = 4096, 3, 1, 0
def region(pages):
    a = libc.mmap(None, pages * PAGE, RW, 0x22, -1, 0)
    assert a not in (None, ctypes.c_void_p(-1).value)
    return a
def fill(addr, i):
    ctypes.memmove(addr, (b"%08d" % i) * (PAGE // 8), PAGE)
NA, NB = 3000, 4096 * 3
a, b = region(NA), region(NB)
untouched_a = [i for i in range(NA) if i % 3 == 1]
zero_a = [i for i in range(NA) if i % 5 == 0 and i % 3 != 1]
for i in range(NA):
    if i in zero_a:
        ctypes.memset(a + i * PAGE, 0, PAGE)
    elif i % 3 != 1:
        fill(a + i * PAGE, i)
for i in range(1, NA, 2):
    libc.mprotect(a + i * PAGE, PAGE, R)
none_page = 3000 - 4                    # written, then made unreadable
libc.mprotect(a + none_page * PAGE, PAGE, NONE)
for i in range(0, NB, 7):
    fill(b + i * PAGE, 100000 + i)
print("READY " + json.dumps({"a": a, "na": NA, "b": b, "nb": NB, "untouched_a": untouched_a,
                             "zero_a": zero_a, "none_page": none_page}), flush=True)
import time
for line in sys.stdin:                  # "ping" -> "pong N" (N grows: it runs on)
    print("pong", time.monotonic_ns(), flush=True)
"""


@pytest.fixture
def scattered(spawn):
    t = spawn([sys.executable, "-c", TARGET])
    t.wait_blocked()
    return t


def _rss(t):
    """Resident bytes of the two regions."""
    spans = [
        (t.info["a"], t.info["a"] + t.info["na"] * PAGE),
        (t.info["b"], t.info["b"] + t.info["nb"] * PAGE),
    ]
    return sum(
        v.rss for v in procmaps.read_smaps(t.pid) if any(lo <= v.start < hi for lo, hi in spans)
    )


def _is_hole(fd, off):
    try:
        return os.lseek(fd, off, os.SEEK_DATA) != off
    except OSError:  # ENXIO: no data after off
        return True


def _check(core_path, t):
    """Every page equals the target's; zero-written and untouched pages are holes."""
    info = t.info
    fd = os.open(f"/proc/{t.pid}/mem", os.O_RDONLY)
    holes = []
    try:
        with Core(core_path) as c:
            for base, n in ((info["a"], info["na"]), (info["b"], info["nb"])):
                want = os.pread(fd, n * PAGE, base)
                for i in range(n):
                    got = c.read(base + i * PAGE, PAGE)
                    assert got == want[i * PAGE : (i + 1) * PAGE], (
                        f"page {i} of the region at {base:#x} differs"
                    )
            for i in info["zero_a"]:  # dumped (written), all zeros
                holes.append(c.load_at(info["a"] + i * PAGE).offset)
            b_off = c.load_at(info["b"]).offset
            holes += [b_off + i * PAGE for i in range(info["nb"]) if i % 7]
    finally:
        os.close(fd)
    with open(core_path, "rb") as f:
        data = [off for off in holes if not _is_hole(f.fileno(), off)]
    assert not data, f"{len(data)} pages hold data where holes belong, e.g. {data[0]:#x}"


@pytest.mark.parametrize("live", [False, True], ids=["normal", "live"])
def test_scattered_runs_land_in_place_as_holes_and_data(scattered, tmp_path, live):
    t = scattered
    rss_before = _rss(t)
    core = tmp_path / "core"
    snap = snapcore.snapshot(t.pid, core, live=live)
    assert snap.live == live
    assert _rss(t) == rss_before  # nothing was faulted in
    _check(str(core), t)
    runs = t.info["nb"] // 7
    if live:  # the image is read through /proc/PID/mem only (see live.py)
        assert snap.stats["readv_calls"] == 0, snap.stats["readv_calls"]
    else:
        # B's runs are read many per call (a batch holds Copier.BATCH // PAGE of
        # them), not one call each (which alone would take `runs` calls); the rest
        # of the Python process takes ~150 calls more
        assert snap.stats["readv_calls"] * 4 < runs, snap.stats["readv_calls"]
    assert snap.stats["bytes_unreadable"] == 0, snap.unreadable
    assert_runs_on(t)


def test_scattered_runs_through_a_stream(scattered, tmp_path):
    """Sequential mode (a pipe to zstd): every byte in order, holes as zeros."""
    zstandard = need_module("zstandard")
    t = scattered
    core = tmp_path / "core.zst"
    snapcore.snapshot(t.pid, core, compress="zstd")
    plain = tmp_path / "core"
    with open(core, "rb") as src, open(plain, "wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    info = t.info
    fd = os.open(f"/proc/{t.pid}/mem", os.O_RDONLY)
    try:
        with Core(str(plain)) as c:
            for base, n in ((info["a"], info["na"]), (info["b"], info["nb"])):
                want = os.pread(fd, n * PAGE, base)
                got = b"".join(c.read(base + i * PAGE, PAGE) for i in range(n))
                assert got == want, f"the region at {base:#x} differs"
    finally:
        os.close(fd)
    assert_runs_on(t)
