"""One process's core, step by step, on the thread that makes the ptrace calls.

    Job.run()                      Job.write_frozen(frozen)    (trees: already frozen)
      sample: the kernel's view          (the tree sampled it before its freeze)
        of each thread, fds (kstate)
      freeze (freeze.Freezer) ----------.
      collect: threads, registers        collect: threads, registers
      [live: fork the image, resume]     |
      plan: VMAs -> plan.plan_dump       plan
      waits: system calls, futex words,  waits
        Python stacks (waits.py)
      select: --mini / --max-size        select
      notes + layout (elf/)              notes + layout
      copy: copy.CoreWriter              copy
      resume (always, every path)        (the caller resumes the tree)
    Job.finish(snap, wall)  after resume: the final metadata record, written
                            into the SNAPCORE note (uncompressed cores)

The caller owns the output file (publish.CoreFile) and publishes it after
finish(); a Job only writes into it (publish.CoreSink).  Each step's time goes
into Snapshot.stats["phases"].
"""

import contextlib
import errno
import random
import time

from .. import _native, metadata, procfs, procmaps
from ..elf import notes as elfnotes
from ..errors import (
    LiveUnavailable,
    NoSuchProcess,
    SnapshotCancelled,
    TargetExited,
    UnsupportedTarget,
)
from . import collect, kstate, live, waits
from .copy import CoreWriter
from .freeze import Freezer, Unstable, dying, has_live_task
from .plan import PAGE_SIZE, READ, BackingFiles, EarlyPlan, read_memory
from .result import Snapshot
from .select import select


class Job:
    ATTEMPTS = 5
    RETRY_PAUSE = 0.005  # up to this much more before each new attempt, at random

    def __init__(self, pid, out, status, options, facts, started, cancel):
        self.pid = pid
        self.src = pid  # where memory is read from: the target or its image
        self.out = out
        self.status = status  # /proc status read before the freeze
        self.options = options
        facts = dict(facts)
        # a snapshot of snapcore's own process: its threads taking it (tracer.py)
        self.snapcore_tids = set(facts.pop("snapcore_tids", ()))
        self.facts = facts  # metadata.process_facts, read before the freeze
        self.started = started
        self.cancel = cancel
        self.writer = None
        self.total = 0
        self.layout = None
        self.header_pending = False  # headers and notes left for after the resume
        self.record = None
        self.note_off = None  # file offset and size of the SNAPCORE note's desc
        self.note_size = 0
        self.states = {}
        self.samples = {}  # kstate: {tid: kernel state}, sampled before the freeze
        self.process_sample = None  # kstate.sample_process(): fds, children, peers
        self.fallback = None
        self.phases = {}
        self.stops_probed = 0

    def done(self):
        return self.writer.done() if self.writer is not None else 0

    @contextlib.contextmanager
    def phase(self, name):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - t0

    def _check_cancel(self):
        if self.cancel.is_set():
            raise SnapshotCancelled()

    # -- the whole sequence ------------------------------------------------
    def run(self, held=None):
        """Freeze, check the freeze holds, write, resume; retry if the process
        changed under us.  ``held``: a Freezer already holding some threads.

        Normal mode writes the core while the target is frozen.  Live mode has
        the frozen target fork an image of itself, resumes the target at once,
        and writes the core from the image.
        """
        want_live = self.options.live
        self.sample()
        nofork = live.nofork_vmas(self.pid) if want_live else None
        changed = 0  # freezes that did not hold
        paused = 0.0  # every freeze counts, a retried one too
        while True:
            freezer = held or Freezer(self.pid, self.options.stop_timeout, self.cancel)
            held = None
            image = None
            early = None
            try:
                try:
                    with self.phase("freeze"):
                        frozen = freezer.freeze()
                    if not want_live:  # the live image is planned from the image
                        early = self._plan_early()
                    with self.phase("collect"):
                        threads, arch = collect.collect_threads(
                            self.pid, frozen, before_read=early.start if early else None
                        )
                except Unstable as exc:
                    changed += 1
                    if changed == self.ATTEMPTS:
                        raise UnsupportedTarget(
                            self.pid,
                            f"process {self.pid} kept changing while it was being "
                            f"frozen ({exc}); tried {self.ATTEMPTS} times",
                        ) from None
                    # e.g. an exec replaced the threads: one that execs every few
                    # milliseconds would meet each attempt made in step with it
                    time.sleep(random.uniform(0, self.RETRY_PAUSE * changed))
                    continue
                facts = None
                if want_live:
                    # what the core says of the process is read now, while it is frozen:
                    # the image holds the memory, not the target's ids, times or auxv,
                    # and the target may change them, or exit, once resumed
                    with self.phase("collect"):
                        facts = self._process_facts(arch)
                    with self.phase("fork"):
                        image, self.fallback = live.fork_image(
                            self.pid, freezer, frozen, threads, arch, nofork, self.options
                        )
                if image is None:
                    snap = self._write(threads, arch, facts=facts, early=early, header_later=True)
                    if not has_live_task(self.pid):
                        # killed while frozen: what was read of it may be nothing
                        # (its smaps are empty once its memory is gone)
                        raise TargetExited(self.pid)
            except NoSuchProcess as exc:
                if isinstance(exc, TargetExited):
                    raise
                raise TargetExited(self.pid) from exc  # vanished while we read /proc
            except _native.SyscallError as exc:
                if image is not None:
                    image.dispose()
                if exc.errno == errno.ESRCH and dying(self.pid):
                    # a ptrace call on a thread killed while frozen (e.g. in the
                    # injected clone of live mode): the process is exiting
                    raise TargetExited(self.pid) from exc
                raise
            except BaseException:
                if image is not None:
                    image.dispose()
                raise
            finally:
                with self.phase("resume"):
                    freezer.resume()
                if early is not None:
                    early.close()
            paused += freezer.pause_seconds
            self.stops_probed += freezer.stops_probed
            self.write_header()
            if image is not None:
                try:
                    with self.phase("handoff"):
                        image.hand_off()
                except LiveUnavailable as exc:
                    # the target ran on meanwhile: take a normal snapshot now instead
                    image.dispose()
                    self.fallback = f"{exc}, after the target was resumed"
                    want_live = False
                    continue
                except BaseException:
                    image.dispose()
                    raise
                try:
                    snap = self._write(threads, arch, image=image, facts=facts)
                except NoSuchProcess as exc:
                    raise TargetExited(self.pid) from exc
                finally:
                    with self.phase("release"):
                        image.dispose()
                snap.live = True
                snap.cow_time = image.lifetime
                snap.missing = image.missing
            snap.pause_time = paused
            snap.fallback = self.fallback
            # ptrace stops another waiter of our process took first: each cost the freeze
            # a wait slice (freeze.py, _probe_stolen); 0 unless a thread of the caller
            # waits on a child it has us trace
            snap.stats["stops_probed"] = self.stops_probed
            return snap

    def sample(self, samples=None):
        """The kernel's view of every thread and the process's fds (kstate.py):
        read before the freeze, or given (a tree samples before it freezes)."""
        with self.phase("sample"):
            if samples is None:
                samples = (kstate.sample_threads(self.pid), kstate.sample_process(self.pid))
            self.samples, self.process_sample = samples
        for tid, s in self.samples.items():
            if s.get("state"):
                self.states[tid] = (s["state"], s.get("name"))

    def write_frozen(self, frozen, samples=None):
        """The core of a process someone else froze (a tree); it stays frozen.
        ``samples``: what kstate read of it before it was frozen (None: read now)."""
        self.sample(samples)
        try:
            with self.phase("collect"):
                threads, arch = collect.collect_threads(self.pid, frozen)
        except Unstable as exc:
            raise UnsupportedTarget(
                self.pid, f"process {self.pid} changed while it was frozen ({exc})"
            ) from None
        except NoSuchProcess as exc:
            if isinstance(exc, TargetExited):
                raise
            raise TargetExited(self.pid) from exc
        return self._write(threads, arch)

    # -- plan, select, lay out, copy ---------------------------------------
    def _filter(self):
        """The coredump_filter the core follows: the request's, else the target's."""
        filt = self.options.coredump_filter
        return procfs.read_coredump_filter(self.pid) if filt is None else filt

    def _process_facts(self, arch, filt=None):
        """(ProcessNotes, coredump_filter): read from /proc of the frozen target."""
        proc = collect.collect_process(self.pid, self.status.state, arch, self.pid)
        return proc, self._filter() if filt is None else filt

    def _plan_early(self, page_size=PAGE_SIZE):
        """An EarlyPlan of the frozen target, to be made beside collect (plan.py),
        or on this thread if nothing starts it."""
        return EarlyPlan(self.pid, self._filter(), page_size, self.options.all_mappings)

    def _write(self, threads, arch, image=None, facts=None, early=None, header_later=False):
        """Plan, select, lay out and write the core, reading memory from the target
        (frozen) or, in live mode, from its forked image (the target runs on).
        ``facts``: _process_facts() read while the target was frozen (live mode);
        ``early``: the target's EarlyPlan, made while collect ran (the caller closes it;
        without one, a normal snapshot makes its own here);
        ``header_later``: the caller writes the headers and notes (write_header()) after
        it has resumed the target, if header_pending says so."""
        pid = self.pid
        opts = self.options
        self.src = src = image.child if image is not None else pid
        with contextlib.ExitStack() as stack:
            if image is None and (early is None or early.page_size != arch.page_size):
                # not made beside collect (a tree's process, or a page size other than
                # the machine's, which no architecture snapcore knows has): made here
                early = stack.enter_context(contextlib.closing(self._plan_early(arch.page_size)))
            if facts is None:
                with self.phase("collect"):
                    facts = self._process_facts(arch, early.filt if early is not None else None)
            proc, filt = facts
            self._check_cancel()
            plan_started = time.monotonic()
            if early is not None:
                file_ranges, plans = early.result()
                files = early.files
            else:  # live: the image's plan
                file_ranges = procmaps.map_files_ranges(src)
                files = stack.enter_context(BackingFiles(src))
                plans = image.plan(filt, file_ranges, files, arch.page_size, opts.all_mappings)
            proc.vma_count = len(plans)
            proc.file_entries = collect.file_entries(src, plans, arch.page_size)
            mapped = collect.mapped_ranges(plans, proc.file_entries)
            kernel_notes = elfnotes.KernelNotes(
                arch, proc, threads, _native.cpuid, collect.file_note_limit()
            )
            with self.phase("waits"):
                found = waits.frozen_facts(src, arch, threads, self.samples, plans)
            threads_meta = waits.annotate(
                collect.thread_meta(pid, threads, self.states, self.snapcore_tids), found
            )
            described = dict(self.facts, kernel=self.process_sample, python=found.process)

            def notes_for(sel):
                self.record = metadata.new_record(
                    facts=described,
                    uid=proc.uid,
                    gid=proc.gid,
                    options=opts,
                    filt=filt,
                    threads=threads_meta,
                    selection=sel,
                    started=self.started,
                )
                desc = metadata.note_desc(self.record)
                self.note_size = len(desc)
                # the kernel's notes do not change with the selection: only the
                # SNAPCORE record (last) does
                return kernel_notes, elfnotes.note(
                    metadata.SNAPCORE_OWNER, metadata.NT_SNAPCORE_METADATA, desc
                )

            plans, sel, _, layout = select(
                opts,
                plans,
                arch,
                lambda a, n: read_memory(src, a, n),
                proc.auxv,
                threads,
                notes_for,
                len(kernel_notes),
                extra=found.ranges,
            )
            self.layout = layout
            self.note_off = (
                layout.notes_off + len(kernel_notes) + elfnotes.desc_offset(metadata.SNAPCORE_OWNER)
            )
            self.total = sum(p.filesz for p in plans if p.fill == READ)
            self.phases["plan"] = self.phases.get("plan", 0.0) + time.monotonic() - plan_started
            self.writer = CoreWriter(self.out, src, opts, use_readv=image is None)
            self.cancel.on_set(self.writer.cancel)
            self._check_cancel()
            # a frozen target's file: headers and notes once it runs again (run())
            self.header_pending = header_later and not opts.compress
            with self.phase("copy"):
                result = self.writer.write(plans, layout, header_later=self.header_pending)
        stats = {k: v for k, v in result.__dict__.items() if k != "unreadable"}
        stats["phases"] = self.phases
        return Snapshot(
            path=self.out.path,
            pid=pid,
            tids=[t.tid for t in threads],
            arch=arch.name,
            segments=len(plans),
            bytes_dumped=sum(p.filesz for p in plans),
            file_size=layout.file_size,
            bytes_on_disk=0,
            wall_time=0.0,
            pause_time=0.0,
            mode=opts.mode,
            unreadable=result.unreadable,
            stats=stats,
            compressed=opts.compress,
            core_size=layout.file_size,
            truncated=sel.truncated,
            dropped=list(sel.dropped),
            trigger=opts.trigger,
            files=mapped,
        )

    # -- after resume ------------------------------------------------------
    def write_header(self):
        """The headers and notes _write() left for after the resume, if it did: made
        from what was read while frozen (notes.KernelNotes)."""
        if self.header_pending:
            with self.phase("notes"):
                self.writer.write_header(self.layout)
            self.header_pending = False

    def finish(self, snap, wall):
        """The final metadata record (pause and wall known now), written into the
        SNAPCORE note of an uncompressed core.  Returns (file size to set, record)."""
        with self.phase("publish"):
            final = dict(
                pause=snap.pause_time,
                wall=wall,
                unreadable=snap.unreadable,
                unreadable_omitted=snap.stats.get("unreadable_truncated", 0),
                live=snap.live,
                live_fallback=snap.fallback,
            )
            record = metadata.finalize(self.record, **final)
            if not self.options.compress:
                desc = metadata.fit_final(self.record, self.note_size, **final)
                if desc is not None:
                    self.out.write_at(desc, self.note_off)
        return (None if self.options.compress else self.layout.file_size), record
