"""The processes and threads `why` reasons about, loaded from cores.

    load(target) -> [Process]     a core file, or a tree directory (manifest.json)

For each process: its threads with their registers, their kernel state
(threadstate.kernel_of), their native stack (unwind.py), their Python stack;
and the process facts capture recorded (fds, epoll sets, children, Unix
socket peers: capture/kstate.py).  Python stacks come from the core's
SNAPCORE note; a core without one (the kernel's, gcore's, an older
snapcore's) has its memory walked (cpython/), and pystack is asked last, for
interpreter versions snapcore's reader does not know.

A Process keeps its CoreReader open (``mem``) while `why` looks for the words
a verdict needs (a mutex's owner); ``close()`` it after.
"""

import json
import os
import re
from dataclasses import dataclass, field

from ..bundle.unpack import executable, is_bundle, open_cores
from ..cpython import Memory, find_runtime, walk
from ..errors import CoreFormatError
from . import unwind
from .core import CoreReader
from .coreinfo import inspect_core
from .threadstate import classify, kernel_of

# frames of snapcore taking the snapshot (a self or tree snapshot: the pytest
# plugin, `snapcore run`): such a thread is busy with the snapshot, not hung
_SNAPCORE_FRAME = re.compile(r"/snapcore/(?:capture/[^/]+|pytest_plugin|cli/run)\.py$")


def is_snapcore(th):
    """The thread is snapcore's, taking the snapshot: recorded so at capture, or
    (a core without that record) seen in snapcore's frames."""
    return th.snapcore or any(
        _SNAPCORE_FRAME.search(f["file"]) for f in (th.python or {}).get("frames") or []
    )


@dataclass
class Thread:
    pid: int
    tid: int
    name: str
    kernel: dict
    regs: dict
    python: dict = None  # {"ident", "holds_gil", "frames", "locks"}
    native: list = field(default_factory=list)  # function names, innermost first
    klass: str = "user-code"
    snapcore: bool = False  # recorded at capture: busy taking this snapshot
    timeout: bool = None
    waits_for: dict = None

    @property
    def call(self):
        return self.kernel.get("syscall")


@dataclass
class Process:
    pid: int
    ppid: int = None
    comm: str = None
    cmdline: list = None
    core: str = None
    error: str = None  # why there is no core (a tree's manifest says)
    threads: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)  # fds, epoll, children, unix_peers
    python: dict = None  # version, runtime, gil, errors
    recorded: bool = False  # the core has snapcore's note with the kernel's view
    unwinder: str = None
    python_source: str = None  # "note", "memory", "pystack"
    unfrozen: str = None  # why there is no core: the process could not be frozen
    arch: object = None
    mem: object = None  # CoreMemory

    def close(self):
        if self.mem is not None:
            self.mem.close()
            self.mem = None


class CoreMemory:
    """A core's memory, with the files of its NT_FILE mappings behind it (as gdb
    reads them): text and read-only data are not in a core, names are."""

    def __init__(self, core):
        self.core = core
        self.page, self.files = core.files()
        self._fds = {}

    def read(self, addr, n):
        data = self.core.read_mem(addr, n)
        if data:
            return data
        for start, end, pgoff, name in self.files:
            if start <= addr < end:
                fd = self._fds.get(name)
                if fd is None:
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        fd = -1
                    self._fds[name] = fd
                if fd < 0:
                    return b""
                try:
                    return os.pread(fd, min(n, end - addr), pgoff * self.page + addr - start)
                except OSError:
                    return b""
        return b""

    def word(self, addr, size=8):
        data = self.read(addr, size)
        return int.from_bytes(data, "little") if len(data) == size else None

    def close(self):
        for fd in self._fds.values():
            if fd >= 0:
                os.close(fd)
        self._fds = {}
        self.core.close()


def load(target):
    """[Process] of a core file, a tree directory or a bundle (snapcore --bundle)."""
    if os.path.isdir(target):
        return load_tree(target)
    if is_bundle(target):
        return load_bundle(target)
    return [load_core(target)]


def load_bundle(path):
    """[Process] of every core of a bundle, each unwound against the bundle's files
    (the executable and libraries that were running), not this machine's."""
    out = []
    for entry, core, sysroot in open_cores(path):
        out.append(load_core(core, exe=executable({}, entry, sysroot), sysroot=sysroot))
    return out


def load_tree(outdir):
    path = os.path.join(outdir, "manifest.json")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise CoreFormatError(path, f"not a snapcore tree directory ({exc})") from None
    out = []
    for entry in doc.get("processes") or []:
        core = entry.get("core")
        if not core:
            out.append(
                Process(
                    pid=entry.get("pid"),
                    ppid=entry.get("ppid"),
                    comm=entry.get("comm"),
                    cmdline=entry.get("cmdline"),
                    error=entry.get("error") or "no core",
                )
            )
            continue
        proc = load_core(os.path.join(outdir, core), exe=entry.get("exe"))
        if proc.ppid is None:
            proc.ppid = entry.get("ppid")
        out.append(proc)
    return out


def load_core(path, exe=None, sysroot=None):
    """A Process from one core (plain or .zst); sysroot: where its mapped files are."""
    core = CoreReader(path)
    mem = CoreMemory(core)
    try:
        record = core.snapcore_record() or None
        ps = core.prpsinfo() or {}
        proc = Process(
            pid=ps.get("pid"),
            ppid=ps.get("ppid"),
            comm=ps.get("fname"),
            core=path,
            arch=core.arch,
            mem=mem,
        )
        recorded_threads = {}
        if record is not None:
            proc.cmdline = record.get("cmdline")
            proc.facts = record.get("kernel") or {}
            proc.python = record.get("python")
            exe = exe or record.get("exe")
            recorded_threads = {
                t.get("tid"): t for t in record.get("threads") or [] if isinstance(t, dict)
            }
            proc.recorded = any(t.get("kernel") for t in recorded_threads.values())
        for t in core.threads():
            rec = recorded_threads.get(t.tid) or {}
            kernel = kernel_of(core.arch, t, rec.get("kernel"))
            name = rec.get("name") or (proc.comm if t.tid == proc.pid else None)
            th = Thread(pid=proc.pid, tid=t.tid, name=name, kernel=kernel, regs=t.regs)
            th.python = rec.get("python")
            th.snapcore = bool(rec.get("snapcore"))
            th.klass, th.timeout = classify(kernel)
            proc.threads.append(th)
        if proc.python is not None:
            proc.python_source = "note"
            if proc.python.get("errors") and not any(th.python for th in proc.threads):
                # a CPython snapcore's reader does not know: pystack's frames, if it
                # can (the reader's word stays in the errors)
                noted = proc.python
                _python_from_pystack(proc, path, exe)
                if proc.python_source == "pystack":
                    proc.python.update(version=noted.get("version"), errors=noted["errors"])
        else:
            _python_from_memory(proc, mem)
            if proc.python is None:
                _python_from_pystack(proc, path, exe)
        for th in proc.threads:
            if is_snapcore(th):
                th.klass, th.timeout = "snapcore", None
        proc.unwinder, stacks = unwind.native_stacks(path, exe, sysroot=sysroot)
        if not stacks:
            stacks = _symbols_at_pc(path)
        for th in proc.threads:
            th.native = stacks.get(th.tid, [])
        return proc
    except BaseException:
        mem.close()
        raise


def from_samples(pid, comm, threads, process, arch, why, mem=None):
    """A Process from what /proc said (capture/kstate.py), without a core: for a
    process that cannot be frozen (a thread in uninterruptible sleep, another
    tracer).  The system calls come from /proc/PID/task/TID/syscall; no stacks;
    ``mem`` (read(addr, n), close()) reads the words a verdict needs."""
    proc = Process(pid=pid, comm=comm, facts=process or {}, recorded=True, arch=arch, mem=mem)
    proc.unfrozen = why
    for tid in sorted(threads):
        kernel = dict(threads[tid])
        name = kernel.pop("name", None)
        kernel["syscall"] = _proc_call(arch, kernel.pop("proc_syscall", None))
        kernel["source"] = "proc"
        th = Thread(pid=pid, tid=tid, name=name, kernel=kernel, regs={})
        th.klass, th.timeout = classify(kernel)
        # no user stack without a freeze: the kernel's side of it groups the threads
        th.native = ["[kernel] " + f.split("+", 1)[0] for f in kernel.get("stack") or []]
        proc.threads.append(th)
    return proc


def _proc_call(arch, raw):
    if arch is None or not raw or len(raw) != 9 or raw[0] < 0:
        return None
    return {
        "nr": raw[0],
        "name": arch.syscall_name(raw[0]) or f"syscall_{raw[0]}",
        "args": raw[1:7],
        "sp": raw[7],
        "pc": raw[8],
    }


def _symbols_at_pc(path):
    """{tid: [the function at its pc]}: what is left without an unwinder."""
    try:
        report = inspect_core(path)
    except Exception:
        return {}
    return {
        t["tid"]: [t["symbol"].rsplit("+", 1)[0] if t["symbol"] else f"{t['pc']:#x}"]
        for t in report["threads"]
    }


def _python_from_memory(proc, mem):
    """The Python threads of a core without snapcore's note, from its memory."""
    maps = [(s, e, pg * mem.page, name) for s, e, pg, name in mem.files]
    runtime = find_runtime(maps)
    if runtime is None or proc.arch is None or proc.arch.word_size != 8:
        return
    result = walk(Memory(mem.read), runtime)
    if not result["threads"]:
        return
    by_tid = {t["tid"]: t for t in result.pop("threads")}
    for th in proc.threads:
        py = by_tid.get(th.tid)
        if py is not None:
            th.python = {k: v for k, v in py.items() if k != "tid"}
    proc.python = result
    proc.python_source = "memory"


def _python_from_pystack(proc, path, exe):
    """pystack's Python stacks (optional dependency; interpreter versions snapcore's
    own reader does not know).  Frames only: no GIL, no locks."""
    if not any("python" in (name or "") for *_, name in proc.mem.files):
        return
    try:
        from pystack.engine import (
            CoreFileAnalyzer,
            NativeReportingMode,
            get_process_threads_for_core,
        )
    except ImportError:
        return
    try:
        if exe is None:
            exe = str(CoreFileAnalyzer(path).extract_executable())
        threads = get_process_threads_for_core(path, exe, native_mode=NativeReportingMode.OFF)
    except Exception:
        return
    by_tid = {t.tid: t for t in threads}
    for th in proc.threads:
        py = by_tid.get(th.tid)
        if py is None:
            continue
        frames = [
            {"name": f.code.scope, "file": f.code.filename, "line": f.code.location.lineno}
            for f in py.frames
        ]
        frames.reverse()  # pystack lists the outermost first
        th.python = {"ident": None, "holds_gil": bool(py.holds_the_gil), "frames": frames}
    proc.python = {"version": None, "gil": None, "errors": []}
    proc.python_source = "pystack"
