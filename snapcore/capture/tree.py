"""snapshot_tree(pid, outdir): a core of a process and of all its descendants.

    outdir/
        core.PID            one core per process that could be dumped
        core.CHILD ...
        manifest.json       every process of the tree, with its result or error
        bundle.tar.zst      --bundle: the cores, manifest and mapped files in one
                            archive (bundling.TreeBundle); the cores stay too

The tree is frozen as one instant before any core is written, and stays
frozen until the last core is written:

    on one tracer thread:
        repeat until a scan finds no new process (bounded):
            list the descendants of pid (/proc/*/stat ppid links)
            freeze each new one (a freeze.Freezer per process)
            -- frozen processes cannot fork, so this ends once all are caught
        write core.P of every frozen process (job.Job.write_frozen)
        resume every process (always, on every path)
        finish each core (its real pause in the metadata) and publish it
    write manifest.json

Every core is written with the same SnapshotOptions: --mini, --max-size
(a bound per core), --compress (core.P.zst), --metadata (core.P.json), the
filter and the rest apply to each process alike.  Live mode is refused: a
tree is one frozen instant.

A process that cannot be dumped (it exited, is a zombie, is traced by someone
else, refused ptrace ...) gets its error in the manifest; the others are
still dumped.  When the calling process is in the tree, its core is taken by
the helper process (helper.py) right after the others are frozen, and the
calling thread shows in it, stopped in this call.  When the caller is the
parent of a process it freezes (itself in the tree, or pid its child), the
helper first holds the caller's threads blocked in waitpid(): see helper.py.
"""

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

from .. import metadata, procfs, proctree
from .._version import __version__
from ..errors import OutputError, OutputExists, SnapcoreError, SnapshotCancelled
from . import kstate
from .collect import check_target
from .freeze import Freezer
from .helper import Helper, JobSpec
from .job import Job
from .publish import CoreFile, Outputs
from .request import SnapshotOptions, default_core_name
from .result import Snapshot
from .tracer import CancelToken, run_traced, snapcore_threads

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
    python: bool = False  # libpython or a python executable is mapped
    core: str = None  # path of the core, None if it was not written
    threads: list = field(default_factory=list)
    error: str = None
    error_type: str = None
    is_caller: bool = False  # the process that called snapshot_tree
    snapshot: Snapshot = None
    bundle_members: list = None  # --bundle: the archive's members its core and files are

    @property
    def ok(self):
        return self.core is not None

    def manifest_entry(self):
        snap = self.snapshot
        rec = (snap.metadata if snap is not None else None) or {}
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "comm": self.comm,
            "cmdline": self.cmdline,
            "exe": self.exe,
            "python": self.python,
            "core": os.path.basename(self.core) if self.core else None,
            "metadata": os.path.basename(snap.metadata_path)
            if snap is not None and snap.metadata_path
            else None,
            "threads": self.threads,
            "result": "ok" if self.ok else "error",
            "error": self.error,
            "error_type": self.error_type,
            "caller": self.is_caller,
            "mode": snap.mode if snap is not None else None,
            "compressed": snap.compressed if snap is not None else None,
            "truncated": snap.truncated if snap is not None else None,
            "pause_ms": round(snap.pause_time * 1000, 1) if snap is not None else None,
            "file_size": snap.file_size if snap is not None else None,
            # its ids in its own pid namespace: the ones its core's notes carry
            "ns_pid": (rec.get("ns_pid") or [None])[-1],
            "ns_threads": [t.get("ns_tid") for t in rec.get("threads") or []],
            "bundle": self.bundle_members,
        }


@dataclass
class TreeSnapshot:
    """What snapshot_tree() wrote."""

    root: int
    outdir: str
    manifest: str
    processes: list  # [ProcessResult], parents before children
    wall_time: float = 0.0
    pause_time: float = 0.0  # longest time any process was stopped
    bundle: dict = None  # --bundle: {path, files, binaries_bytes, left_out, seconds}

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
        return (
            f"{self.outdir}: {n - bad} core{'s' if n - bad != 1 else ''} of a tree of {n} "
            f"process{'es' if n != 1 else ''}{extra} in {self.wall_time:.2f}s, "
            f"paused up to {self.pause_time * 1000:.0f} ms"
        )


def default_outdir(pid):
    return f"snapcore-{pid}-{time.strftime('%Y%m%d-%H%M%S')}"


def snapshot_tree(pid, outdir=None, options=None, *, progress=None, **changes):
    """Write core.P into outdir for pid and each of its descendants, and manifest.json.

    outdir      created if missing (default ``snapcore-PID-TIME`` in the cwd)
    options     a SnapshotOptions (or its fields as keywords), applied to every
                process; live mode is refused (InvalidRequest)
    progress    callable(bytes_done, bytes_total) over the whole tree

    Every process of the tree runs on afterwards.  Raises a SnapcoreError only
    when nothing could be done (pid itself does not exist or cannot be traced,
    outdir cannot be created, the manifest exists); a process of the tree that
    cannot be dumped is listed in the manifest with its error instead.
    """
    t0 = time.monotonic()
    options = SnapshotOptions.of(options, **changes)
    if options.trigger is None:
        options = options.replace(trigger="tree")
    options.check_path("tree")
    check_target(pid)
    outdir = os.fspath(outdir) if outdir is not None else default_outdir(pid)
    created = not os.path.isdir(outdir)
    job = bundle = None
    try:
        try:
            os.makedirs(outdir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                outdir, f"cannot create directory {outdir}: {exc.strerror}", exc.errno
            ) from exc
        manifest = os.path.join(outdir, MANIFEST)
        if not options.force and os.path.lexists(manifest):
            raise OutputExists(manifest)
        bundle = None
        if options.bundle:
            from .bundling import TreeBundle

            bundle = TreeBundle(outdir, options)
        cancel = CancelToken()
        job = _TreeJob(pid, outdir, options.for_cores(), cancel, t0)
        processes = run_traced(job.run, cancel, lambda: job.report(progress))
        job.report(progress)
        result = TreeSnapshot(
            root=pid,
            outdir=outdir,
            manifest=manifest,
            processes=processes,
            wall_time=time.monotonic() - t0,
            pause_time=max((p.snapshot.pause_time for p in processes if p.snapshot), default=0.0),
        )
        data = bundle.write_tree(result, _manifest_bytes) if bundle is not None else None
        _write_manifest(result, options.force, data)
    except BaseException:
        if bundle is not None:
            bundle.abort()
        # cancelled (or failed) midway: without a manifest, take back what was written
        for res in job.results.values() if job is not None else ():
            for path in (res.core, res.snapshot.metadata_path if res.snapshot else None):
                if path:
                    try:
                        os.unlink(path)
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

    def __init__(self, root, outdir, options, cancel, t0):
        self.root = root
        self.outdir = outdir
        self.options = options
        self.cancel = cancel
        self.t0 = t0
        self.me = os.getpid()
        self.results = {}  # pid -> ProcessResult, in discovery order
        self.frozen = {}  # pid -> (Freezer, [FrozenThread], Status)
        self.samples = {}  # pid -> the kernel's view of it before its freeze (kstate)
        self.written = {}  # pid -> (Job, Outputs, Snapshot, t0): to publish
        self.helper = None
        self.helper_error = None
        self.current = None  # the Job writing now (progress)
        self.bytes_before = 0  # bytes of the cores finished before it

    def report(self, progress):
        """progress(done, total) over the cores written so far and the one being written."""
        if progress is None:
            return
        job = self.current
        if job is not None and job.total:
            progress(self.bytes_before + job.done(), self.bytes_before + job.total)
        elif job is None and self.bytes_before:
            progress(self.bytes_before, self.bytes_before)

    def run(self):
        try:
            parents = proctree.parent_map()
            self_in_tree = self.root == self.me or proctree.is_descendant(
                self.me, self.root, parents
            )
            if self_in_tree or parents.get(self.root) == self.me:
                self._start_helper()
            self._freeze_tree()
            if self_in_tree:
                self._dump_caller()
            for pid, (_, frozen, status) in list(self.frozen.items()):
                self._write(pid, frozen, status)
        except BaseException:
            for _, outputs, _, _ in self.written.values():
                outputs.abort()
            raise
        finally:
            for pid, (freezer, _, _) in self.frozen.items():
                freezer.resume()
                if pid in self.written:
                    self.written[pid][2].pause_time = freezer.pause_seconds
            if self.helper is not None:
                self.helper.close()
        for pid in list(self.written):
            self._publish(pid)
        return list(self.results.values())

    def _start_helper(self):
        self.helper = Helper(self.cancel)
        try:
            self.helper.start()
            self.helper.hold_waiters(self.options.stop_timeout, skip=[threading.get_native_id()])
        except SnapshotCancelled:
            raise
        except SnapcoreError as exc:  # HelperError, or ptrace refused to it
            # without the helper: the caller's own core is lost (reported in
            # the manifest) and waitpid() in other threads may see the stops
            self.helper.close()
            self.helper = None
            self.helper_error = exc

    def _freeze_tree(self):
        skip = {self.helper.pid} if self.helper is not None else set()
        for _ in range(MAX_SCANS):
            self._check_cancel()
            parents = proctree.parent_map()
            members = [self.root] + proctree.descendants(self.root, parents)
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
            self.samples[pid] = (kstate.sample_threads(pid), kstate.sample_process(pid))
            freezer = Freezer(pid, self.options.stop_timeout, self.cancel)
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

    def _outputs(self, pid, res):
        path = os.path.join(self.outdir, default_core_name(pid, self.options))
        try:
            return Outputs(path, self.options)
        except SnapcoreError as exc:
            _set_error(res, exc)
            return None

    def _dump_caller(self):
        res = self.results[self.me]
        if self.helper is None:
            _set_error(
                res,
                self.helper_error or SnapcoreError("snapcore's helper process is not available"),
            )
            return
        outputs = self._outputs(self.me, res)
        if outputs is None:
            return
        spec = JobSpec(
            pid=self.me,
            path=outputs.path,
            options=self.options,
            status=None,
            facts=dict(metadata.process_facts(self.me), snapcore_tids=snapcore_threads()),
            started=time.time(),
            t0=time.monotonic(),
            progress=False,
        )

        def dump():
            snap, file_size, record = self.helper.run_job(spec, outputs.core.fd)
            outputs.publish(file_size, record)
            return snap, record

        done = _attempt(res, outputs, dump)
        if done is not None:
            _set_result(res, done[0], outputs, done[1], spec.t0)

    def _write(self, pid, frozen, status):
        res = self.results[pid]
        outputs = self._outputs(pid, res)
        if outputs is None:
            return
        t0 = time.monotonic()
        job = Job(
            pid,
            outputs.core,
            status,
            self.options,
            metadata.process_facts(pid),
            time.time(),
            self.cancel,
        )
        self.current = job
        try:
            snap = _attempt(
                res, outputs, lambda: job.write_frozen(frozen, samples=self.samples.get(pid))
            )
        finally:
            self.bytes_before += job.total
            self.current = None
        if snap is not None:
            self.written[pid] = (job, outputs, snap, t0)

    def _publish(self, pid):
        """After the tree resumed: the final record (with this process's pause), publish."""
        job, outputs, snap, t0 = self.written.pop(pid)
        res = self.results[pid]

        def publish():
            file_size, record = job.finish(snap, time.monotonic() - t0)
            outputs.publish(file_size, record)
            return record

        record = _attempt(res, outputs, publish)
        if record is not None:
            _set_result(res, snap, outputs, record, t0)

    def _check_cancel(self):
        if self.cancel.is_set():
            raise SnapshotCancelled()


def _attempt(res, outputs, step):
    """step() for one process of the tree; None if it failed.

    A SnapcoreError of one process goes into its manifest entry and the tree
    goes on; a cancel, or anything else, ends the tree.  Either way the
    process's files are dropped.
    """
    try:
        return step()
    except SnapcoreError as exc:
        outputs.abort()
        if isinstance(exc, SnapshotCancelled):
            raise
        _set_error(res, exc)
        return None
    except BaseException:
        outputs.abort()
        raise


def _set_result(res, snap, outputs, record, t0):
    outputs.describe(snap, record, t0)
    res.snapshot = snap
    res.core = outputs.path
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
    return ProcessResult(pid=pid, ppid=ppid, comm=comm, cmdline=cmdline, exe=exe, python=python)


def _write_manifest(result, force, data=None):
    data = data if data is not None else _manifest_bytes(result)
    out = CoreFile(result.manifest, force=force)
    try:
        out.write_at(data, 0)
        out.finish(len(data))
    except BaseException:
        out.abort()
        raise


def _manifest_bytes(result):
    doc = {
        "snapcore": __version__,
        "root": result.root,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time": round(result.wall_time, 3),
        "processes": [p.manifest_entry() for p in result.processes],
        "bundle": os.path.basename(result.bundle["path"]) if result.bundle else None,
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def read_manifest(outdir):
    """The manifest of a tree snapshot, as a dict; each process with a core gets
    "core_path", the core's file name joined to outdir."""
    with open(os.path.join(outdir, MANIFEST)) as f:
        doc = json.load(f)
    for p in doc["processes"]:
        if p.get("core"):
            p["core_path"] = os.path.join(outdir, p["core"])
    return doc
