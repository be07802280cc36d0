"""One core against another, field by field, and the only differences allowed.

``kernel_differences(k, s)`` compares snapcore's core ``s`` with the kernel's
own core ``k`` of the same process (tests/fidelity/test_kernel_diff.py makes
the pair).  Every difference it finds gets a key: the key of ``KERNEL_ALLOWED``
when the difference is exactly the one documented there, any other key
otherwise, so that a test fails on anything but the documented differences.
Each classifier below admits one documented difference and nothing near it: a
pr_flag that differs by more than PF_SIGNALED|PF_DUMPCORE, a pr_state that is
not the dumping thread's state against the state snapcore saw, times that are
not times, a data shift other than the SNAPCORE note's, nonzero padding.

``live_differences(n, v)`` does the same for a normal core ``n`` and a live
core ``v`` of one quiescent process (tests/capture/test_live.py).

docs/kernel-differences.md shows both tables; ``kernel_table()`` and
``live_table()`` render them, and a test keeps the document equal to them.
"""

import dataclasses
import json
import signal
import struct
from dataclasses import dataclass

from .coreparse import NT_AUXV, NT_FILE, NT_SIGINFO, NT_X86_XSAVE_LAYOUT, PT_LOAD, PT_NOTE

PAGE = 4096
CLK_TCK = 100  # USER_HZ on x86: what /proc counts CPU time in
PF_DUMPCORE, PF_SIGNALED = 0x200, 0x400
SNAPCORE_NOTE = ("SNAPCORE", 0x4D455441)
PR_TIMES = ("pr_utime", "pr_stime", "pr_cutime", "pr_cstime")
PRSTATUS_EXACT = (
    "pr_sigpend",
    "pr_sighold",
    "pr_pid",
    "pr_ppid",
    "pr_pgrp",
    "pr_sid",
    "pr_fpvalid",
)
# how far snapcore's tick-rounded /proc times may be from the kernel's exact ones: a
# few ticks of rounding and of what the target spends between the two dumps
TIMES_SLACK_USEC = 50_000
# The kernel's dump runs in the dumping thread and is counted in its stime before
# fill_prstatus() reads it: for 70,000 mappings that was 16-24 ms on a quiet machine
# and 99 ms on a loaded one.  A test of such a target allows this much more on the
# kernel's side only, and checks snapcore's times against /proc itself.
BIG_DUMP_COST_USEC = 1_000_000


@dataclass(frozen=True)
class Allowed:
    kernel: str  # what the kernel's core holds
    snapcore: str  # what snapcore's holds instead
    why: str


KERNEL_ALLOWED = {
    "pr_info": Allowed(
        "NT_PRSTATUS `pr_info.si_signo` = the dumping signal (`si_code`, `si_errno` 0)",
        "0",
        "a snapshot has no signal",
    ),
    "pr_cursig": Allowed(
        "NT_PRSTATUS `pr_cursig` = the dumping signal, in every thread",
        "0",
        'the same; gdb then prints no "terminated with signal" line',
    ),
    "siginfo": Allowed(
        "NT_SIGINFO: the dumping signal's `siginfo_t` (`si_signo` = that signal)",
        "128 zero bytes",
        'the same; pystack then says the core was "generated on demand"',
    ),
    "pr_times": Allowed(
        "NT_PRSTATUS `pr_utime`/`pr_stime`/`pr_cutime`/`pr_cstime`: the kernel's exact "
        "CPU accounting, at the dump",
        "`/proc` clock ticks at the snapshot: whole ticks, valid timevals, within "
        f"{TIMES_SLACK_USEC // 1000} ms of the kernel's (the kernel's up to "
        f"{BIG_DUMP_COST_USEC // 1000} ms more for a target of 70,000 mappings, whose dump "
        "the dumping thread pays before its times are read)",
        "userspace sees only clock ticks",
    ),
    "pr_state": Allowed(
        "NT_PRPSINFO `pr_state`/`pr_sname`: the dumping thread, running (0, `R`)",
        "the process's state before the freeze (e.g. 1, `S`)",
        "nothing is running while snapcore reads",
    ),
    "pr_flag": Allowed(
        "NT_PRPSINFO `pr_flag` with `PF_SIGNALED` and `PF_DUMPCORE` (0x600)",
        "the same flags without exactly those two",
        "the process is not dying",
    ),
    "thread_order": Allowed(
        "threads after the first in the order they stopped for the dump",
        "the same first thread, the others by TID",
        "the kernel's order is not reproducible",
    ),
    "snapcore_note": Allowed(
        "no such note",
        "one more note after the kernel's, owner `SNAPCORE` (JSON metadata, see "
        "`snapcore info`); PT_NOTE's `p_filesz` grows by its size, so the data (every "
        "PT_LOAD's `p_offset`, the file size, with PN_XNUM `e_shoff`) moves by exactly "
        "the pages the longer notes need",
        "readers skip notes of owners they do not know; the bytes of every segment, and "
        "the zero padding, are unchanged",
    ),
}


# ---------------------------------------------------------------------------
# the classifiers: each admits one documented difference, and nothing else


def classify_pr_info(kernel, snap, sig):
    """kernel, snap: (si_signo, si_code, si_errno)."""
    return "pr_info" if kernel == (sig, 0, 0) and snap == (0, 0, 0) else "NT_PRSTATUS pr_info"


def classify_pr_cursig(kernel, snap, sig):
    return "pr_cursig" if kernel == sig and snap == 0 else "NT_PRSTATUS pr_cursig"


def classify_siginfo(kernel, snap, sig):
    ok = (
        snap == b"\0" * 128
        and kernel is not None
        and len(kernel) == 128
        and struct.unpack_from("<i", kernel)[0] == sig
    )
    return "siginfo" if ok else "NT_SIGINFO"


def _is_tick_time(tv):
    sec, usec = tv
    return sec >= 0 and 0 <= usec < 1_000_000 and usec % (1_000_000 // CLK_TCK) == 0


def classify_pr_times(kernel, snap, dump_cost=0):
    """kernel, snap: [(sec, usec)] x 4 (utime, stime, cutime, cstime).

    ``dump_cost``: how many more microseconds the kernel's side may hold, for what its
    own dump costs the dumping thread before the times are read (BIG_DUMP_COST_USEC).
    """
    for k, s in zip(kernel, snap):
        if not _is_tick_time(s):
            return "NT_PRSTATUS times (not clock ticks)"
        ku, su = k[0] * 1_000_000 + k[1], s[0] * 1_000_000 + s[1]
        if not -TIMES_SLACK_USEC <= ku - su <= TIMES_SLACK_USEC + dump_cost:
            return "NT_PRSTATUS times (too far from the kernel's)"
    return "pr_times"


def state_fields(letter):
    """(pr_state, pr_sname) the kernel's fill_psinfo gives a process in this /proc state."""
    idx = "RSDTZW".find(letter)
    return (idx, letter.encode()) if idx >= 0 else (0, b".")


def classify_pr_state(kernel, snap, state):
    """kernel, snap: (pr_state, pr_sname, pr_zomb); state: the /proc letter before the freeze."""
    dumping = (0, b"R", 0)  # the dumping thread is running
    return "pr_state" if kernel == dumping and snap == (*state_fields(state), 0) else "NT_PRPSINFO"


def classify_pr_flag(kernel, snap):
    dying = PF_DUMPCORE | PF_SIGNALED
    ok = kernel & dying == dying and snap == kernel & ~dying
    return "pr_flag" if ok else "NT_PRPSINFO pr_flag"


def classify_thread_order(ktids, stids):
    ok = (
        ktids[:1] == stids[:1]
        and sorted(ktids) == sorted(stids)
        and stids[1:] == sorted(stids[1:])
        and len(set(stids)) == len(stids)
    )
    return "thread_order" if ok else "threads"


def _notes_end(core):
    return core.note_phdr.offset + core.note_phdr.filesz


def _roundup(n):
    return (n + PAGE - 1) // PAGE * PAGE


def snapcore_note(notes):
    """(notes without a last SNAPCORE note, its record size, its desc or None)."""
    notes = list(notes)
    if notes and (notes[-1][0], notes[-1][1]) == SNAPCORE_NOTE:
        name, _, desc = notes.pop()
        return notes, 12 + ((len(name) + 1 + 3) & ~3) + ((len(desc) + 3) & ~3), desc
    return notes, 0, None


def classify_layout_shift(k, s, extra, desc):
    """The data of s moved against k's: allowed only as the SNAPCORE note's pages."""
    shift = (s.loads[0].offset - k.loads[0].offset) if k.loads and s.loads else 0
    expected = _roundup(_notes_end(k) + extra) - _roundup(_notes_end(k))
    try:
        record_ok = desc is not None and isinstance(json.loads(desc), dict)
    except ValueError:
        record_ok = False
    ok = (
        record_ok
        and _notes_end(s) == _notes_end(k) + extra
        and shift == expected
        and s.loads[0].offset == _roundup(_notes_end(s))
    )
    return ("snapcore_note" if ok else "program headers"), shift


# ---------------------------------------------------------------------------
# snapcore's core against the kernel's


def _short(v):
    r = repr(v)
    return r if len(r) < 300 else r[:300] + "..."


def kernel_differences(k, s, state="S", sig=signal.SIGABRT, dump_cost=0):
    """[(key, detail)] for every way snapcore's core s differs from the kernel's core k.

    ``state``: the /proc state letter of the process before the snapshot; ``sig``:
    the signal the kernel dumped on; ``dump_cost``: see classify_pr_times().
    """
    out = []

    def differ(key, what, kv, sv):
        if kv != sv:
            out.append((key, f"{what}: kernel {_short(kv)}, snapcore {_short(sv)}"))

    knotes, kextra, kdesc = snapcore_note(k.notes)
    snotes, sextra, sdesc = snapcore_note(s.notes)
    if kdesc is not None:
        out.append(("kernel core", "the kernel's core has a SNAPCORE note"))
    extra = sextra
    shift = 0
    if sdesc is not None or (k.loads and s.loads and k.loads[0].offset != s.loads[0].offset):
        key, shift = classify_layout_shift(k, s, extra, sdesc)
        out.append((key, f"a SNAPCORE note of {extra} bytes, data moved by {shift} bytes"))
    for name, core in (("kernel", k), ("snapcore", s)):
        bad = core.nonzero_padding()
        if bad:
            out.append(("note padding", f"{name}: nonzero padding at {bad[:8]}"))

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
                for o in range(0, kl.filesz, PAGE)
                if kb[o : o + PAGE] != sb[o : o + PAGE]
            ]
            out.append(
                (
                    "memory",
                    f"{len(pages)} page(s) differ in the PT_LOAD at {kl.vaddr:#x}, "
                    f"first at {pages[0]:#x}",
                )
            )

    # note types and order; threads
    differ(
        "note order",
        "(owner, type) sequence",
        [(n, t) for n, t, _ in knotes],
        [(n, t) for n, t, _ in snotes],
    )
    ktids, stids = [t.tid for t in k.threads], [t.tid for t in s.threads]
    if ktids != stids:
        out.append(
            (classify_thread_order(ktids, stids), f"threads: kernel {ktids}, snapcore {stids}")
        )

    sthreads = {t.tid: t for t in s.threads}
    for kt in k.threads:
        st = sthreads.get(kt.tid)
        if st is None:
            continue
        kp, sp = kt.prstatus, st.prstatus
        who = f"thread {kt.tid}"
        kinfo = (kp["si_signo"], kp["si_code"], kp["si_errno"])
        sinfo = (sp["si_signo"], sp["si_code"], sp["si_errno"])
        differ(classify_pr_info(kinfo, sinfo, sig), f"{who} pr_info", kinfo, sinfo)
        differ(
            classify_pr_cursig(kp["pr_cursig"], sp["pr_cursig"], sig),
            f"{who} pr_cursig",
            kp["pr_cursig"],
            sp["pr_cursig"],
        )
        ktimes, stimes = [kp[f] for f in PR_TIMES], [sp[f] for f in PR_TIMES]
        differ(classify_pr_times(ktimes, stimes, dump_cost), f"{who} times", ktimes, stimes)
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
    kst = (kps["pr_state"], kps["pr_sname"], kps["pr_zomb"])
    sst = (sps["pr_state"], sps["pr_sname"], sps["pr_zomb"])
    differ(classify_pr_state(kst, sst, state), "NT_PRPSINFO pr_state/pr_sname/pr_zomb", kst, sst)
    differ(
        classify_pr_flag(kps["pr_flag"], sps["pr_flag"]),
        "NT_PRPSINFO pr_flag",
        hex(kps["pr_flag"]),
        hex(sps["pr_flag"]),
    )
    for f in kps:
        if f not in ("pr_state", "pr_sname", "pr_zomb", "pr_flag"):
            differ("NT_PRPSINFO", f"NT_PRPSINFO {f}", kps[f], sps[f])
    ksi, ssi = k.process.get(NT_SIGINFO), s.process.get(NT_SIGINFO)
    differ(classify_siginfo(ksi, ssi, sig), "NT_SIGINFO", ksi, ssi)
    for ntype, name in (
        (NT_AUXV, "NT_AUXV"),
        (NT_FILE, "NT_FILE"),
        (NT_X86_XSAVE_LAYOUT, "NT_X86_XSAVE_LAYOUT"),
    ):
        differ(name, name, k.process.get(ntype), s.process.get(ntype))
    return out


def unexpected(diffs, allowed):
    return [f"{key}: {detail}" for key, detail in diffs if key not in allowed]


# ---------------------------------------------------------------------------
# the tables of docs/kernel-differences.md


def _table(allowed, left, right):
    rows = [f"| key | {left} | {right} | why |", "|---|---|---|---|"]
    for key, a in allowed.items():
        rows.append(f"| `{key}` | {a.kernel} | {a.snapcore} | {a.why} |")
    return "\n".join(rows) + "\n"


def kernel_table():
    return _table(KERNEL_ALLOWED, "kernel", "snapcore")


# ---------------------------------------------------------------------------
# a live core against a normal core of the same quiescent process

LIVE_ALLOWED = {
    "snapcore_note": Allowed(
        "the SNAPCORE record of a normal snapshot",
        'the record of a live one (`"live": true`, its own times and pause); the data moves '
        "by exactly the pages a longer record needs",
        "the record describes the snapshot, not the process",
    ),
    "pr_times": Allowed(
        "NT_PRSTATUS times at the first snapshot",
        "the same at the second, in whole clock ticks, never less, at most "
        f"{TIMES_SLACK_USEC // 1000} ms more",
        "the two snapshots are taken one after the other; the injected clone is the "
        "injecting thread's system time",
    ),
}


def classify_later_times(first, second):
    """first, second: [(sec, usec)] x 4 of two snapshots, second taken later."""
    for a, b in zip(first, second):
        if not (_is_tick_time(a) and _is_tick_time(b)):
            return "NT_PRSTATUS times (not clock ticks)"
        au, bu = a[0] * 1_000_000 + a[1], b[0] * 1_000_000 + b[1]
        if not au <= bu <= au + TIMES_SLACK_USEC:
            return "NT_PRSTATUS times (not a little later)"
    return "pr_times"


def live_differences(n, v):
    """[(key, detail)] for every way live core v differs from normal core n of the same
    process, taken one after the other while it did nothing."""
    out = []

    def differ(key, what, a, b):
        if a != b:
            out.append((key, f"{what}: normal {_short(a)}, live {_short(b)}"))

    nnotes, nextra, ndesc = snapcore_note(n.notes)
    vnotes, vextra, vdesc = snapcore_note(v.notes)
    shift = v.loads[0].offset - n.loads[0].offset
    base = _notes_end(n) - nextra  # where both cores' own notes end
    want = _roundup(base + vextra) - _roundup(base + nextra)
    ok = ndesc is not None and vdesc is not None and shift == want
    ok = ok and json.loads(vdesc).get("live") is True and json.loads(ndesc).get("live") is False
    out.append(("snapcore_note" if ok else "program headers", f"data moved by {shift}"))
    for name, core in (("normal", n), ("live", v)):
        bad = core.nonzero_padding()
        if bad:
            out.append(("note padding", f"{name}: nonzero padding at {bad[:8]}"))
    differ("ELF header", "ELF header", n.map[: n.ehdr_struct.size], v.map[: v.ehdr_struct.size])
    differ("program headers", "segment count", n.phnum, v.phnum)
    for i, ((nt, nl), (vt, vl)) in enumerate(zip(n.phdrs, v.phdrs)):
        if vt == PT_NOTE:
            vl = dataclasses.replace(vl, filesz=vl.filesz - vextra + nextra)
        elif vt == PT_LOAD:
            vl = dataclasses.replace(vl, offset=vl.offset - shift)
        differ("program headers", f"phdr[{i}] {nl.vaddr:#x}", (nt, nl), (vt, vl))
    for nl, vl in zip(n.loads, v.loads):
        if (nl.vaddr, nl.filesz) != (vl.vaddr, vl.filesz):
            continue
        nb, vb = n.load_bytes(nl), v.load_bytes(vl)
        if nb != vb:
            pages = [
                nl.vaddr + o
                for o in range(0, nl.filesz, PAGE)
                if nb[o : o + PAGE] != vb[o : o + PAGE]
            ]
            out.append(("memory", f"{len(pages)} page(s) differ at {[hex(p) for p in pages[:8]]}"))
    differ("note order", "notes", [(a, b) for a, b, _ in nnotes], [(a, b) for a, b, _ in vnotes])
    differ("threads", "threads", [t.tid for t in n.threads], [t.tid for t in v.threads])
    for nt, vt in zip(n.threads, v.threads):
        who = f"thread {nt.tid}"
        np_, vp = nt.prstatus, vt.prstatus
        times = [np_[f] for f in PR_TIMES], [vp[f] for f in PR_TIMES]
        differ(classify_later_times(*times), f"{who} times", *times)
        for f in np_:
            if f not in PR_TIMES:
                differ("NT_PRSTATUS", f"{who} {f}", np_[f], vp[f])
        for (a, t, nd), (_, _, vd) in zip(nt.notes, vt.notes):
            differ("thread notes", f"{who} note {a}/{t:#x}", nd, vd)
        differ("thread notes", f"{who} notes", len(nt.notes), len(vt.notes))
    for key in sorted(set(n.process) | set(v.process), key=str):
        if key != SNAPCORE_NOTE:
            differ("process notes", f"note {key}", n.process.get(key), v.process.get(key))
    return out


def live_table():
    return _table(LIVE_ALLOWED, "normal core", "live core")
