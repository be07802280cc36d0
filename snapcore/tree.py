"""snapshot_tree(pid, outdir): a core of a process and of all its descendants.

    outdir/
        core.PID            one core per process that could be dumped
        core.CHILD ...
        manifest.json       every process of the tree, with its result or error

The tree is frozen as one instant before any core is written, and stays
frozen until the last core is written:

    on one tracer thread:
        repeat until a scan finds no new process (bounded):
            list the descendants of pid (/proc/*/stat ppid links)
            freeze each new one (a tracer.Freezer per process)
            -- frozen processes cannot fork, so this ends once all are caught
        write core.P of every frozen process
        resume every process (always, on every path)
    write manifest.json

A process that cannot be dumped (it exited, is a zombie, is traced by someone
else, refused ptrace ...) gets its error in the manifest; the others are
still dumped.  When the calling process is in the tree, its core is taken by
a helper process (selfsnap.py) right after the others are frozen, and the
calling thread shows in it, stopped in this call.  When the caller is the
parent of a process it freezes (itself in the tree, or pid its child), the
helper first holds the caller's threads blocked in waitpid(): see selfsnap.py.
"""
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

from . import procfs
from .errors import OutputError, OutputExists, SnapcoreError, SnapshotCancelled
from .output import CoreFile
from .snapshot import Snapshot, check_target, write_frozen
from .tracer import CancelToken, Freezer, run_traced

MAX_SCANS = 32
MANIFEST = "manifest.json"


@dataclass
class ProcessResult:
    """One process of the tree, as the manifest lists it."""
    pid: int
    ppid: int
    comm: str
    cmdline: list
    exe: str = None
    python: bool = False          # libpython or a python executable is mapped
    core: str = None              # path of the core, None if it was not written
    threads: list = field(default_factory=list)
    error: str = None
    error_type: str = None
    is_caller: bool = False       # the process that called snapshot_tree
    snapshot: Snapshot = None

    @property
    def ok(self):
        return self.core is not None

    def manifest_entry(self):
        return {
            "pid": self.pid, "ppid": self.ppid, "comm": self.comm, "cmdline": self.cmdline,
            "exe": self.exe, "python": self.python,
            "core": os.path.basename(self.core) if self.core else None,
            "threads": self.threads,
            "result": "ok" if self.ok else "error",
            "error": self.error, "error_type": self.error_type,
            "caller": self.is_caller,
            "pause_ms": round(self.snapshot.pause_time * 1000, 1) if self.snapshot else None,
            "file_size": self.snapshot.file_size if self.snapshot else None,
        }


@dataclass
class TreeSnapshot:
    """What snapshot_tree() wrote."""
    root: int
    outdir: str
    manifest: str
    processes: list               # [ProcessResult], parents before children
    wall_time: float = 0.0
    pause_time: float = 0.0       # longest time any process was stopped

    @property
    def ok(self):
        return [p for p in self.processes if p.ok]

    @property
    def failed(self):
        return [p for p in self.processes if not p.ok]

    def get(self, pid):
        for p in self.processes:
            if p.pid == pid:
                return p
        return None

    def summary(self):
        n, bad = len(self.processes), len(self.failed)
        extra = f", {bad} failed" if bad else ""
        return (f"{self.outdir}: {n - bad} core{'s' if n - bad != 1 else ''} of a tree of {n} "
                f"process{'es' if n != 1 else ''}{extra} in {self.wall_time:.2f}s, "
                f"paused up to {self.pause_time * 1000:.0f} ms")


def default_outdir(pid):
    return f"snapcore-{pid}-{time.strftime('%Y%m%d-%H%M%S')}"


def snapshot_tree(pid, outdir=None, *, force=False, stop_timeout=5.0, coredump_filter=None,
                  writer_thread=True, buffer_size=16 << 20):
    """Write core.P into outdir for pid and each of its descendants, and manifest.json.

    outdir          created if missing (default ``snapcore-PID-TIME`` in the cwd)
    force           replace existing core.P / manifest.json files in outdir
    stop_timeout, coredump_filter  as for snapshot(), per process

    Every process of the tree runs on afterwards.  Raises a SnapcoreError only
    when nothing could be done (pid itself does not exist or cannot be traced,
    outdir cannot be created, the manifest exists); a process of the tree that
    cannot be dumped is listed in the manifest with its error instead.
    """
    t0 = time.monotonic()
    check_target(pid)
    outdir = os.fspath(outdir) if outdir is not None else default_outdir(pid)
    created = not os.path.isdir(outdir)
    job = None
    try:
        try:
            os.makedirs(outdir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise OutputError(outdir, f"cannot create directory {outdir}: {exc.strerror}",
                              exc.errno) from exc
        manifest = os.path.join(outdir, MANIFEST)
        if not force and os.path.lexists(manifest):
            raise OutputExists(manifest)
        cancel = CancelToken()
        job = _TreeJob(pid, outdir, force, stop_timeout, coredump_filter, writer_thread,
                       buffer_size, cancel)
        processes = run_traced(job.run, cancel, name="snapcore-tree")
        result = TreeSnapshot(root=pid, outdir=outdir, manifest=manifest, processes=processes,
                              wall_time=time.monotonic() - t0,
                              pause_time=max((p.snapshot.pause_time for p in processes
                                              if p.snapshot), default=0.0))
        _write_manifest(result, force)
    except BaseException:
        # cancelled (or failed) midway: without a manifest, take back the cores written
        for res in (job.results.values() if job is not None else ()):
            if res.core:
                try:
                    os.unlink(res.core)
                except OSError:
                    pass
        if created:
            try:
                os.rmdir(outdir)
            except OSError:
                pass
        raise
    return result


class _TreeJob:
    """The part of snapshot_tree that runs on the tracer thread."""

    def __init__(self, root, outdir, force, stop_timeout, filt, writer_thread, buffer_size,
                 cancel):
        self.root = root
        self.outdir = outdir
        self.force = force
        self.stop_timeout = stop_timeout
        self.filt = filt
        self.writer_thread = writer_thread
        self.buffer_size = buffer_size
        self.cancel = cancel
        self.me = os.getpid()
        self.results = {}           # pid -> ProcessResult, in discovery order
        self.frozen = {}            # pid -> (Freezer, [FrozenThread], Status)
        self.helper = None
        self.helper_error = None

    def run(self):
        try:
            parents = procfs.parent_map()
            self_in_tree = self.root == self.me or procfs.is_descendant(self.me, self.root,
                                                                        parents)
            if self_in_tree or parents.get(self.root) == self.me:
                self._start_helper(hold=True)
            self._freeze_tree()
            if self_in_tree:
                self._dump_caller()
            for pid, (freezer, frozen, status) in list(self.frozen.items()):
                self._write(pid, freezer, frozen, status)
        finally:
            for pid, (freezer, _, _) in self.frozen.items():
                freezer.resume()
                snap = self.results[pid].snapshot
                if snap is not None:
                    snap.pause_time = freezer.pause_seconds
            if self.helper is not None:
                self.helper.close()
        return list(self.results.values())

    def _start_helper(self, hold):
        from .selfsnap import HelperSession
        self.helper = HelperSession(self.cancel, self.stop_timeout)
        try:
            self.helper.start()
            if hold:
                self.helper.hold_waiters(skip=[threading.get_native_id()])
        except SnapshotCancelled:
            raise
        except SnapcoreError as exc:            # HelperError, or ptrace refused to it
            # without the helper: the caller's own core is lost (reported in
            # the manifest) and waitpid() in other threads may see the stops
            self.helper.close()
            self.helper = None
            self.helper_error = exc

    def _freeze_tree(self):
        skip = {self.helper.pid} if self.helper is not None else set()
        for _ in range(MAX_SCANS):
            self._check_cancel()
            parents = procfs.parent_map()
            members = [self.root] + procfs.descendants(self.root, parents)
            new = [p for p in members if p not in self.results and p not in skip]
            if not new:
                return
            for pid in new:
                res = self.results[pid] = _describe(pid, parents.get(pid, 0))
                res.is_caller = pid == self.me
                if pid != self.me:
                    self._freeze(pid, res)
        # still finding new processes: some process we could not stop keeps forking

    def _freeze(self, pid, res):
        try:
            status = check_target(pid)
            freezer = Freezer(pid, self.stop_timeout, self.cancel)
            try:
                frozen = freezer.freeze()
            except BaseException:
                freezer.resume()
                raise
            self.frozen[pid] = (freezer, frozen, status)
        except SnapshotCancelled:
            raise
        except SnapcoreError as exc:
            _set_error(res, exc)

    def _dump_caller(self):
        res = self.results[self.me]
        if self.helper is None:
            _set_error(res, self.helper_error
                       or SnapcoreError("the snapcore helper process is not available"))
            return
        path = os.path.join(self.outdir, f"core.{self.me}")
        try:
            snap = self.helper.dump(path, force=self.force, coredump_filter=self.filt,
                                    writer_thread=self.writer_thread,
                                    buffer_size=self.buffer_size)
        except SnapshotCancelled:
            raise
        except SnapcoreError as exc:
            _set_error(res, exc)
            return
        snap.path = path
        _set_result(res, snap)

    def _write(self, pid, freezer, frozen, status):
        res = self.results[pid]
        path = os.path.join(self.outdir, f"core.{pid}")
        try:
            snap = write_frozen(pid, path, freezer, frozen, status, force=self.force,
                                coredump_filter=self.filt, cancel=self.cancel,
                                writer_thread=self.writer_thread,
                                buffer_size=self.buffer_size)
        except SnapshotCancelled:
            raise
        except SnapcoreError as exc:
            _set_error(res, exc)
            return
        _set_result(res, snap)

    def _check_cancel(self):
        if self.cancel.is_set():
            raise SnapshotCancelled()


def _set_result(res, snap):
    res.snapshot = snap
    res.core = snap.path
    res.threads = list(snap.tids)


def _set_error(res, exc):
    res.error = str(exc)
    res.error_type = type(exc).__name__


_PYTHON_EXE = re.compile(r"^python[0-9.]*[dmu]*$")


def _describe(pid, ppid):
    """What the manifest says of a process, read before it is frozen."""
    try:
        st = procfs.read_stat(pid)
        comm, ppid = st.comm, st.ppid
    except SnapcoreError:
        comm = ""
    try:
        cmdline = procfs.read_cmdline(pid)
    except SnapcoreError:
        cmdline = []
    exe = procfs.read_exe(pid)
    python = bool(exe and _PYTHON_EXE.match(os.path.basename(exe)))
    if not python:
        try:
            python = b"/libpython" in procfs.read_bytes(pid, "maps")
        except SnapcoreError:
            pass
    return ProcessResult(pid=pid, ppid=ppid, comm=comm, cmdline=cmdline, exe=exe,
                         python=python)


def _write_manifest(result, force):
    from . import __version__
    doc = {
        "snapcore": __version__,
        "root": result.root,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time": round(result.wall_time, 3),
        "processes": [p.manifest_entry() for p in result.processes],
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    out = CoreFile(result.manifest, force=force)
    try:
        out.write_at(data, 0)
        out.finish(len(data))
    except BaseException:
        out.abort()
        raise


def read_manifest(outdir):
    """The manifest of a tree snapshot, as a dict (core paths made absolute)."""
    with open(os.path.join(outdir, MANIFEST)) as f:
        doc = json.load(f)
    for p in doc["processes"]:
        if p.get("core"):
            p["core_path"] = os.path.join(outdir, p["core"])
    return doc
