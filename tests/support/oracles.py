"""Independent readers of a core, and the kernel's own core as a reference.

Each runner here starts a real tool (gdb, lldb, eu-stack, eu-unstrip, pystack,
drgn, readelf) on a core and turns what it prints into data: the threads it
found and, for each, the functions of its frames.  ``coreparse`` decodes the
ELF framing and notes itself, sharing no code with snapcore.  What a reader
*should* show comes from the target (support/targets.py), never from snapcore.
"""

import dataclasses
import json
import os
import re
import resource
import signal
import sys

import snapcore

from .coreparse import Core
from .procs import assert_untraced, run, task_states, tgkill, wait_all_blocked
from .strict import missing, need_module, need_tool
from .targets import MT_OUTER, MT_THREAD_FUNCS, need_built

# ---------------------------------------------------------------------------
# splitting a reader's output by thread


def sections(text, header):
    """{key: the lines after the header line, up to the next header} for every line
    matching ``header`` (key = int(group 1)).

    A key seen twice is an error, not a reset: a reader that lists a thread twice
    in one section of output, or output of two commands parsed as one, would
    otherwise leave only the last block to compare.
    """
    out, key = {}, None
    for line in text.splitlines():
        m = re.search(header, line)
        if m:
            key = int(m.group(1))
            if key in out:
                raise AssertionError(f"thread {key} appears twice in:\n{text}")
            out[key] = ""
        elif key is not None:
            out[key] += line + "\n"
    return out


# ---------------------------------------------------------------------------
# gdb

GDB_THREAD = r"^Thread \d+ \((?:.*\()?LWP (\d+)\)(?: \"[^\"]*\")?\)?:"
GDB_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(", re.M)
_SEP = "@@snapcore-test: next command@@"


def gdb_batch(exe, core, *commands, timeout=120):
    need_tool("gdb")
    argv = ["gdb", "-nx", "-batch", "-ex", "set debuginfod enabled off"]
    for c in commands:
        argv += ["-ex", c]
    argv += [exe, str(core)] if exe else ["-c", str(core)]
    return run(argv, timeout=timeout)


def gdb_each(exe, core, *commands, timeout=120):
    """(stdout of each command, separately; stderr; the CompletedProcess)."""
    seq = []
    for c in commands:
        seq += [f"echo \\n{_SEP}\\n", c]
    p = gdb_batch(exe, core, *seq, timeout=timeout)
    parts = p.stdout.split(_SEP + "\n")
    assert len(parts) == len(commands) + 1, p.stdout + p.stderr
    return parts[1:], p


def frames_by_thread(text, header=GDB_THREAD, frame=GDB_FRAME):
    """{tid: [function of frame 0, frame 1, ...]} from a `thread apply all bt`."""
    out = {}
    for tid, block in sections(text, header).items():
        found = frame.findall(block)
        out[tid] = [fn for n, fn in found]
        assert [int(n) for n, _ in found] == list(range(len(found))), block
    return out


def gdb_frames(exe, core):
    """{tid: [function, ...]} of every thread, as gdb unwinds it from the core."""
    (bt,), p = gdb_each(exe, core, "thread apply all bt")
    return frames_by_thread(bt), p


def registers_by_thread(text):
    """{tid: {register: value}} from a `thread apply all info registers`."""
    out = {}
    for tid, block in sections(text, GDB_THREAD).items():
        out[tid] = {
            m.group(1): int(m.group(2), 16)
            for m in re.finditer(r"^(\w+)\s+(0x[0-9a-f]+)", block, re.M)
        }
    return out


def assert_known_frames(frames, tids, funcs, outer=None, main=None):
    """Every thread of ``tids`` is in the function it is known to block in
    (``funcs``, same order), the main thread also in ``outer``."""
    assert sorted(frames) == sorted(tids), frames
    for tid, fn in zip(tids, funcs):
        assert fn in frames[tid], (tid, fn, frames[tid])
    if outer is not None:
        assert outer in frames[main or tids[0]], frames[main or tids[0]]


# ---------------------------------------------------------------------------
# lldb, elfutils, drgn, pystack

LLDB_THREAD = r"^\*?\s*thread #(\d+),"
LLDB_FRAME = re.compile(r"frame #(\d+): 0x[0-9a-f]+ (?:\S+`)?([^\s(]+)")
EU_FRAME = re.compile(r"^#(\d+)[ \t]+0x[0-9a-f]+(?: - 1)?(?:[ \t]+(\S+))?[ \t]*$", re.M)


def lldb_threads(exe, core):
    """({tid: [function, ...]}, all output) from lldb's `thread list` and
    `thread backtrace all`."""
    need_tool("lldb")
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
    assert "thread backtrace all" in out, out + p.stderr
    bt = out[out.index("thread backtrace all") :]
    frames = {}
    for i, block in sections(bt, LLDB_THREAD).items():
        found = LLDB_FRAME.findall(block)
        assert [int(n) for n, _ in found] == list(range(len(found))), block
        frames[tid_of[i]] = [re.sub(r"@.*", "", fn) for _, fn in found]
    return frames, out + p.stderr


def eu_stack(core, exe=None, timeout=120):
    """({tid: [function, ...]}, CompletedProcess) from eu-stack."""
    need_tool("eu-stack", "elfutils")
    argv = ["eu-stack", "--core", str(core)] + (["-e", exe] if exe else [])
    p = run(argv, timeout=timeout)
    frames = {}
    for tid, block in sections(p.stdout, r"^TID (\d+):").items():
        found = EU_FRAME.findall(block)
        assert [int(n) for n, _ in found] == list(range(len(found))), block
        frames[tid] = [re.sub(r"@.*", "", fn) for _, fn in found]
    return frames, p


def eu_stack_tids(core, exe=None, timeout=60):
    """Thread ids eu-stack finds in a core, in its order."""
    need_tool("eu-stack", "elfutils")
    argv = ["eu-stack", "--core", str(core)] + (["-e", exe] if exe else [])
    p = run(argv, timeout=timeout)
    return [int(m) for m in re.findall(r"^TID (\d+):", p.stdout, re.M)]


def eu_unstrip(core):
    need_tool("eu-unstrip", "elfutils")
    return run(["eu-unstrip", "-n", "--core", str(core)], timeout=60)


def drgn_program(core, exe):
    drgn = need_module("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(core))
    try:
        prog.load_debug_info([exe], default=True)
    except drgn.MissingDebugInfoError:
        pass  # e.g. the vDSO: what the tests check needs only exe's symbols
    return drgn, prog


def pystack(core, *extra, timeout=120):
    need_module("pystack")
    return run([sys.executable, "-m", "pystack", "core", str(core), *extra], timeout=timeout)


def pystack_threads(text):
    """{tid: that thread's part of pystack's output}."""
    return sections(text, r"^Traceback for thread (\d+)")


def build_id(path):
    out = run(["readelf", "-n", path], check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


# ---------------------------------------------------------------------------
# reading cores with coreparse and pyelftools (framing)


def core_loads(path):
    """Every PT_LOAD as a dict (vaddr, memsz, filesz, flags, offset, align, paddr)."""
    with Core(path) as c:
        return [dataclasses.asdict(ld) for ld in c.loads]


def read_core_memory(path, addr, length):
    """Bytes at a virtual address, from the core's PT_LOAD data (zeros past p_filesz)."""
    with Core(path) as c:
        return c.read(addr, length)


REG_NAMES_X86_64 = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)


def raw_notes(path):
    """[(name, type, desc bytes)] straight from the PT_NOTE bytes."""
    with Core(path) as c:
        return list(c.notes)


# ---------------------------------------------------------------------------
# the kernel's own core of a target, as a reference


def kernel_core_path(cwd, pid):
    with open("/proc/sys/kernel/core_uses_pid") as f:
        uses_pid = f.read().strip() == "1"
    return os.path.join(cwd, f"core.{pid}" if uses_pid else "core")


def need_kernel_cores():
    """The kernel writes its cores as `core` in the process's cwd, in address order
    (conftest.py sets that up for the session as root)."""
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern != "core":
        missing(
            f"kernel.core_pattern is {pattern!r}, not 'core': the kernel's core is not "
            f"written to the process's cwd (run the suite as root, it sets it)"
        )
    try:
        with open("/proc/sys/kernel/core_sort_vma") as f:
            sort_vma = f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        sort_vma = "0"  # kernels before 6.14 do not have it
    if sort_vma != "0":
        missing(
            "kernel.core_sort_vma is on: the kernel orders its PT_LOADs by dump size "
            "(docs/kernel-differences.md), snapcore keeps address order"
        )


def unlimited_core():
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def proc_times(pid, tids):
    """{tid: (utime, stime)} in clock ticks as /proc shows them; the leader's are the
    whole group's (/proc/PID/stat), as fill_prstatus() gives the leader."""
    out = {}
    for tid in tids:
        path = f"/proc/{pid}/stat" if tid == pid else f"/proc/{pid}/task/{tid}/stat"
        with open(path, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[11]), int(fields[12]))  # fields 14 and 15 of proc(5)
    return out


def snapshot_then_kernel_core(spawn, tmp_path, exe, *args, filter_=None):
    """Run ``exe still ARGS``, snapshot it, then let the kernel dump it.

    Returns (target, kernel core, snapcore core) as coreparse.Core objects.
    The target is deterministic (every thread blocked, rseq off); between the
    snapshot and SIGABRT the test checks it runs on: untraced, every thread
    back in the very same wait.  SIGABRT goes to the main thread (tgkill), so
    the kernel's dumping thread is the one snapcore puts first.
    """
    need_kernel_cores()
    need_built(exe)
    env = dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    t = spawn(exe, "still", *args, cwd=str(workdir), env=env, preexec_fn=unlimited_core)
    if filter_ is not None:
        with open(f"/proc/{t.pid}/coredump_filter", "w") as f:
            f.write(f"{filter_:#x}")
    blocked = wait_all_blocked(t.pid)
    t.info["proc_times"] = proc_times(t.pid, blocked)
    ours = snapcore.snapshot(t.pid, tmp_path / "snap.core")
    # the target runs on: untraced, and every thread went back to the very same wait
    assert_untraced(t.pid)
    assert wait_all_blocked(t.pid) == blocked
    assert all(s == ("S", 0) for s in task_states(t.pid).values())
    tgkill(t.pid, t.pid, signal.SIGABRT)
    assert t.proc.wait(timeout=60) == -signal.SIGABRT
    kpath = kernel_core_path(str(workdir), t.pid)
    assert os.path.exists(kpath), f"the kernel wrote no core in {workdir}"
    return t, Core(kpath), Core(ours.path)


def snapcore_note(path):
    """snapcore's own SNAPCORE record (JSON) in a core: there is exactly one."""
    notes = [d for n, t, d in raw_notes(path) if n == "SNAPCORE"]
    assert len(notes) == 1, [n for n, _, _ in raw_notes(path)]
    return json.loads(notes[0])


def assert_mt_backtraces(exe, core, tids):
    """gdb unwinds every thread of an mt core into the function it is known to be in.
    Returns (frames, gdb's CompletedProcess)."""
    frames, p = gdb_frames(exe, core)
    assert_known_frames(frames, tids, MT_THREAD_FUNCS, MT_OUTER)
    return frames, p


# ---------------------------------------------------------------------------
# the registers of a stopped process, read with ptrace by a process of the test

_PTRACE_READER = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
SEIZE, INTERRUPT, DETACH, GETREGS, GETFPREGS, GETREGSET = 0x4206, 0x4207, 17, 12, 14, 0x4204
NT_X86_XSTATE, WALL = 0x202, 0x40000000

class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

def call(req, tid, addr=None, data=None):
    if libc.ptrace(req, tid, addr, data) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace({req:#x}, {tid})")

out = {}
pid = int(sys.argv[1])
for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
    call(SEIZE, tid)
    try:
        call(INTERRUPT, tid)
        os.waitpid(tid, WALL)
        regs = ctypes.create_string_buffer(27 * 8)
        call(GETREGS, tid, None, ctypes.addressof(regs))
        fp = ctypes.create_string_buffer(512)
        call(GETFPREGS, tid, None, ctypes.addressof(fp))
        xs = ctypes.create_string_buffer(1 << 16)
        iov = iovec(ctypes.addressof(xs), len(xs))
        call(GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))
        out[tid] = [regs.raw.hex(), fp.raw.hex(), xs.raw[: iov.len].hex()]
    finally:
        call(DETACH, tid, None, None)
print(json.dumps(out))
"""


def ptrace_registers(pid):
    """{tid: (user_regs_struct, FXSAVE area, XSAVE area)} as raw bytes, read by a
    separate process of the test with PTRACE_GETREGS, GETFPREGS and GETREGSET while
    the x86_64 process ``pid`` is stopped (SIGSTOP): the kernel's own view, which a
    core's NT_PRSTATUS pr_reg, NT_PRFPREG and NT_X86_XSTATE must equal."""
    p = run([sys.executable, "-c", _PTRACE_READER, str(pid)], timeout=60, check=True)
    return {int(t): tuple(bytes.fromhex(h) for h in v) for t, v in json.loads(p.stdout).items()}
