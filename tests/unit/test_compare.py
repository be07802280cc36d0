"""The classifiers of support/compare.py: each admits its documented difference only.

A classifier that admitted more would let a wrong core through the kernel
differential (tests/fidelity/test_kernel_diff.py), so each is checked here on
the documented difference and on its nearest wrong neighbours.
"""

import signal
import struct

from support.compare import (
    BIG_DUMP_COST_USEC,
    KERNEL_ALLOWED,
    PF_DUMPCORE,
    PF_SIGNALED,
    classify_pr_cursig,
    classify_pr_flag,
    classify_pr_info,
    classify_pr_state,
    classify_pr_times,
    classify_siginfo,
    classify_thread_order,
)

ABRT = signal.SIGABRT


def test_pr_info():
    assert classify_pr_info((ABRT, 0, 0), (0, 0, 0), ABRT) == "pr_info"
    for snap in ((ABRT, 0, 0), (0, 1, 0), (0, 0, 5), (signal.SIGSEGV, 0, 0)):
        assert classify_pr_info((ABRT, 0, 0), snap, ABRT) not in KERNEL_ALLOWED, snap
    assert classify_pr_info((signal.SIGSEGV, 0, 0), (0, 0, 0), ABRT) not in KERNEL_ALLOWED


def test_pr_cursig():
    assert classify_pr_cursig(ABRT, 0, ABRT) == "pr_cursig"
    assert classify_pr_cursig(ABRT, signal.SIGSEGV, ABRT) not in KERNEL_ALLOWED
    assert classify_pr_cursig(0, signal.SIGSEGV, ABRT) not in KERNEL_ALLOWED


def test_siginfo():
    kernel = struct.pack("<iii", ABRT, 0, 0) + bytes(116)
    assert classify_siginfo(kernel, bytes(128), ABRT) == "siginfo"
    assert classify_siginfo(kernel, bytes(127) + b"\1", ABRT) not in KERNEL_ALLOWED
    assert classify_siginfo(kernel, bytes(64), ABRT) not in KERNEL_ALLOWED
    assert classify_siginfo(None, bytes(128), ABRT) not in KERNEL_ALLOWED


def test_pr_times():
    k = [(0, 1234), (0, 20513), (0, 0), (0, 0)]
    assert classify_pr_times(k, [(0, 0), (0, 20000), (0, 0), (0, 0)]) == "pr_times"
    assert classify_pr_times(k, [(0, 10000), (0, 30000), (0, 0), (0, 0)]) == "pr_times"
    not_ticks = [(0, 1234), (0, 20000), (0, 0), (0, 0)]
    too_far = [(0, 0), (1, 20000), (0, 0), (0, 0)]
    bad_usec = [(0, 0), (0, 1_000_000), (0, 0), (0, 0)]
    negative = [(-1, 990000), (0, 20000), (0, 0), (0, 0)]
    for snap in (not_ticks, too_far, bad_usec, negative):
        assert classify_pr_times(k, snap) not in KERNEL_ALLOWED, snap
    # a big target's own dump: the kernel's side may be ahead by the dump's cost, never behind
    big = [(0, 4000), (0, 138810), (0, 0), (0, 0)]
    ours = [(0, 0), (0, 40000), (0, 0), (0, 0)]
    assert classify_pr_times(big, ours) not in KERNEL_ALLOWED
    assert classify_pr_times(big, ours, BIG_DUMP_COST_USEC) == "pr_times"
    ahead = [(0, 0), (0, 200000), (0, 0), (0, 0)]
    assert classify_pr_times(big, ahead, BIG_DUMP_COST_USEC) not in KERNEL_ALLOWED


def test_pr_state():
    dumping = (0, b"R", 0)
    assert classify_pr_state(dumping, (1, b"S", 0), "S") == "pr_state"
    assert classify_pr_state(dumping, (3, b"T", 0), "T") == "pr_state"
    for snap in ((3, b"T", 0), (0, b"R", 0), (1, b"R", 0), (1, b"S", 1)):
        assert classify_pr_state(dumping, snap, "S") not in KERNEL_ALLOWED, snap
    assert classify_pr_state((1, b"S", 0), (1, b"T", 0), "T") not in KERNEL_ALLOWED


def test_pr_flag():
    flags = 0x400000 | PF_DUMPCORE | PF_SIGNALED
    assert classify_pr_flag(flags, 0x400000) == "pr_flag"
    for snap in (0x400000 | PF_SIGNALED, 0x400000 | PF_DUMPCORE, 0x400040, 0):
        assert classify_pr_flag(flags, snap) not in KERNEL_ALLOWED, hex(snap)
    # a kernel core without the dying flags leaves nothing to excuse
    assert classify_pr_flag(0x400000, 0x400000 & ~PF_DUMPCORE) not in KERNEL_ALLOWED


def test_thread_order():
    assert classify_thread_order([10, 13, 11, 12], [10, 11, 12, 13]) == "thread_order"
    for snap in ([11, 10, 12, 13], [10, 13, 12, 11], [10, 11, 12], [10, 11, 12, 12, 13]):
        assert classify_thread_order([10, 13, 11, 12], snap) not in KERNEL_ALLOWED, snap
