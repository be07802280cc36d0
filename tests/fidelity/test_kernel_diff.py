"""Differential test: snapcore's core against the kernel's own core of the same process.

A deterministic target (``mt still``: every thread blocked in a syscall, nothing
ticking; glibc's rseq registration off, so the kernel writes nothing into its
memory when a thread changes CPU) is brought to a known blocked state and
snapshotted.  Then it is sent SIGABRT with RLIMIT_CORE unlimited and the
kernel writes ``core`` in its cwd.  The two cores must agree on

    the ELF header and every program header (PT_LOAD vaddr, memsz, flags,
    filesz, offset), the bytes of every dumped page, the note types and their
    order, each thread's NT_PRSTATUS (registers included) and register notes,
    NT_PRPSINFO, NT_AUXV, NT_FILE and NT_X86_XSAVE_LAYOUT

except for the differences in ``ALLOWED`` below: the one list of them (the
README's "Compatibility" section repeats it, and a test keeps the two in step).
"""

import os
import re
import signal
import struct

import pytest

import snapcore

from support.coreparse import (
    NT_AUXV,
    NT_FILE,
    NT_SIGINFO,
    NT_X86_XSAVE_LAYOUT,
    PT_LOAD,
    PT_NOTE,
    Core,
)
from support.oracles import gdb_batch, snapshot_then_kernel_core
from support.procs import assert_runs_on, run
from support.targets import ROOT, edge_pattern, target_path

PF_DUMPCORE, PF_SIGNALED = 0x200, 0x400

# Every way snapcore's core may differ from the kernel's, and why.  Nothing else may.
ALLOWED = {
    "pr_info": "NT_PRSTATUS pr_info (si_signo): the kernel records the signal that killed "
    "the process; a snapshot has none, so 0",
    "pr_cursig": "NT_PRSTATUS pr_cursig: likewise the dumping signal, or 0",
    "pr_times": "NT_PRSTATUS pr_utime/pr_stime/pr_cutime/pr_cstime: the kernel's exact CPU "
    "accounting at the dump; snapcore's /proc clock ticks at the snapshot",
    "pr_state": "NT_PRPSINFO pr_state/pr_sname: the kernel reports the dumping thread "
    "running ('R'); snapcore the process's state before the freeze (e.g. 'S')",
    "pr_flag": "NT_PRPSINFO pr_flag: PF_SIGNALED|PF_DUMPCORE are set in a dying process",
    "siginfo": "NT_SIGINFO: the dumping signal's siginfo; snapcore writes 128 zero bytes "
    "(readers such as pystack then say the core was generated on demand)",
    "thread_order": "after the first thread, the kernel lists threads in the order they "
    "stopped for the dump; snapcore in TID order",
    "snapcore_note": "snapcore adds one note after the kernel's, owner SNAPCORE (JSON "
    "metadata, which readers skip); PT_NOTE's p_filesz grows by its size, "
    "and the data, so every PT_LOAD's p_offset and the file size, move by "
    "the same whole number of pages",
}

SNAPCORE_NOTE = ("SNAPCORE", 0x4D455441)


def _note_record_size(name, desc):
    return 12 + ((len(name) + 1 + 3) & ~3) + ((len(desc) + 3) & ~3)


def differences(k, s):
    """[(allowed key or description, detail)] between kernel core k and snapcore core s."""
    out = []

    def differ(key, what, kv, sv):
        if kv != sv:
            out.append((key, f"{what}: kernel {_short(kv)}, snapcore {_short(sv)}"))

    import dataclasses

    # snapcore's own note comes last; without it the layouts must be the kernel's
    def strip(core):
        notes = list(core.notes)
        if notes and (notes[-1][0], notes[-1][1]) == SNAPCORE_NOTE:
            name, _, desc = notes.pop()
            return notes, _note_record_size(name, desc)
        return notes, 0

    knotes, kextra = strip(k)
    snotes, sextra = strip(s)
    extra = sextra - kextra
    if extra:
        out.append(("snapcore_note", f"a SNAPCORE note of {extra} bytes more"))
    shift = (s.loads[0].offset - k.loads[0].offset) if k.loads and s.loads else 0
    if shift:
        out.append(
            (
                "snapcore_note" if extra and shift % 4096 == 0 else "program headers",
                f"data moved by {shift} bytes",
            )
        )
    ehdr_k, ehdr_s = bytearray(k.map[: k.ehdr_struct.size]), bytearray(s.map[: s.ehdr_struct.size])
    if k.shdr0 is not None and s.shdr0 is not None:  # e_shoff follows the data
        off = 40 if k.elfclass == 2 else 32
        fmt = "<Q" if k.elfclass == 2 else "<I"
        struct.pack_into(fmt, ehdr_s, off, struct.unpack_from(fmt, ehdr_s, off)[0] - shift)
    differ("ELF header", "ELF header", bytes(ehdr_k), bytes(ehdr_s))
    differ("program headers", "segment count", k.phnum, s.phnum)
    differ("program headers", "PN_XNUM section header", k.shdr0, s.shdr0)
    for i, ((kt, kl), (st, sl)) in enumerate(zip(k.phdrs, s.phdrs)):
        if st == PT_NOTE:
            sl = dataclasses.replace(sl, filesz=sl.filesz - extra)
        elif st == PT_LOAD:
            sl = dataclasses.replace(sl, offset=sl.offset - shift)
        differ("program headers", f"phdr[{i}] {kl.vaddr:#x}", (kt, kl), (st, sl))
    differ("file size", "file size", k.size, s.size - shift)

    # the bytes of every dumped page
    for kl, sl in zip(k.loads, s.loads):
        if (kl.vaddr, kl.filesz) != (sl.vaddr, sl.filesz):
            continue  # already reported with the program headers
        kb, sb = k.load_bytes(kl), s.load_bytes(sl)
        if kb != sb:
            pages = [
                kl.vaddr + o
                for o in range(0, kl.filesz, 4096)
                if kb[o : o + 4096] != sb[o : o + 4096]
            ]
            out.append(
                (
                    "memory",
                    f"{len(pages)} page(s) differ in the PT_LOAD at "
                    f"{kl.vaddr:#x}, first at {pages[0]:#x}",
                )
            )

    # note types and order; thread order
    differ(
        "note order",
        "(owner, type) sequence",
        [(n, t) for n, t, _ in knotes],
        [(n, t) for n, t, _ in snotes],
    )
    ktids, stids = [t.tid for t in k.threads], [t.tid for t in s.threads]
    differ("threads", "dumping thread first", ktids[:1], stids[:1])
    differ("threads", "thread set", sorted(ktids), sorted(stids))
    differ("thread_order", "thread order", ktids, stids)

    # each thread
    sthreads = {t.tid: t for t in s.threads}
    for kt in k.threads:
        st = sthreads.get(kt.tid)
        if st is None:
            continue
        kp, sp = kt.prstatus, st.prstatus
        who = f"thread {kt.tid}"
        # allowed only as "no signal" on snapcore's side
        sinfo = (sp["si_signo"], sp["si_code"], sp["si_errno"])
        differ(
            "pr_info" if sinfo == (0, 0, 0) else "NT_PRSTATUS pr_info",
            f"{who} pr_info",
            (kp["si_signo"], kp["si_code"], kp["si_errno"]),
            sinfo,
        )
        differ(
            "pr_cursig" if sp["pr_cursig"] == 0 else "NT_PRSTATUS pr_cursig",
            f"{who} pr_cursig",
            kp["pr_cursig"],
            sp["pr_cursig"],
        )
        differ(
            "pr_times",
            f"{who} times",
            [kp[f] for f in ("pr_utime", "pr_stime", "pr_cutime", "pr_cstime")],
            [sp[f] for f in ("pr_utime", "pr_stime", "pr_cutime", "pr_cstime")],
        )
        for f in (
            "pr_sigpend",
            "pr_sighold",
            "pr_pid",
            "pr_ppid",
            "pr_pgrp",
            "pr_sid",
            "pr_fpvalid",
        ):
            differ(f, f"{who} {f}", kp[f], sp[f])
        kr, sr = k.regs(kt), s.regs(st)
        differ(
            "registers",
            f"{who} registers (index: kernel, snapcore)",
            {j: hex(a) for j, (a, b) in enumerate(zip(kr, sr)) if a != b},
            {j: hex(b) for j, (a, b) in enumerate(zip(kr, sr)) if a != b},
        )
        differ(
            "thread notes",
            f"{who} register notes",
            [(n, t) for n, t, _ in kt.notes],
            [(n, t) for n, t, _ in st.notes],
        )
        for (n, t, kd), (_, _, sd) in zip(kt.notes, st.notes):
            differ("thread notes", f"{who} note {n}/{t:#x}", kd, sd)

    # once-per-process notes
    kps, sps = k.prpsinfo(), s.prpsinfo()
    for f in kps:
        key = {"pr_state": "pr_state", "pr_sname": "pr_state"}.get(f, f)
        if f == "pr_flag" and kps[f] & ~(PF_DUMPCORE | PF_SIGNALED) == sps[f]:
            key = "pr_flag"
        differ(key, f"NT_PRPSINFO {f}", kps[f], sps[f])
    ksi, ssi = k.process.get(NT_SIGINFO), s.process.get(NT_SIGINFO)
    if ssi == b"\0" * 128 and ksi is not None and len(ksi) == 128:
        differ("siginfo", "NT_SIGINFO", ksi, ssi)
    else:
        differ("NT_SIGINFO", "NT_SIGINFO", ksi, ssi)
    for ntype, name in (
        (NT_AUXV, "NT_AUXV"),
        (NT_FILE, "NT_FILE"),
        (NT_X86_XSAVE_LAYOUT, "NT_X86_XSAVE_LAYOUT"),
    ):
        differ(name, name, k.process.get(ntype), s.process.get(ntype))
    return out


def _short(v):
    r = repr(v)
    return r if len(r) < 300 else r[:300] + "..."


def assert_only_allowed(k, s):
    diffs = differences(k, s)
    unexpected = [f"{key}: {detail}" for key, detail in diffs if key not in ALLOWED]
    assert not unexpected, "snapcore's core differs from the kernel's:\n" + "\n".join(unexpected)
    return {key for key, _ in diffs}


@pytest.mark.parametrize("exe", ["mt", "mt_nopie", "mt_static", "mt32"])
def test_same_core_as_the_kernel(spawn, tmp_path, exe):
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, exe, f"edge={tmp_path}")
    with k, s:
        seen = assert_only_allowed(k, s)
        # the comparison saw real cores: all threads, a signal on the kernel's side
        assert len(k.threads) == len(t.info["tids"]) == 4
        assert k.threads[0].prstatus["pr_cursig"] == signal.SIGABRT
        assert {"pr_cursig", "siginfo"} <= seen
        assert sum(ld.filesz for ld in k.loads) > 5 << 20
        assert k.elfclass == (1 if exe == "mt32" else 2)


def test_same_core_as_the_kernel_with_another_coredump_filter(spawn, tmp_path):
    """File-backed private and shared mappings dumped whole, anonymous shared not."""
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", f"edge={tmp_path}", filter_=0x3D)
    with k, s:
        assert_only_allowed(k, s)
        libc = [e for e in k.file_note()[1] if b"libc.so" in e[3]]
        assert libc and all(k.load_at(e[0]).filesz == e[1] - e[0] for e in libc)


def test_readme_lists_every_allowed_difference():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme[readme.index("## Compatibility") :]
    for key in ALLOWED:
        assert f"`{key}`" in section, f"README's Compatibility section does not list {key}"


def test_the_comparison_sees_a_changed_byte_and_register(mt, tmp_path):
    """differences() is not blind: a copy with one data byte and one register changed."""
    path = snapcore.snapshot(mt.pid, tmp_path / "a.core").path
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with Core(path) as c:
        ld = next(ld for ld in c.loads if ld.filesz)
        data[ld.offset + 100] ^= 0xFF
        note_off = c.note_phdr.offset + 12 + 8  # first note's desc
        data[note_off + 112 + 128] ^= 0x01  # pr_reg.rip of the first thread
    with open(tmp_path / "b.core", "wb") as f:
        f.write(data)
    with Core(path) as a, Core(tmp_path / "b.core") as b:
        assert a.threads[0].tid == mt.pid
        keys = {key for key, _ in differences(a, b)}
        assert keys == {"memory", "registers"}
        assert differences(a, a) == []
    assert_runs_on(mt)


def test_same_core_as_the_kernel_with_hugetlb(hugepages, spawn, tmp_path):
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", f"edge={tmp_path}", "hugetlb")
    with k, s:
        assert t.info["hugetlb"], "mmap(MAP_HUGETLB) failed in the target, pages reserved"
        assert_only_allowed(k, s)
        ld = s.load_at(t.info["hugetlb"])
        assert ld.filesz == ld.memsz == 2 << 20  # hugetlb private: bit 5, on
        assert s.read(ld.vaddr, 4096) == edge_pattern(9, 4096)


@pytest.mark.slow
def test_pn_xnum_core_same_as_the_kernel_and_read_by_gdb_and_eu_stack(
    many_maps_allowed, spawn, tmp_path
):
    """More than 65535 mappings: e_phnum is PN_XNUM, the count is in section 0's sh_info."""
    t, k, s = snapshot_then_kernel_core(spawn, tmp_path, "mt", "maps=70000")
    with k, s:
        assert_only_allowed(k, s)
        assert s.e_phnum == 0xFFFF and s.e_shnum == 1 and s.shdr0[7] == s.phnum > 70000
        assert s.e_shoff == s.size - 64
        # 64 bytes per VMA exceed core_file_note_size_limit: no NT_FILE, as the kernel
        assert NT_FILE not in s.process
        data_page = t.info["maps_base"] + 4096  # i = 1: written by the target
        assert s.read(data_page, 1) == b"\x01"
        path = s.path
    exe = target_path("mt")
    out = gdb_batch(
        exe,
        path,
        "info threads",
        "thread apply all bt",
        "print/x snapcore_marker",
        f"print/x *(unsigned char *){data_page:#x}",
    ).stdout
    for tid in t.info["tids"]:
        assert f"LWP {tid}" in out, out
    for fn in ("command_loop", "cond_waiter_thread", "pipe_reader_thread"):
        assert re.search(rf"\b{fn} \(", out), out
    assert "= 0x5eed5eed12345678" in out and "= 0x1\n" in out
    p = run(["eu-stack", "--core", path, "-e", exe], timeout=120)
    for tid in t.info["tids"]:
        assert f"TID {tid}:" in p.stdout, p.stdout + p.stderr
    for fn in ("command_loop", "cond_waiter_thread", "pipe_reader_thread"):
        assert fn in p.stdout
