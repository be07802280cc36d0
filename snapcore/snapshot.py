"""snapshot(pid): freeze, collect, copy, resume, publish.

    check the target  ->  create PATH's temp file  ->  on the tracer thread:
        freeze all threads (tracer.Freezer)
        registers of every thread (PTRACE_GETREGSET), /proc facts
        VMAs (smaps) + coredump_filter -> dump plan (memory.plan_dump)
        selection pass: --mini / --max-size (memory.select_*)
        notes (+ the SNAPCORE note) + layout (elf.notes, elf.layout), header written
        memory copied by the C loop (memory.Copier), to the file or, with
            compress="zstd", in order through a pipe to a zstandard thread
        resume (always, on every path)
    live mode: the frozen target forks a copy-on-write image (snapcore/live.py),
        is resumed at once, and memory is copied from the image; the whole job
        then runs in a guardian process (snapcore/_guardian.py)
    -> SNAPCORE note rewritten with the final facts (uncompressed cores)
    -> ftruncate, link to PATH (output.CoreFile); the --metadata sidecar likewise
"""
import errno
import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field

from . import _native, metadata, procfs
from .arch import arch_for_regs_size
from .elf import notes as elfnotes
from .elf.layout import CoreLayout
from .elf.structs import NT_PRSTATUS
from .errors import (AccessDenied, CoreTooLarge, KernelThread, MissingDependency, NoSuchProcess,
                     OutputError, OutputExists, SnapcoreError, SnapshotCancelled, TargetExited,
                     UnsupportedTarget, ZombieProcess)
from .memory import (NONE, PRELOADED, READ, BackingFiles, Copier, Selection, essential_ranges,
                     plan_dump, read_memory, select_max_size, select_mini, stack_vmas)
from .output import CoreFile
from .tracer import CancelToken, Freezer, Unstable, _has_live_task, run_traced
from .units import human as _human


@dataclass
class Snapshot:
    """What snapshot() wrote."""
    path: str
    pid: int
    tids: list
    arch: str
    segments: int               # PT_LOAD count
    bytes_dumped: int           # sum of p_filesz
    file_size: int
    bytes_on_disk: int
    wall_time: float            # seconds, whole call
    pause_time: float           # seconds the target was stopped
    mode: str = "normal"        # memory selection: normal, all, mini, max-size
    live: bool = False          # memory was copied from a forked image (live mode)
    fallback: str = None        # why live mode was not used, when it was asked for
    cow_time: float = 0.0       # live: seconds the copy-on-write image lived
    missing: list = field(default_factory=list)      # live: [(start, end, why)] not captured
    unreadable: list = field(default_factory=list)   # [(addr, len, errno)]
    stats: dict = field(default_factory=dict)
    compressed: str = None      # "zstd": path is a zstandard stream of the core
    core_size: int = 0          # size of the (uncompressed) core
    truncated: bool = False     # max_size dropped memory
    dropped: list = field(default_factory=list)      # [memory.Dropped]
    metadata_path: str = None   # the sidecar, when asked for
    metadata: dict = None       # the final SNAPCORE record

    def summary(self):
        size = (f"{_human(self.file_size)} zstd of {_human(self.core_size)}" if self.compressed
                else f"{_human(self.file_size)} ({_human(self.bytes_on_disk)} on disk)")
        extra = ""
        if self.mode != "normal":
            extra += f", {self.mode}"
        if self.live:
            extra += ", live"
        if self.truncated:
            extra += f", truncated ({_human(sum(d.bytes for d in self.dropped))} dropped)"
        return (f"{self.path}: pid {self.pid}, {len(self.tids)} thread"
                f"{'s' if len(self.tids) != 1 else ''}, {self.segments} segments, "
                f"{size}{extra} "
                f"in {self.wall_time:.2f}s, target paused {self.pause_time * 1000:.1f} ms"
                + (f" (live mode not used: {self.fallback})" if self.fallback else ""))

    def to_json(self):
        """The result as a JSON-ready dict (snapcore --json prints it)."""
        return {
            "path": self.path, "pid": self.pid, "tids": list(self.tids), "arch": self.arch,
            "mode": self.mode, "live": self.live, "live_fallback": self.fallback,
            "cow_seconds": round(self.cow_time, 6),
            "missing": [{"start": a, "end": b, "why": w} for a, b, w in self.missing],
            "segments": self.segments, "bytes_dumped": self.bytes_dumped,
            "file_size": self.file_size, "core_size": self.core_size,
            "bytes_on_disk": self.bytes_on_disk, "compressed": self.compressed,
            "wall_seconds": round(self.wall_time, 6),
            "pause_seconds": round(self.pause_time, 6),
            "truncated": self.truncated,
            "dropped": [d.to_json() for d in self.dropped],
            "unreadable": [{"start": a, "len": n, "errno": e} for a, n, e in self.unreadable],
            "metadata_path": self.metadata_path,
        }




def check_target(pid):
    """Raise the error that explains why pid cannot be snapshotted, if any."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    if pid <= 0:
        raise NoSuchProcess(pid, f"invalid pid {pid}: a pid is a positive integer")
    try:
        st = procfs.read_status(pid)
    except NoSuchProcess:
        raise NoSuchProcess(pid) from None
    if st.tgid != pid:
        # a thread id: snapshot its process
        raise NoSuchProcess(pid, f"{pid} is a thread of process {st.tgid}, not a process; "
                                 f"use {st.tgid}")
    if st.kthread:
        raise KernelThread(pid, st.name)
    if st.state in ("Z", "X") and not _has_live_task(pid):
        raise ZombieProcess(pid)     # a zombie leader with live threads is still a process
    if st.tracer_pid and not procfs.is_own_thread(st.tracer_pid):
        # (a snapcore helper process holds threads of its caller before dumping it)
        from .errors import AlreadyTraced
        raise AlreadyTraced(pid, *procfs.tracer_process(st.tracer_pid))
    return st


COMPRESSORS = ("zstd",)


@dataclass
class _Options:
    stop_timeout: float = 5.0
    coredump_filter: int = None
    writer_thread: bool = True
    buffer_size: int = 4 << 20
    all_mappings: bool = False
    mini: bool = False
    max_size: int = None
    compress: str = None
    reason: str = None
    trigger: str = "api"
    argv: list = None
    live: bool = False

    @property
    def mode(self):
        parts = [m for m, on in (("all", self.all_mappings), ("mini", self.mini),
                                 ("max-size", self.max_size is not None)) if on]
        return "+".join(parts) or "normal"


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise MissingDependency("compression (--compress zstd)", "zstandard", "zstd") from None
    return zstandard


def snapshot(pid, path=None, *, force=False, live=False, stop_timeout=5.0,
             coredump_filter=None, writer_thread=True, buffer_size=4 << 20, progress=None,
             all_mappings=False, mini=False, max_size=None, compress=None, metadata_path=None,
             reason=None, trigger="api", argv=None):
    """Write an ELF core of the running process ``pid`` and let it run on.

    path            destination (default ``core.PID``, ``core.PID.zst`` when compressed)
    force           replace an existing file at path (and at metadata_path)
    live            pause the target only while it forks a copy-on-write image of
                    itself, and copy memory from that image (see snapcore/live.py);
                    falls back to a normal snapshot when the target does not allow
                    it (Snapshot.fallback says why)
    stop_timeout    seconds to wait for all threads to stop before giving up
    coredump_filter override /proc/PID/coredump_filter (same bits)
    progress        callable(bytes_done, bytes_total), called from this thread
    all_mappings    dump every readable mapping whole, like gcore -a
    mini            keep only what backtraces need: thread stacks, TCBs, ELF-header
                    pages, the dynamic linker's data, the kernel's special mappings
    max_size        keep the core (uncompressed) at most this many bytes: drop the
                    largest regions first, never the ones mini keeps; the core is
                    marked truncated
    compress        "zstd": stream a zstandard-compressed core (needs zstandard)
    metadata_path   also write the metadata record as JSON there (0600)
    reason, trigger, argv   recorded in the SNAPCORE note

    Returns a Snapshot; raises a SnapcoreError subclass on failure, after the
    target has been resumed and any partial file removed.

    ``pid`` may be the caller's own pid: a helper process then does the
    tracing (see selfsnap.py) and the calling thread appears in the core,
    stopped in this call.  ``progress`` is not called in that case.
    """
    t0 = time.monotonic()
    started = time.time()
    if compress is not None and compress not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compress!r} (known: {', '.join(COMPRESSORS)})")
    if mini and all_mappings:
        raise ValueError("mini and all_mappings exclude each other")
    if max_size is not None and max_size <= 0:
        raise ValueError("max_size must be positive")
    zstd = _zstandard() if compress == "zstd" else None
    status = check_target(pid)
    if pid == os.getpid():
        from .selfsnap import snapshot_self
        path = os.fspath(path) if path is not None else f"core.{pid}"
        return snapshot_self(path, force=force, stop_timeout=stop_timeout,
                             coredump_filter=coredump_filter, writer_thread=writer_thread,
                             buffer_size=buffer_size)
    if path is None:
        path = f"core.{pid}.zst" if compress else f"core.{pid}"
    path = os.fspath(path)
    if metadata_path is not None:
        metadata_path = os.fspath(metadata_path)
        if not force and os.path.lexists(metadata_path):
            raise OutputExists(metadata_path)
    opts = _Options(stop_timeout, coredump_filter, writer_thread, buffer_size, all_mappings,
                    mini, max_size, compress, reason, trigger, argv, live)
    facts = metadata.process_facts(pid)
    out = CoreFile(path, force=force)
    side = None
    cancel = CancelToken()
    try:
        if metadata_path is not None:
            side = CoreFile(metadata_path, force=force)
        # Live snapshots, and snapshots of our own children, are traced from a
        # guardian process: an injection must survive snapcore's death, and any
        # thread of a tracer's process may collect its tracees' ptrace stops (a
        # Popen.wait() in another thread of ours would take them and report the
        # child dead).  Under Yama (ptrace_scope 1) only we may trace our child.
        guarded = live or status.ppid == os.getpid()
        if guarded:
            spec = dict(pid=pid, fd=out.fd, path=out.path, status=status, opts=opts,
                        facts=facts, started=started, t0=t0)
            try:
                snap, file_size, record = _run_guardian(spec, progress)
            except AccessDenied:
                if live or _yama_scope() < 1:
                    raise
                guarded = False
        if not guarded:
            job = _Job(pid, out, status, opts, facts, started, cancel, zstd)

            def poll():
                if progress is not None and job.total:
                    progress(job.done(), job.total)

            snap = run_traced(job.run, cancel, poll)
            if progress is not None and job.total:
                progress(job.done(), job.total)
            file_size, record = job.finish(snap, t0)
        out.finish(file_size)
        if side is not None:
            side.write_at(json.dumps(record, indent=2).encode() + b"\n", 0)
            side.finish()
    except BaseException:
        out.abort()
        if side is not None:
            side.abort()
        raise
    snap.metadata = record
    snap.metadata_path = metadata_path
    snap.wall_time = time.monotonic() - t0
    try:
        st = os.stat(out.path)
        snap.bytes_on_disk = st.st_blocks * 512
        if compress:
            snap.file_size = st.st_size
    except OSError:
        snap.bytes_on_disk = 0
    return snap


def _yama_scope():
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _run_guardian(spec, progress):
    """Run a live snapshot's job in the guardian process (see snapcore/_guardian.py).

    Returns (Snapshot, file_size, metadata record) or raises what the job raised.  On
    KeyboardInterrupt (or any BaseException) the guardian is told to cancel,
    and this waits until it has put the target back before re-raising.
    """
    import queue
    import subprocess
    import sys
    import threading

    from . import _guardian
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen([sys.executable, "-m", "snapcore._guardian"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(spec["fd"],),
                            start_new_session=True, env=env)
    interrupted = None
    result = None
    inbox = queue.Queue()

    def reader():                       # frames are read whole, whatever the caller gets
        while True:
            try:
                msg = _guardian.recv(proc.stdout)
            except (EOFError, OSError, ValueError):
                inbox.put(None)
                return
            inbox.put(msg)
            if msg[0] != "progress":
                return

    threading.Thread(target=reader, daemon=True, name="snapcore-guardian-reader").start()
    try:
        _guardian.send(proc.stdin, spec)
        while True:
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            except BaseException as exc:          # Ctrl-C, SIGTERM: cancel, keep waiting
                if interrupted is None:
                    interrupted = exc
                    try:
                        proc.stdin.write(b"cancel\n")
                        proc.stdin.flush()
                    except OSError:
                        pass
                continue
            if msg is None:
                break
            if msg[0] == "progress":
                if progress is not None and interrupted is None:
                    progress(msg[1], msg[2])
                continue
            result = msg
            break
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            err = proc.stderr.read().decode(errors="replace").strip()
        except OSError:
            err = ""
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if interrupted is not None:
        raise interrupted
    if result is None:
        raise UnsupportedTarget(spec["pid"], "the live snapshot's guardian process failed"
                                f"{': ' + err.splitlines()[-1] if err else ''}")
    if result[0] == "error":
        raise result[1]
    return result[1], result[2], result[3]


def write_frozen(pid, path, freezer, frozen, status, *, force=False, coredump_filter=None,
                 cancel=None, writer_thread=True, buffer_size=4 << 20, trigger="tree"):
    """Write the core of a process that ``freezer`` holds stopped; leave it stopped.

    For callers that freeze several processes before writing any (trees, the
    self-snapshot helper).  Runs on the freezer's tracer thread.  ``status``
    is the process's /proc status read before the freeze (its state letter
    goes into NT_PRPSINFO).  The caller resumes the process and fills in
    ``pause_time``.
    """
    t0 = time.monotonic()
    out = CoreFile(path, force=force)
    opts = _Options(freezer.stop_timeout, coredump_filter, writer_thread, buffer_size,
                    trigger=trigger)
    job = _Job(pid, out, status, opts, metadata.process_facts(pid), time.time(),
               cancel if cancel is not None else CancelToken())
    try:
        job.states = metadata.thread_states(pid)
        try:
            threads, arch = job._collect_threads(frozen)
        except Unstable as exc:
            raise UnsupportedTarget(pid, f"process {pid} changed while it was frozen "
                                         f"({exc})") from None
        snap = job._write(threads, arch)
        file_size, record = job.finish(snap, t0)
        out.finish(file_size)
    except BaseException:
        out.abort()
        raise
    snap.metadata = record
    snap.wall_time = time.monotonic() - t0
    try:
        snap.bytes_on_disk = os.stat(out.path).st_blocks * 512
    except OSError:
        snap.bytes_on_disk = 0
    return snap


class _Job:
    """The part of a snapshot that runs on the tracer thread."""

    def __init__(self, pid, out, status, opts, facts, started, cancel, zstd=None):
        self.pid = pid
        self.src = pid              # where memory is read from: the target or its image
        self.fallback = None
        self.out = out
        self.status = status
        self.opts = opts
        self.facts = facts
        self.started = started
        self.cancel = cancel
        self.zstd = zstd
        self.total = 0
        self.copier = None
        self.layout = None
        self.record = None
        self.note_off = None        # file offset and size of the SNAPCORE note's desc
        self.note_size = 0
        self.states = {}

    def done(self):
        c = self.copier
        return c.bytes_done if c is not None else 0

    ATTEMPTS = 3

    def run(self):
        """Freeze, check the freeze holds, write; retry if the process changed under us.

        Normal mode writes the core while the target is frozen.  Live mode has
        the frozen target fork an image of itself, resumes the target at once,
        and writes the core from the image.
        """
        live = self.opts.live
        self.states = metadata.thread_states(self.pid)
        nofork = _nofork_vmas(self.pid) if live else None
        for attempt in range(1, self.ATTEMPTS + 1):
            freezer = Freezer(self.pid, self.opts.stop_timeout, self.cancel)
            image = None
            try:
                try:
                    frozen = freezer.freeze()
                    threads, arch = self._collect_threads(frozen)
                except Unstable as exc:
                    if attempt == self.ATTEMPTS:
                        raise UnsupportedTarget(
                            self.pid, f"process {self.pid} kept changing while it was being "
                            f"frozen ({exc}); tried {self.ATTEMPTS} times") from None
                    continue
                if live:
                    image = self._fork_image(freezer, frozen, threads, arch, nofork)
                if image is None:
                    snap = self._write(threads, arch)
            except NoSuchProcess as exc:
                if isinstance(exc, TargetExited):
                    raise
                raise TargetExited(self.pid) from exc     # vanished while we read /proc
            except BaseException:
                if image is not None:
                    image.dispose()
                raise
            finally:
                freezer.resume()
            pause = freezer.pause_seconds
            if image is not None:
                try:
                    image.hand_off()
                    snap = self._write(threads, arch, image=image)
                except NoSuchProcess as exc:
                    raise TargetExited(self.pid) from exc
                finally:
                    image.dispose()
                snap.live = True
                snap.cow_time = image.lifetime
                snap.missing = image.missing
            snap.pause_time = pause
            snap.fallback = self.fallback
            return snap

    def _fork_image(self, freezer, frozen, threads, arch, nofork):
        """While frozen: copy what fork won't, inject the clone.  None means fall back."""
        from . import live
        try:
            live.check_live_possible(self.pid, procfs.read_status(self.pid), arch, frozen)
            tid = live.choose_thread(self.pid, arch, threads, frozen)
        except live.LiveUnavailable as exc:
            self.fallback = str(exc).split("; ")[0]
            return None
        image = _Image(self.pid)
        try:
            image.preload(nofork, arch, self.opts.coredump_filter, self.opts.buffer_size)
            saved = next(t for t in threads if t.tid == tid).regset(NT_PRSTATUS)
            try:
                child, held = live.inject_clone(arch, tid, saved)
            except live.LiveUnavailable as exc:
                freezer.threads[tid].held = getattr(exc, "held", [])
                self.fallback = str(exc).split("; ")[0]
                image.dispose()
                return None
            freezer.threads[tid].held = held
            image.first = child
            image.inject_tid = tid
            image.arch = arch
            live.adopt_child(child)
            image.born = time.monotonic()
        except BaseException:
            image.dispose()
            raise
        return image

    def _check_cancel(self):
        if self.cancel.is_set():
            raise SnapshotCancelled()

    def finish(self, snap, t0):
        """After the tracer thread: the final metadata record, written into the
        SNAPCORE note (uncompressed cores).  Returns (file size to set, record)."""
        record = self.final_record(snap, time.monotonic() - t0)
        if not self.opts.compress:
            self.rewrite_note(record)
        return (None if self.opts.compress else self.layout.file_size), record

    def _write(self, threads, arch, image=None):
        """Plan, select, lay out and write the core, reading memory from the target
        (frozen) or, in live mode, from its forked image (the target runs on)."""
        pid = self.pid
        opts = self.opts
        self.src = src = image.child if image is not None else pid
        proc = self._collect_process(arch, src)
        filt = opts.coredump_filter
        if filt is None:
            filt = procfs.read_coredump_filter(pid)
        file_ranges = procfs.map_files_ranges(src)
        self._check_cancel()
        with BackingFiles(src) as files:
            if image is None:
                plans = plan_dump(pid, _read_vmas(pid), filt, file_ranges, files,
                                  arch.page_size, all_mappings=opts.all_mappings)
            else:
                plans = image.plan(filt, file_ranges, files, arch.page_size,
                                   opts.all_mappings)
            proc.vma_count = len(plans)
            proc.file_entries = _file_entries(src, plans, arch.page_size)
            kernel_notes = elfnotes.build_notes(arch, proc, threads, _native.cpuid,
                                                _file_note_limit())
            thread_meta = []
            for t in threads:                     # names and states read before the freeze
                state, name = self.states.get(t.tid) or (None, metadata.thread_name(pid, t.tid))
                thread_meta.append({"tid": t.tid, "name": name, "state": state})

            def notes_for(sel):
                self.record = metadata.new_record(
                    facts=self.facts, uid=proc.uid, gid=proc.gid, mode=opts.mode,
                    reason=opts.reason, trigger=opts.trigger, argv=opts.argv, filt=filt,
                    filter_source="option" if opts.coredump_filter is not None else "target",
                    threads=thread_meta, selection=sel, started=self.started)
                desc = metadata.note_desc(self.record)
                self.note_size = len(desc)
                # the kernel's notes do not change with the selection: only the
                # SNAPCORE record (last) does
                return kernel_notes + elfnotes.note(metadata.SNAPCORE_OWNER,
                                                    metadata.NT_SNAPCORE_METADATA, desc)

            plans, sel, blob, layout = self._select(plans, arch, proc, threads, notes_for,
                                                    len(kernel_notes))
            self.selection = sel
            self.layout = layout
            self.note_off = (layout.notes_off + len(kernel_notes)
                             + elfnotes.desc_offset(metadata.SNAPCORE_OWNER))
            self.total = sum(p.filesz for p in plans if p.fill == READ)
            if self.zstd is not None:
                result = self._copy_compressed(plans, layout)
            else:
                result = self._copy_to_file(plans, layout)
        return Snapshot(
            path=self.out.path, pid=pid, tids=[t.tid for t in threads], arch=arch.name,
            segments=len(plans), bytes_dumped=sum(p.filesz for p in plans),
            file_size=layout.file_size, bytes_on_disk=0, wall_time=0.0, pause_time=0.0,
            mode=opts.mode, unreadable=result.unreadable,
            stats={k: v for k, v in result.__dict__.items() if k != "unreadable"},
            compressed=self.opts.compress, core_size=layout.file_size,
            truncated=sel.truncated, dropped=list(sel.dropped))

    def _select(self, plans, arch, proc, threads, notes_for, kernel_notes_len):
        """Apply --mini/--max-size.  Returns (plans, Selection, notes blob, layout)."""
        opts = self.opts
        if not opts.mini and opts.max_size is None:
            sel = Selection(mode=opts.mode)
            blob = notes_for(sel)
            return plans, sel, blob, CoreLayout(arch, blob, [p.load() for p in plans])
        essential = essential_ranges(self.src, arch, proc.auxv, threads, plans,
                                     arch.page_size)
        if opts.mini:
            plans, sel = select_mini(plans, essential)
            sel.mode = opts.mode
            sel.max_size = opts.max_size
            blob = notes_for(sel)
            layout = CoreLayout(arch, blob, [p.load() for p in plans])
            if opts.max_size is not None and layout.file_size > opts.max_size:
                raise CoreTooLarge(opts.max_size, layout.file_size)
            return plans, sel, blob, layout
        stacks = stack_vmas(arch, threads, plans)
        # the headers grow with the pieces and the dropped list: fit, measure, refit
        overhead = CoreLayout(arch, b"\0" * (kernel_notes_len + 4096),
                              [p.load() for p in plans]).data_off
        for _ in range(8):
            budget = opts.max_size - overhead
            fitted, sel, minimum = select_max_size(plans, essential, max(0, budget), stacks)
            sel.mode = opts.mode
            sel.max_size = opts.max_size
            blob = notes_for(sel)
            layout = CoreLayout(arch, blob, [p.load() for p in fitted])
            if layout.file_size <= opts.max_size:
                return fitted, sel, blob, layout
            if minimum + (layout.file_size - sum(p.filesz for p in fitted)) > opts.max_size:
                raise CoreTooLarge(opts.max_size,
                                   minimum + layout.file_size - sum(p.filesz for p in fitted))
            overhead += layout.file_size - opts.max_size
        raise CoreTooLarge(opts.max_size, layout.file_size)

    def _copy_to_file(self, plans, layout):
        out = self.out
        out.write_at(layout.header_block(), 0)
        self.copier = copier = Copier(self.src, out.fd, self.opts.buffer_size,
                                      self.opts.writer_thread,
                                      use_readv=self.src == self.pid)
        self.cancel.on_set(copier.cancel)
        try:
            self._check_cancel()
            result = copier.run(plans, layout.offsets)
        except SnapcoreError:
            raise                                 # e.g. TargetExited (a ProcessLookupError)
        except OSError as exc:
            raise out.write_error(exc) from exc
        finally:
            copier.close()
        trailer = layout.trailer_block()
        if trailer is not None:
            out.write_at(trailer[1], trailer[0])
        return result

    def _copy_compressed(self, plans, layout):
        """Stream the core, every byte in order, through a pipe to a zstd thread."""
        out = self.out
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        box = {}

        def compress():
            try:
                cctx = self.zstd.ZstdCompressor(level=3, write_checksum=True)
                with os.fdopen(r, "rb", buffering=0) as src, \
                        os.fdopen(out.fd, "wb", closefd=False) as dst:
                    cctx.copy_stream(src, dst, size=layout.file_size,
                                     read_size=1 << 20, write_size=1 << 20)
            except BaseException as exc:   # handed to the tracer thread
                box["error"] = exc

        t = threading.Thread(target=compress, name="snapcore-zstd", daemon=True)
        t.start()
        copier = None
        try:
            header = layout.header_block()
            _write_all(w, header)
            self.copier = copier = Copier(self.src, w, self.opts.buffer_size,
                                          self.opts.writer_thread, sequential=True,
                                          stream_pos=len(header),
                                          use_readv=self.src == self.pid)
            self.cancel.on_set(copier.cancel)
            self._check_cancel()
            result = copier.run(plans, layout.offsets)
            _pad_zeros(w, layout.data_end - copier.stream_pos)
            trailer = layout.trailer_block()
            if trailer is not None:
                _write_all(w, trailer[1])
        except SnapcoreError:
            raise
        except OSError as exc:
            os.close(w)                   # the compressor sees EOF and reports its own error
            w = -1
            t.join()
            self._raise_compressor_error(box)
            raise out.write_error(exc) from exc
        finally:
            if copier is not None:
                copier.close()
            if w >= 0:
                os.close(w)
            t.join()
        self._raise_compressor_error(box)
        return result

    def _raise_compressor_error(self, box):
        err = box.get("error")
        if isinstance(err, OSError):
            raise self.out.write_error(err) from err
        if err is not None:
            raise OutputError(self.out.path, f"compressing {self.out.path} failed: {err}") \
                from err

    def final_record(self, snap, wall):
        return metadata.finalize(self.record, pause=snap.pause_time, wall=wall,
                                 unreadable=snap.unreadable,
                                 unreadable_omitted=snap.stats.get("unreadable_truncated", 0))

    def rewrite_note(self, record):
        """Put the final record into the reserved SNAPCORE note (uncompressed cores)."""
        desc = metadata.fit_final(
            self.record, self.note_size, pause=record["pause_seconds"],
            wall=record["wall_seconds"],
            unreadable=[(u["start"], u["len"], u["errno"]) for u in record["unreadable"]],
            unreadable_omitted=record["unreadable_omitted"])
        if desc is not None:
            self.out.write_at(desc, self.note_off)

    def _collect_threads(self, frozen):
        """ThreadNotes for every frozen thread, current thread first.

        Raises Unstable unless every live thread of the process is in a
        ptrace stop for us: an exec (which replaces the threads and their
        tids) or a thread we never caught would make an inconsistent core.
        """
        pid = self.pid
        arch = None
        out = []
        frozen_tids = {ft.tid for ft in frozen}
        try:
            listed = procfs.list_tids(pid)
        except NoSuchProcess:
            raise TargetExited(pid) from None
        for tid in listed:
            if tid in frozen_tids:
                continue
            try:
                state = procfs.read_status(pid, tid).state
            except NoSuchProcess:
                continue
            if state not in ("Z", "X"):
                raise Unstable(f"thread {tid} appeared")
        for ft in frozen:
            try:
                state, sig_pnd, sig_blk = procfs.parse_thread_status(
                    procfs.read_text(pid, "status", ft.tid))
                tstat = procfs.read_stat(pid, ft.tid)
            except NoSuchProcess:
                continue                          # killed while stopped (SIGKILL)
            if state in ("Z", "X"):
                continue
            if state != "t":
                raise Unstable(f"thread {ft.tid} is not stopped ({state})")
            try:
                regs = _native.getregset(ft.tid, NT_PRSTATUS)
            except _native.SyscallError as exc:
                if exc.errno == errno.ESRCH:
                    raise Unstable(f"thread {ft.tid} left its stop") from None
                raise
            a = arch_for_regs_size(len(regs))
            if a is None:
                raise UnsupportedTarget(pid, f"unknown register set size {len(regs)}")
            if arch is None:
                arch = a
            regsets = [(NT_PRSTATUS, "CORE", regs)]
            for ntype, owner in arch.regsets[1:]:
                try:
                    data = _native.getregset(ft.tid, ntype)
                except _native.SyscallError:
                    continue                      # not active for this thread (ENODEV, ENXIO)
                if arch.regset_active(ntype, data):
                    regsets.append((ntype, owner, data))
            out.append(elfnotes.ThreadNotes(ft.tid, regsets, sigpend=sig_pnd,
                                            sighold=sig_blk, utime=tstat.utime,
                                            stime=tstat.stime))
        if not out:
            raise TargetExited(pid)
        # the current thread first: the main thread when it is alive
        out.sort(key=lambda t: (t.tid != pid, t.tid))
        if out[0].tid == pid:
            # fill_prstatus(): the group leader carries the whole group's times
            st = procfs.read_stat(pid)
            out[0].utime, out[0].stime = st.utime, st.stime
        return out, arch

    def _collect_process(self, arch, mem_pid):
        """Process-wide facts; argv is read from mem_pid (the target or its image)."""
        pid = self.pid
        st = procfs.read_stat(pid)
        status = procfs.read_status(pid)
        auxv = procfs.auxv_through_null(procfs.read_bytes(pid, "auxv"), arch.word_size)
        psargs = b""
        if st.arg_end > st.arg_start:
            psargs = read_memory(mem_pid, st.arg_start, min(st.arg_end - st.arg_start, 80))
        if not psargs:
            try:
                psargs = procfs.read_bytes(pid, "cmdline")
            except SnapcoreError:
                psargs = b""
        return elfnotes.ProcessNotes(
            pid=pid, ppid=st.ppid, pgrp=st.pgrp, sid=st.session, cutime=st.cutime,
            cstime=st.cstime, state=self.status.state, nice=st.nice, flag=st.flags,
            uid=status.uid[0], gid=status.gid[0],
            comm=st.comm.encode("utf-8", "surrogateescape"), psargs=psargs, auxv=auxv)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _pad_zeros(fd, n):
    if n > 0:
        r = _native.require().sc_write_zeros(fd, n)
        if r < 0:
            raise OSError(-r, os.strerror(-r))


def _nofork_vmas(pid):
    """Before the freeze: the VMAs a fork leaves out (MADV_DONTFORK, VmFlags dc) or
    wipes (MADV_WIPEONFORK, wf).  Live mode copies them from the frozen target."""
    try:
        return {(v.start, v.end): v for v in procfs.read_smaps(pid)
                if "dc" in v.vmflags or "wf" in v.vmflags}
    except NoSuchProcess:
        raise TargetExited(pid) from None


class _Image:
    """A live snapshot's forked copy-on-write image of the target, and what
    had to be taken from the target itself while it was frozen."""

    def __init__(self, pid):
        self.pid = pid
        self.first = None           # the target's own child: reaped as soon as possible
        self.child = None           # the image memory is read from (the first's child)
        self.inject_tid = None
        self.arch = None
        self.born = None
        self.lifetime = 0.0
        self.scratch = -1
        self.preloaded = {}         # (start, end) -> (VmaPlan, scratch offset)
        self.frozen = []            # the target's VMAs (maps) while frozen
        self.missing = []

    def preload(self, nofork, arch, filt, bufsize):
        """While frozen: read /proc/PID/maps (cheap) and copy the nofork VMAs."""
        pid = self.pid
        self.frozen = procfs.parse_maps(procfs.read_text(pid, "maps"))
        todo = [nofork[(v.start, v.end)] for v in self.frozen if (v.start, v.end) in nofork]
        if not todo:
            return
        filt = filt if filt is not None else procfs.read_coredump_filter(pid)
        self.scratch = os.open("/tmp", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        with BackingFiles(pid) as files:
            plans = plan_dump(pid, todo, filt, procfs.map_files_ranges(pid), files,
                              arch.page_size)
            offsets, off = [], 0
            for p in plans:
                offsets.append(off)
                off += p.filesz
            copier = Copier(pid, self.scratch, bufsize, writer_thread=False)
            try:
                copier.run(plans, offsets)
            finally:
                copier.close()
        for p, o in zip(plans, offsets):
            if p.fill == READ:
                # its bytes are in the scratch file now: the copy reads them from there
                p.fill, p.backing_fd, p.backing_base = PRELOADED, self.scratch, o
            self.preloaded[(p.vma.start, p.vma.end)] = (p, o)

    def plan(self, filt, file_ranges, files, page_size, all_mappings=False):
        """Plans for the image's VMAs, with the nofork VMAs put back in place."""
        vmas = _read_vmas(self.child)
        in_child = {(v.start, v.end) for v in vmas}
        plans = []
        for v in vmas:
            hit = self.preloaded.get((v.start, v.end))
            if hit is not None:
                plans.append(hit[0])
            else:
                if "wf" in v.vmflags:
                    self.missing.append((v.start, v.end, "MADV_WIPEONFORK, set during the "
                                                          "snapshot"))
                plans.extend(plan_dump(self.child, [v], filt, file_ranges, files,
                                       page_size, all_mappings=all_mappings))
        for v in self.frozen:
            key = (v.start, v.end)
            if key in in_child:
                continue
            hit = self.preloaded.get(key)
            if hit is not None:
                plans.append(hit[0])
            else:
                # left out by fork and not known before the freeze: a PT_LOAD
                # with no data, reported as missing
                self.missing.append((v.start, v.end, "MADV_DONTFORK, set during the "
                                                      "snapshot"))
                p = plan_dump(self.pid, [v], 0, set(), files, page_size)[0]
                p.filesz, p.fill, p.why = 0, NONE, "left out by fork"
                plans.append(p)
        plans.sort(key=lambda p: p.vma.start)        # address order; [vsyscall] is last
        return plans

    def hand_off(self):
        """After the target resumed: move the image out of the target's children.

        The first image forks the one we read from, then is killed and reaped
        by the target (see live.fork_away).
        """
        from . import live
        self.child = live.fork_away(self.arch, self.first)
        live.adopt_child(self.child)
        self._drop_first()

    def _drop_first(self):
        from . import live
        if self.first is not None:
            live.kill_child(self.first)
            live.reap_in_target(self.pid, self.arch, self.first, self.inject_tid)
            self.first = None

    def dispose(self):
        """Kill the images (the target reaps its own), drop the scratch file."""
        from . import live
        self._drop_first()
        if self.child is not None:
            live.kill_child(self.child)       # orphaned: init reaps it
            self.child = None
        if self.born is not None:
            self.lifetime = time.monotonic() - self.born
        if self.scratch >= 0:
            os.close(self.scratch)
            self.scratch = -1


def _read_vmas(pid):
    try:
        return procfs.read_smaps(pid)
    except NoSuchProcess:
        raise TargetExited(pid) from None


def _file_entries(pid, plans, page_size):
    """NT_FILE entries: every VMA with a file, its exact path from map_files."""
    out = []
    for p in plans:
        if not p.has_file or not p.first_piece:
            continue
        v = p.vma
        name = procfs.map_files_link(pid, v.start, v.end)
        if name is None:
            name = procfs.unescape_maps_name(v.name)
        if not name:
            continue
        out.append((v.start, v.end, v.offset // page_size,
                    name.encode("utf-8", "surrogateescape")))
    return out


def _file_note_limit():
    try:
        with open("/proc/sys/kernel/core_file_note_size_limit") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4 << 20
