"""The client matrix: every reader on every target, checked on what it shows.

Targets: mt (PIE), mt_nopie, mt_static, mt32 (gcc -m32: an ELFCLASS32/EM_386
core) and pythreads.py (two threads) run by each supported CPython (python3.9
... python3.13: their frame layouts and runtime structures differ), found
under pyenv or on PATH (a missing one is a missing oracle).  Readers: gdb, lldb,
eu-stack (with and without -e), eu-unstrip -n, drgn, pyelftools, and pystack
on the Python target.  Each test owns its target, snapshots it, runs one
reader and ends by checking that the target runs on.

What a reader should show comes from the target (support/targets.py: each
thread's function, in the order of READY's "tids"; the globals) and from the
files on disk (build-ids), never from snapcore.  Every reader's output is
split per thread (support/oracles.py): each thread must be listed once, and
the frames of *that* thread must hold the function it is blocked in.
"""

import os
import re
from dataclasses import dataclass

import pytest
from elftools.elf.elffile import ELFFile

import snapcore

from support.oracles import (
    GDB_THREAD,
    assert_known_frames,
    build_id,
    drgn_program,
    eu_stack,
    eu_unstrip,
    frames_by_thread,
    gdb_each,
    lldb_threads,
    pystack,
    pystack_threads,
    registers_by_thread,
    sections,
    snapshot_then_kernel_core,
)
from support.procs import assert_runs_on
from support.targets import (
    C_TARGETS,
    MARKER,
    MT_OUTER,
    MT_THREAD_FUNCS,
    PY_FRAMES,
    is_python,
    need_built,
    outer_func,
    require_python,
    spawn_python_threads,
    supported_pythons,
    target_path,
    thread_funcs,
)

PY_TARGETS = [f"python{v}" for v in supported_pythons()]  # pythreads.py under each
ALL_TARGETS = [*C_TARGETS, *PY_TARGETS]


@dataclass
class Snap:
    name: str
    exe: str  # path of the executable
    target: object  # support.targets.Target
    core: str  # snapcore's core

    @property
    def tids(self):
        return self.target.info["tids"]

    @property
    def funcs(self):
        return thread_funcs(self.name)

    @property
    def outer(self):
        return outer_func(self.name)

    @property
    def is32(self):
        return self.name == "mt32"

    def assert_frames(self, frames):
        assert_known_frames(frames, self.tids, self.funcs, self.outer)


def snap_target(spawn, tmp_path, name):
    if is_python(name):
        exe = require_python(name[len("python") :])
        t = spawn_python_threads(spawn, exe)
    else:
        exe = need_built(name)
        t = spawn(name)
        t.wait_blocked()
    core = snapcore.snapshot(t.pid, tmp_path / "core").path
    return Snap(name, exe, t, core)


# ---------------------------------------------------------------------------
# gdb


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_gdb(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    pc = "eip" if s.is32 else "rip"
    if is_python(name):
        # a global of libpython that the interpreter set at start-up
        globals_ = {"print (int)_PyRuntime.initialized": "$1 = 1\n"}
    else:
        # one from .data, one written at run time (only in the core's memory)
        globals_ = {
            "print/x snapcore_marker": f"$1 = {MARKER:#x}\n",
            "print tids": "$2 = {{{}}}\n".format(", ".join(map(str, s.tids))),
        }
    (threads, bt, libs, regs, *values), p = gdb_each(
        s.exe,
        s.core,
        "info threads",
        "thread apply all bt",
        "info sharedlibrary",
        f"info registers {pc}",
        *globals_,
    )
    s.assert_frames(frames_by_thread(bt))
    assert [int(t) for t in re.findall(r"LWP (\d+)", threads)] == s.tids, threads
    assert [v.strip() for v in values] == [v.strip() for v in globals_.values()], values
    # registers symbolized, for the current thread (the main one)
    assert re.search(rf"^{pc}\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <[\w.@]+\+\d+>", regs, re.M), regs
    assert "Current thread is 1 (Thread 0x" in p.stdout and f"(LWP {s.tids[0]}))]" in p.stdout
    if name == "mt_static":
        assert libs.strip() == "No shared libraries loaded at this time.", libs
    else:
        assert re.search(r"^0x[0-9a-f]+\s+0x[0-9a-f]+\s+Yes.*/libc\.so\.6$", libs, re.M), libs
    assert "Program terminated with signal" not in p.stdout
    assert_runs_on(s.target)


@pytest.mark.parametrize("name", ["mt", "mt32"])
def test_gdb_says_of_our_core_what_it_says_of_the_kernels(spawn, tmp_path, name):
    """Same process, two cores: gdb's backtraces (locals included), registers, shared
    libraries and warnings must be the same, thread by thread (e.g. gdb 13's
    '.reg-xstate ... too small' on CPUs whose XSAVE layout it does not know appears for
    both or for neither).  Each command's output is compared on its own, split per
    thread; and the threads must be in the functions the target is known to be in."""
    t, kcore, score = snapshot_then_kernel_core(spawn, tmp_path, name)
    exe = target_path(name)
    cmds = ("thread apply all bt full", "thread apply all info registers", "info sharedlibrary")
    with kcore, score:
        (mine, mine_p), (theirs, theirs_p) = (gdb_each(exe, c.path, *cmds) for c in (score, kcore))

    def shown(outputs, p):
        bt, regs, libs = outputs
        warnings = sorted(ln for ln in p.stderr.splitlines() if "warning" in ln.lower())
        return (
            frames_by_thread(bt),
            sections(bt, GDB_THREAD),
            registers_by_thread(regs),
            libs,
            warnings,
        )

    ours, kernels = shown(mine, mine_p), shown(theirs, theirs_p)
    assert_known_frames(ours[0], t.info["tids"], MT_THREAD_FUNCS, MT_OUTER)
    assert all(len(regs) >= 16 for regs in ours[2].values()), ours[2]
    for what, a, b in zip(
        ("frames", "bt full", "registers", "libraries", "warnings"), ours, kernels
    ):
        assert a == b, (what, a, b)
    assert "Program terminated with signal SIGABRT" in theirs_p.stdout
    assert "Program terminated" not in mine_p.stdout


# ---------------------------------------------------------------------------
# lldb


@pytest.mark.parametrize("name", ["mt", "mt_nopie", "mt_static", *PY_TARGETS])
def test_lldb(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    frames, out = lldb_threads(s.exe, s.core)
    s.assert_frames(frames)
    assert_runs_on(s.target)


def test_lldb_i386_shows_what_it_shows_on_the_kernels_core(spawn, tmp_path):
    """lldb 14 cannot unwind an i386 thread through __kernel_vsyscall (it stops in
    linux-gate.so.1) whoever wrote the core: on i386 its oracle is the kernel's own core
    of the same process, which must give the very same backtraces."""
    t, kcore, score = snapshot_then_kernel_core(spawn, tmp_path, "mt32")
    exe = target_path("mt32")
    with kcore, score:
        mine, out = lldb_threads(exe, score.path)
        theirs, kout = lldb_threads(exe, kcore.path)
    assert sorted(mine) == sorted(t.info["tids"]), out
    assert mine == theirs, (out, kout)
    assert "command_loop" in mine[t.pid] and "main" in mine[t.pid], mine


# ---------------------------------------------------------------------------
# elfutils


@pytest.mark.parametrize("with_exe", [True, False], ids=["with-e", "without-e"])
@pytest.mark.parametrize("name", ALL_TARGETS)
def test_eu_stack(spawn, tmp_path, name, with_exe):
    s = snap_target(spawn, tmp_path, name)
    frames, p = eu_stack(s.core, s.exe if with_exe else None)
    s.assert_frames(frames)
    assert_runs_on(s.target)


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_eu_unstrip_build_ids(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    p = eu_unstrip(s.core)
    # START+SIZE BUILDID@ADDR FILE DEBUGFILE MODULE
    rows = [ln.split() for ln in p.stdout.splitlines()]
    mods = {r[4]: (r[1].split("@")[0], r[2]) for r in rows if len(r) >= 5}
    exe = os.path.realpath(s.exe)
    assert mods.get(exe, ("",))[0] == build_id(exe), p.stdout + p.stderr
    assert ("linux-gate.so.1" if s.is32 else "linux-vdso.so.1") in mods
    # every library found through the link map, with the build-id of the file on disk
    libs = {m: v for m, v in mods.items() if v[1] not in (".", "-")}
    for bid, path in libs.values():
        assert bid == build_id(path), (path, p.stdout)
    if name == "mt_static":
        assert not libs
    else:
        assert "libc.so.6" in libs and any(m.startswith("ld-linux") for m in libs), p.stdout
    if is_python(name):
        assert f"libpython{name[len('python') :]}.so.1.0" in libs, p.stdout
    assert_runs_on(s.target)


# ---------------------------------------------------------------------------
# drgn


def frame_names(trace):
    return [f.name for f in trace if f.name]


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_drgn(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    drgn, prog = drgn_program(s.core, s.exe)
    threads = {t.tid: t for t in prog.threads()}
    assert sorted(threads) == sorted(s.tids)
    assert prog.crashed_thread().tid == prog.main_thread().tid == s.target.pid
    if is_python(name):
        assert prog["_PyRuntime"].initialized.value_() == 1
    else:
        assert prog["snapcore_marker"].value_() == MARKER
        assert list(prog["tids"].value_()) == s.tids
    if s.is32:
        # a limitation of drgn itself, asserted so that its removal is noticed
        for tid in s.tids:
            with pytest.raises(NotImplementedError, match="not supported for i386"):
                threads[tid].stack_trace()
    else:
        s.assert_frames({tid: frame_names(threads[tid].stack_trace()) for tid in s.tids})
    assert_runs_on(s.target)


# ---------------------------------------------------------------------------
# pyelftools

# register notes pyelftools names (the others it gives as numbers)
NOTE_TYPES = {"NT_FPREGSET": 2, "NT_PRXFPREG": 0x46E62B7F, "NT_X86_XSTATE": 0x202}


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_pyelftools(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    with open(s.core, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == (32 if s.is32 else 64)
        assert elf.header["e_machine"] == ("EM_386" if s.is32 else "EM_X86_64")
        assert elf.header["e_type"] == "ET_CORE" and elf.num_sections() == 0
        segs = list(elf.iter_segments())
        assert segs[0]["p_type"] == "PT_NOTE" and segs[0]["p_align"] == 4
        assert [x["p_type"] for x in segs[1:]] == ["PT_LOAD"] * (len(segs) - 1)
        size = os.path.getsize(s.core)
        end = None
        for seg in segs[1:]:
            assert seg["p_align"] == 4096 and seg["p_offset"] % 4096 == 0
            assert seg["p_paddr"] == 0
            assert seg["p_filesz"] in (0, 4096, seg["p_memsz"])
            assert end is None or seg["p_offset"] == end  # back to back
            end = seg["p_offset"] + seg["p_filesz"]
        assert end == size
        vaddrs = [x["p_vaddr"] for x in segs[1:]]
        assert vaddrs == sorted(vaddrs)
        # notes, per thread: PRSTATUS, then that thread's register notes
        notes = list(segs[0].iter_notes())
        per_thread = []
        for n in notes:
            if n["n_type"] == "NT_PRSTATUS":
                per_thread.append([])
            elif per_thread:
                per_thread[-1].append(NOTE_TYPES.get(n["n_type"], n["n_type"]))
        assert len(per_thread) == len(s.tids)
        expected = [2, 0x46E62B7F, 0x202] if s.is32 else [2, 0x202]
        for i, kinds in enumerate(per_thread):
            assert [k for k in kinds if k in (2, 0x46E62B7F, 0x202)] == expected, (i, kinds)
        assert sum(n["n_type"] == "NT_PRPSINFO" for n in notes) == 1
        (file_note,) = [n for n in notes if n["n_type"] == "NT_FILE"]
        desc = file_note["n_desc"]
        assert desc["num_map_entries"] == len(desc["filename"])
        assert os.path.realpath(s.exe).encode() in desc["filename"]
    assert_runs_on(s.target)


# ---------------------------------------------------------------------------
# pystack


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
@pytest.mark.parametrize("name", PY_TARGETS)
def test_pystack(spawn, tmp_path, name, native):
    s = snap_target(spawn, tmp_path, name)
    p = pystack(s.core, *(["--native"] if native else []))
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "The core file seems to have been generated on demand" in out
    assert f"executable found in the core file: {s.exe}" in out + p.stderr
    threads = pystack_threads(out)
    assert sorted(threads) == sorted(s.tids), out
    for tid, funcs in zip(s.tids, PY_FRAMES):
        frames = re.findall(r'^\s+\(Python\) File ".*", line \d+, in (\S+)$', threads[tid], re.M)
        assert [f for f in frames if f in funcs] == list(funcs), (tid, frames)
    main, worker = threads[s.tids[0]], threads[s.tids[1]]
    assert "time.sleep(3600)" in main
    assert "event.wait()" in worker
    if native:
        for tid, fn in zip(s.tids, s.funcs):
            assert re.search(rf"\(C\) File .*, in {fn}\b", threads[tid]), threads[tid]
    else:
        assert "(C) File" not in out
    assert_runs_on(s.target)
