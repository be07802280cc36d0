"""The client matrix: every reader on every target, checked on what it shows.

Targets: mt (PIE), mt_nopie, mt_static, mt32 (gcc -m32: an ELFCLASS32/EM_386
core) and pythreads.py (Python 3, two threads).  Readers: gdb, lldb,
eu-stack (with and without -e), eu-unstrip -n, drgn, pyelftools, and pystack
on the Python target.  Each test owns its target, snapshots it, runs one
reader and ends by checking that the target runs on.

What a reader should show comes from the target itself (its READY line: the
tids, in the order of THREAD_FUNCS) and from the files on disk (build-ids),
never from snapcore.
"""

import os
import re
import sys
from dataclasses import dataclass

import pytest

import snapcore

from support.oracles import gdb_batch, snapshot_then_kernel_core
from support.procs import assert_runs_on, run
from support.strict import need_module, need_tool
from support.targets import TARGETS, need_built, target_path

C_TARGETS = ["mt", "mt_nopie", "mt_static", "mt32"]
ALL_TARGETS = C_TARGETS + ["python"]
# the function each thread is blocked in, in the order of READY's "tids"
THREAD_FUNCS = ("command_loop", "sleeper_thread", "cond_waiter_thread", "pipe_reader_thread")
PY_THREAD_FUNCS = ("time_sleep", "PyThread_acquire_lock_timed")  # C frames of pythreads.py
MARKER = 0x5EED5EED12345678
# the syscall the main thread waits in (read), by target
READ_NR = {"mt32": 3}
PYTHREADS = os.path.join(TARGETS, "pythreads.py")


@dataclass
class Snap:
    name: str
    exe: str  # path of the executable
    target: object  # helpers.Target
    core: str  # snapcore's core

    @property
    def tids(self):
        return self.target.info["tids"]

    @property
    def funcs(self):
        """{tid: the function that thread is blocked in}"""
        names = PY_THREAD_FUNCS if self.name == "python" else THREAD_FUNCS
        return dict(zip(self.tids, names))

    @property
    def outer(self):
        """A function further up the main thread's stack (python's main() is a tail call)."""
        return "Py_BytesMain" if self.name == "python" else "main"

    @property
    def is32(self):
        return self.name == "mt32"


def snap_c(spawn, tmp_path, name):
    exe = need_built(name)
    t = spawn(name)
    t.wait_blocked(syscalls=(READ_NR.get(name, 0),))
    core = snapcore.snapshot(t.pid, tmp_path / "core").path
    return Snap(name, exe, t, core)


def snap_python(spawn, tmp_path):
    t = spawn([sys.executable, PYTHREADS])
    t.wait_blocked(syscalls=(230,))  # clock_nanosleep
    t.wait_blocked(tid=t.info["tids"][1], syscalls=(202,))  # futex
    core = snapcore.snapshot(t.pid, tmp_path / "core").path
    return Snap("python", sys.executable, t, core)


def snap_target(spawn, tmp_path, name):
    return snap_python(spawn, tmp_path) if name == "python" else snap_c(spawn, tmp_path, name)


def build_id(path):
    out = run(["readelf", "-n", path], check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def blocks(text, header):
    """Split a reader's output into {key: block text} at lines matching header (key = group 1)."""
    out, key = {}, None
    for line in text.splitlines():
        m = re.search(header, line)
        if m:
            key = int(m.group(1))
            out[key] = ""
        elif key is not None:
            out[key] += line + "\n"
    return out


# ---------------------------------------------------------------------------
# gdb


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_gdb(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    pc = "eip" if s.is32 else "rip"
    if name == "python":
        # a global of libpython that the interpreter set at start-up
        globals_ = {"print (int)_PyRuntime.initialized": "= 1"}
    else:
        # one from .data, one written at run time (only in the core's memory)
        globals_ = {
            "print/x snapcore_marker": f"= {MARKER:#x}",
            "print tids": "= {{{}}}".format(", ".join(map(str, s.tids))),
        }
    p = gdb_batch(
        s.exe,
        s.core,
        "info threads",
        "thread apply all bt",
        "info sharedlibrary",
        *globals_,
        f"info registers {pc}",
    )
    out = p.stdout
    threads = blocks(out, r"^Thread \d+ \(.*LWP (\d+)\)\):")
    assert sorted(threads) == sorted(s.tids), out + p.stderr
    for tid, fn in s.funcs.items():
        assert re.search(rf"\b{fn} \(", threads[tid]), (tid, fn, threads[tid])
    assert re.search(rf"\b{s.outer} \(", threads[s.tids[0]])
    for value in globals_.values():
        assert value in out, (value, out)
    # registers symbolized, for the current thread (the main one)
    assert re.search(rf"^{pc}\s+0x[0-9a-f]+\s+0x[0-9a-f]+ <[\w.@]+\+\d+>", out, re.M), out
    assert "Current thread is 1 (" in out and f"LWP {s.tids[0]})" in out
    if name == "mt_static":
        assert "No shared libraries loaded at this time." in out
    else:
        assert re.search(r"^0x[0-9a-f]+\s+0x[0-9a-f]+\s+Yes.*/libc\.so\.6$", out, re.M), out
    assert "Program terminated with signal" not in out
    assert_runs_on(s.target)


@pytest.mark.parametrize("name", ["mt", "mt32"])
def test_gdb_says_of_our_core_what_it_says_of_the_kernels(spawn, tmp_path, name):
    """Same process, two cores: gdb's backtraces, registers and warnings must be the same
    (e.g. gdb 13's '.reg-xstate ... too small' on CPUs whose XSAVE layout it does not know
    appears for both or for neither)."""
    t, kcore, score = snapshot_then_kernel_core(spawn, tmp_path, name)
    exe = target_path(name)
    cmds = ("thread apply all bt full", "thread apply all info registers", "info sharedlibrary")
    with kcore, score:
        mine, theirs = (gdb_batch(exe, c.path, *cmds) for c in (score, kcore))

    def shown(p):
        threads = blocks(p.stdout, r"^Thread \d+ \(.*LWP (\d+)\)\):")
        warnings = sorted(ln for ln in p.stderr.splitlines() if "warning" in ln.lower())
        return threads, warnings

    assert sorted(shown(mine)[0]) == sorted(t.info["tids"]), mine.stdout
    assert shown(mine) == shown(theirs), (mine.stdout + mine.stderr, theirs.stderr)
    assert "Program terminated with signal SIGABRT" in theirs.stdout
    assert "Program terminated" not in mine.stdout


# ---------------------------------------------------------------------------
# lldb


def lldb_threads(exe, core):
    need_tool("lldb")
    """{tid: backtrace text} from lldb's `thread list` and `thread backtrace all`."""
    p = run(
        [
            "lldb",
            "--batch",
            "-o",
            f"target create {exe} --core {core}",
            "-o",
            "thread list",
            "-o",
            "thread backtrace all",
        ],
        timeout=120,
    )
    out = p.stdout
    tid_of = {int(n): int(t) for n, t in re.findall(r"thread #(\d+): tid = (\d+)", out)}
    bt = out[out.index("thread backtrace all") :] if "thread backtrace all" in out else ""
    by_index = blocks(bt, r"^\*?\s*thread #(\d+),")
    return {tid_of[i]: text for i, text in by_index.items()}, out + p.stderr


@pytest.mark.parametrize("name", ["mt", "mt_nopie", "mt_static", "python"])
def test_lldb(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    threads, out = lldb_threads(s.exe, s.core)
    assert sorted(threads) == sorted(s.tids), out
    for tid, fn in s.funcs.items():
        assert f"`{fn}" in threads[tid], (tid, fn, out)
    assert f"`{s.outer}" in threads[s.tids[0]]
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
    assert "`command_loop" in mine[t.pid] and "`main" in mine[t.pid]


# ---------------------------------------------------------------------------
# elfutils


@pytest.mark.parametrize("with_exe", [True, False], ids=["with-e", "without-e"])
@pytest.mark.parametrize("name", ALL_TARGETS)
def test_eu_stack(spawn, tmp_path, name, with_exe):
    s = snap_target(spawn, tmp_path, name)
    need_tool("eu-stack", "elfutils")
    argv = ["eu-stack", "--core", s.core] + (["-e", s.exe] if with_exe else [])
    p = run(argv, timeout=120)
    threads = blocks(p.stdout, r"^TID (\d+):")
    assert sorted(threads) == sorted(s.tids), p.stdout + p.stderr
    for tid, fn in s.funcs.items():
        assert re.search(rf" {fn}$", threads[tid], re.M), (tid, fn, p.stdout)
    assert re.search(rf" {s.outer}$", threads[s.tids[0]], re.M)
    assert_runs_on(s.target)


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_eu_unstrip_build_ids(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    need_tool("eu-unstrip", "elfutils")
    p = run(["eu-unstrip", "-n", "--core", s.core], timeout=60)
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
    if name == "python":
        assert "libpython3.11.so.1.0" in libs or any("libpython" in m for m in libs)
    assert_runs_on(s.target)


# ---------------------------------------------------------------------------
# drgn


def drgn_program(core, exe):
    drgn = need_module("drgn")
    prog = drgn.Program()
    prog.set_core_dump(core)
    try:
        prog.load_debug_info([exe], default=True)
    except drgn.MissingDebugInfoError:
        pass  # e.g. the vDSO: what we check below needs only exe's symbols
    return drgn, prog


def frame_names(trace):
    return [f.name for f in trace if f.name]


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_drgn(spawn, tmp_path, name):
    s = snap_target(spawn, tmp_path, name)
    drgn, prog = drgn_program(s.core, s.exe)
    threads = {t.tid: t for t in prog.threads()}
    assert sorted(threads) == sorted(s.tids)
    assert prog.crashed_thread().tid == prog.main_thread().tid == s.target.pid
    if name == "python":
        assert prog["_PyRuntime"].initialized.value_() == 1
    else:
        assert prog["snapcore_marker"].value_() == MARKER
        assert list(prog["tids"].value_()) == s.tids
    for tid, fn in s.funcs.items():
        if s.is32:
            # a limitation of drgn itself, asserted so that its removal is noticed
            with pytest.raises(NotImplementedError, match="not supported for i386"):
                threads[tid].stack_trace()
            continue
        assert fn in frame_names(threads[tid].stack_trace()), tid
    assert_runs_on(s.target)


# ---------------------------------------------------------------------------
# pyelftools

# register notes pyelftools names (the others it gives as numbers)
NOTE_TYPES = {"NT_FPREGSET": 2, "NT_PRXFPREG": 0x46E62B7F, "NT_X86_XSTATE": 0x202}


@pytest.mark.parametrize("name", ALL_TARGETS)
def test_pyelftools(spawn, tmp_path, name):
    from elftools.elf.elffile import ELFFile

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


def pystack(core, *extra):
    return run([sys.executable, "-m", "pystack", "core", core, *extra], timeout=120)


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_pystack(spawn, tmp_path, native):
    need_module("pystack")
    s = snap_python(spawn, tmp_path)
    p = pystack(s.core, *(["--native"] if native else []))
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "The core file seems to have been generated on demand" in out
    assert f"executable found in the core file: {sys.executable}" in out + p.stderr
    threads = blocks(out, r"^Traceback for thread (\d+)")
    assert sorted(threads) == sorted(s.tids), out
    main, worker = threads[s.tids[0]], threads[s.tids[1]]
    order = [main.index(f" in {fn}\n") for fn in ("<module>", "main", "outer", "inner")]
    assert order == sorted(order), main
    assert "time.sleep(3600)" in main
    assert " in worker_loop\n" in worker and "event.wait()" in worker
    assert " in wait\n" in worker
    if native:
        assert re.search(r"\(C\) File .*, in time_sleep", main), main
        assert re.search(r"\(C\) File .*, in PyThread_acquire_lock_timed", worker), worker
    else:
        assert "(C) File" not in out
    assert_runs_on(s.target)
