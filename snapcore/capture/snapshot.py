"""snapshot(pid): one process's core, by whichever route the request needs.

    SnapshotOptions (request.py), checked for this path
      -> check the target (collect.check_target)
      -> create PATH's temp file and its sidecar (publish.Outputs)
      -> route:
           the caller itself          helper process: Job on the caller
           live, or our own child     helper process: Job (see helper.py why)
           any other process          Job on a tracer thread of ours
         (Job: freeze -> collect -> plan -> select -> copy -> resume; job.py)
      -> finish: the final metadata record, into the SNAPCORE note
      -> publish: link PATH (and PATH.json) into place
         (--bundle: the core went to an unnamed file, PATH is the archive of it
         and of the files the target maps: bundling.BundleOutputs)

Whatever the route, the request is the same value, so every option takes
effect on every route; what a route cannot do is refused before anything is
touched (SnapshotOptions.check_path).
"""

import os
import time

from .. import metadata
from .._sys import yama_scope
from ..errors import AccessDenied
from .collect import check_target
from .helper import Helper, JobSpec
from .job import Job
from .publish import Outputs
from .request import SnapshotOptions, resolve_path
from .tracer import CancelToken, run_traced, snapcore_thread, snapcore_threads


def snapshot(pid, path=None, options=None, *, progress=None, **changes):
    """Write an ELF core of the running process ``pid`` and let it run on.

    path        where to write (default ``core.PID``, ``core.PID.zst`` compressed)
    options     a SnapshotOptions; keyword arguments (``mini=True``, ``live=True``,
                ...: the fields of SnapshotOptions) change it or the defaults
    progress    callable(bytes_done, bytes_total), called from this thread

    Returns a Snapshot; raises a SnapcoreError subclass on failure, after the
    target has been resumed and any partial file removed: InvalidRequest
    (options that cannot be honoured here) before anything is touched.

    ``pid`` may be the caller's own pid: a helper process then does the
    tracing and the calling thread appears in the core, stopped in this call.
    """
    t0 = time.monotonic()
    started = time.time()
    options = SnapshotOptions.of(options, **changes)
    own = pid == os.getpid()
    if options.trigger is None:
        options = options.replace(trigger="self" if own else "api")
    path_kind = "self" if own else ("live" if options.live else "single")
    options.check_path(path_kind, progress=progress is not None)
    status = check_target(pid)
    path = resolve_path(pid, path, options)
    facts = metadata.process_facts(pid)
    if options.bundle:
        from .bundling import BundleOutputs  # (not imported for a plain core: ~5 ms)

        outputs = BundleOutputs(path, options)
    else:
        outputs = Outputs(path, options)
    try:
        with snapcore_thread():
            if own:  # the threads taking this snapshot: marked in the core's record
                facts["snapcore_tids"] = snapcore_threads()
            snap, file_size, record = _route(
                pid, outputs, status, options.for_cores(), facts, started, t0, progress, own
            )
        publish_started = time.monotonic()
        outputs.publish(file_size, record, snap)
    except BaseException:
        outputs.abort()
        raise
    outputs.describe(snap, record, t0)
    if options.bundle:
        snap.bundle = outputs.summary
        snap.stats.setdefault("phases", {})["bundle"] = time.monotonic() - publish_started
    return snap


def _route(pid, outputs, status, options, facts, started, t0, progress, own):
    """(Snapshot, file size to set, final record), by the route the request needs."""
    # Our own child: traced from the helper unless Yama (scope 1: only we, its
    # ancestor, may trace it) refuses the helper; then from our tracer thread.
    child = status.ppid == os.getpid()
    if own or options.live or child:
        spec = JobSpec(
            pid=pid,
            path=outputs.path,
            options=options,
            status=None if own else status,
            facts=facts,
            started=started,
            t0=t0,
            progress=not own,
        )
        try:
            with Helper() as helper:
                helper.start()
                return helper.run_job(spec, outputs.core.fd, progress)
        except AccessDenied:
            if own or options.live or yama_scope() in (None, 0):
                raise
    cancel = CancelToken()
    job = Job(pid, outputs.core, status, options, facts, started, cancel)

    def poll():
        if progress is not None and job.total:
            progress(job.done(), job.total)

    snap = run_traced(job.run, cancel, poll)
    poll()
    file_size, record = job.finish(snap, time.monotonic() - t0)
    return snap, file_size, record
