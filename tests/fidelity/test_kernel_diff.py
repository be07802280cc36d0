"""Differential test: snapcore's core against the kernel's own core of the same process.

A deterministic target (``mt still``: every thread blocked in a syscall, nothing
ticking; glibc's rseq registration off, so the kernel writes nothing into its
memory when a thread changes CPU) is brought to a known blocked state and
snapshotted.  Then it is sent SIGABRT with RLIMIT_CORE unlimited and the
kernel writes ``core`` in its cwd.  The two cores must agree on

    the ELF header and every program header (PT_LOAD vaddr, memsz, flags,
    filesz, offset), the bytes of every dumped page, the padding, the note
    types and their order, each thread's NT_PRSTATUS (registers included) and
    register notes, NT_PRPSINFO, NT_AUXV, NT_FILE and NT_X86_XSAVE_LAYOUT

except for the differences in ``support.compare.KERNEL_ALLOWED``, each admitted
only in its documented form.  docs/kernel-differences.md shows that list and a
test keeps the two equal; another forges one difference at a time into a real
snapcore core and checks that each is caught.
"""

import os
import re
import signal
import struct

import pytest

from support.compare import (
    BIG_DUMP_COST_USEC,
    CLK_TCK,
    KERNEL_ALLOWED,
    PF_SIGNALED,
    PR_TIMES,
    kernel_differences,
    kernel_table,
    unexpected,
)
from support.coreparse import NT_FILE, NT_PRPSINFO, NT_PRSTATUS, NT_SIGINFO, Core
from support.oracles import (
    assert_known_frames,
    eu_stack,
    gdb_batch,
    gdb_frames,
    snapshot_then_kernel_core,
)
from support.targets import MARKER, MT_OUTER, MT_THREAD_FUNCS, ROOT, edge_pattern, target_path


def assert_only_allowed(k, s, state="S", dump_cost=0):
    diffs = kernel_differences(k, s, state, dump_cost=dump_cost)
    bad = unexpected(diffs, KERNEL_ALLOWED)
    assert not bad, "snapcore's core differs from the kernel's:\n" + "\n".join(bad)
    return {key for key, _ in diffs}


@pytest.mark.parametrize("exe", ["mt", "mt_nopie", "mt_static", "mt32"])
def test_same_core_as_the_kernel(spawn, tmp_path, exe):
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, exe, f"edge={tmp_path}")
    with k, s:
        seen = assert_only_allowed(k, s)
        # the comparison saw real cores: all threads, a signal on the kernel's side
        assert len(k.threads) == len(t.info["tids"]) == 4
        assert k.threads[0].prstatus["pr_cursig"] == signal.SIGABRT
        assert {"pr_info", "pr_cursig", "siginfo", "pr_state", "pr_flag", "snapcore_note"} <= seen
        assert sum(ld.filesz for ld in k.loads) > 5 << 20
        assert k.elfclass == (1 if exe == "mt32" else 2)
        if exe == "mt":
            assert_each_forgery_is_caught(k, s, tmp_path)


def test_same_core_as_the_kernel_with_another_coredump_filter(spawn, tmp_path):
    """File-backed private and shared mappings dumped whole, anonymous shared not."""
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", f"edge={tmp_path}", filter_=0x3D)
    with k, s:
        assert_only_allowed(k, s)
        libc = [e for e in k.file_note()[1] if b"libc.so" in e[3]]
        assert libc and all(k.load_at(e[0]).filesz == e[1] - e[0] for e in libc)


def test_same_core_as_the_kernel_with_hugetlb(hugepages, spawn, tmp_path):
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", f"edge={tmp_path}", "hugetlb")
    with k, s:
        assert t.info["hugetlb"], "mmap(MAP_HUGETLB) failed in the target, pages reserved"
        assert_only_allowed(k, s)
        ld = s.load_at(t.info["hugetlb"])
        assert ld.filesz == ld.memsz == 2 << 20  # hugetlb private: bit 5, on
        assert s.read(ld.vaddr, 4096) == edge_pattern(9, 4096)


def test_the_docs_list_exactly_the_allowed_differences():
    with open(os.path.join(ROOT, "docs", "kernel-differences.md"), encoding="utf-8") as f:
        doc = f.read()
    table = kernel_table()
    assert table in doc, "docs/kernel-differences.md must hold this table:\n" + table
    listed = re.findall(r"^\| `(\w+)` \|", doc, re.M)
    assert {k for k in listed if k in KERNEL_ALLOWED} == set(KERNEL_ALLOWED)


# ---------------------------------------------------------------------------
# forgeries: each documented difference, pushed one step past what is documented


def _forge(path, tmp_path, name, edit):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with Core(path) as c:
        data = edit(c, data) or data
    out = tmp_path / f"forged-{name}"
    with open(out, "wb") as f:
        f.write(data)
    return out


def _desc(c, ntype, nth=0, owner="CORE"):
    return [d for n, t, _, d in c.note_offsets() if (n, t) == (owner, ntype)][nth]


def _put(data, off, raw):
    data[off : off + len(raw)] = raw


def _set(data, off, fmt, value):
    struct.pack_into(fmt, data, off, value)


def _flag_minus_dumpcore(c, data):
    off = _desc(c, NT_PRPSINFO) + 8
    flag = struct.unpack_from("<Q", data, off)[0]
    _set(data, off, "<Q", flag | PF_SIGNALED)  # kernel: both bits; forged: only one


def _shift_data(c, data):
    """Every PT_LOAD's data one page later, as if the notes needed a page more."""
    first = c.loads[0].offset
    for i, (ptype, ld) in enumerate(c.phdrs):
        if ptype == 1:
            _set(data, c.e_phoff + i * c.e_phentsize + 8, "<Q", ld.offset + 4096)
    return data[:first] + bytearray(4096) + data[first:]


FORGERIES = {
    # name: (how to forge it into snapcore's core, the key that must catch it)
    "pr_flag other bit": (
        lambda c, d: d.__setitem__(_desc(c, NT_PRPSINFO) + 8, d[_desc(c, NT_PRPSINFO) + 8] ^ 0x40),
        "NT_PRPSINFO pr_flag",
    ),
    "pr_flag one dying bit": (_flag_minus_dumpcore, "NT_PRPSINFO pr_flag"),
    "pr_state stopped": (
        lambda c, d: _put(d, _desc(c, NT_PRPSINFO), b"\x03T"),
        "NT_PRPSINFO",
    ),
    "pr_utime far": (
        lambda c, d: _set(d, _desc(c, NT_PRSTATUS, 1) + 48, "<q", 7),
        "NT_PRSTATUS times (too far from the kernel's)",
    ),
    "pr_stime not ticks": (
        lambda c, d: _set(d, _desc(c, NT_PRSTATUS, 2) + 72, "<q", 123),
        "NT_PRSTATUS times (not clock ticks)",
    ),
    "pr_info signal": (
        lambda c, d: _set(d, _desc(c, NT_PRSTATUS) + 0, "<i", signal.SIGSEGV),
        "NT_PRSTATUS pr_info",
    ),
    "pr_cursig": (
        lambda c, d: _set(d, _desc(c, NT_PRSTATUS, 3) + 12, "<H", signal.SIGSEGV),
        "NT_PRSTATUS pr_cursig",
    ),
    "siginfo byte": (lambda c, d: d.__setitem__(_desc(c, NT_SIGINFO) + 20, 1), "NT_SIGINFO"),
    "note name padding": (
        lambda c, d: d.__setitem__(c.note_offsets()[0][2] + 5, 0xAA),  # "CORE\0" + 3 pad
        "note padding",
    ),
    "padding before the data": (
        lambda c, d: d.__setitem__(c.loads[0].offset - 1, 0x01),
        "note padding",
    ),
    "data one page later": (_shift_data, "program headers"),
    "a page of memory": (
        lambda c, d: d.__setitem__(slice(c.loads[1].offset, c.loads[1].offset + 8), b"\xff" * 8),
        "memory",
    ),
    "rip of thread 2": (
        lambda c, d: _set(d, _desc(c, NT_PRSTATUS, 1) + 112 + 128, "<Q", 0x1234),
        "registers",
    ),
}


def assert_each_forgery_is_caught(k, s, tmp_path):
    """kernel_differences is not blind: each forgery is reported, under its own key,
    as a difference the documentation does not allow."""
    assert unexpected(kernel_differences(k, s), KERNEL_ALLOWED) == []
    missed = {}
    for name, (edit, key) in FORGERIES.items():
        with Core(_forge(s.path, tmp_path, name.replace(" ", "-"), edit)) as forged:
            keys = [kk for kk, _ in kernel_differences(k, forged)]
        if key not in keys or key in KERNEL_ALLOWED:
            missed[name] = keys
    assert missed == {}, missed


@pytest.mark.slow
def test_pn_xnum_core_same_as_the_kernel_and_read_by_gdb_and_eu_stack(
    many_maps_allowed, spawn, tmp_path
):
    """More than 65535 mappings: e_phnum is PN_XNUM, the count is in section 0's sh_info."""
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", "maps=70000")
    with k, s:
        # the kernel's own dump of 70,000 mappings is in its dumping thread's stime ...
        assert_only_allowed(k, s, dump_cost=BIG_DUMP_COST_USEC)
        # ... so snapcore's times are held to what /proc showed the test before the
        # snapshot (every thread blocked; its interruption may add a tick)
        tick = 1_000_000 // CLK_TCK
        for th in s.threads:
            ut, st = (th.prstatus[f] for f in PR_TIMES[:2])
            before = t.info["proc_times"][th.prstatus["pr_pid"]]
            for tv, ticks in zip((ut, st), before):
                usec = tv[0] * 1_000_000 + tv[1]
                assert ticks * tick <= usec <= (ticks + 1) * tick, (
                    th.prstatus["pr_pid"],
                    tv,
                    before,
                )
        assert s.e_phnum == 0xFFFF and s.e_shnum == 1 and s.shdr0[7] == s.phnum > 70000
        assert s.e_shoff == s.size - 64
        # 64 bytes per VMA exceed core_file_note_size_limit: no NT_FILE, as the kernel
        assert NT_FILE not in s.process
        data_page = t.info["maps_base"] + 4096  # i = 1: written by the target
        assert s.read(data_page, 1) == b"\x01"
        path = s.path
    exe = target_path("mt")
    frames, _ = gdb_frames(exe, path)
    assert_known_frames(frames, t.info["tids"], MT_THREAD_FUNCS, MT_OUTER)
    out = gdb_batch(
        exe, path, "print/x snapcore_marker", f"print/x *(unsigned char *){data_page:#x}"
    ).stdout
    assert f"= {MARKER:#x}\n" in out and "= 0x1\n" in out, out
    frames, _ = eu_stack(path, exe)
    assert_known_frames(frames, t.info["tids"], MT_THREAD_FUNCS, MT_OUTER)
