"""Run the snapcore CLI and record what the bench needs from inside it.

    python snapwrap.py RECORD_FILE SNAPCORE-ARGS...

runs ``snapcore SNAPCORE-ARGS...`` in this process (exactly what ``python -m
snapcore`` does) and, just before exiting, writes a JSON record to RECORD_FILE:

  main_hwm_kb         VmHWM of this process: the high-water mark of its own
                      resident set.
  children_maxrss_kb  getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest peak RSS
                      of any child process this one has waited for, e.g. the
                      helper process of a live snapshot, however it is started
                      (forked or exec'd, whatever its module is called).  The
                      kernel carries a parent's high-water mark into the child
                      over fork and exec, so this is at least what this process
                      had resident when it started the child; 0 without children.
  stats               the ``stats`` of the Snapshot the CLI printed (``--json``):
                      the C loop's read/write seconds and, when the snapshot
                      reports them, its phases.  Captured by wrapping the public
                      ``snapcore.Snapshot.to_json``; null if that was not called.
  freeze_window       [time.time() when a Freezer first froze the target, when its
                      last resume returned], if a Freezer class is found in this
                      process (normal snapshots; a helper process that is exec'd
                      is not instrumented); else null.

Nothing else is changed.
"""

import importlib
import json
import resource
import sys
import time

# where the freezer has lived or may live; the first one found is instrumented
_FREEZER_MODULES = (
    "snapcore.tracer",
    "snapcore.capture.freeze",
    "snapcore.capture.tracer",
    "snapcore.freeze",
)

_window = []
_captured = {}


def _instrument(cls):
    freeze, resume = cls.freeze, cls.resume

    def timed_freeze(self, *a, **kw):
        if not _window:
            _window.append(time.time())
        return freeze(self, *a, **kw)

    def timed_resume(self, *a, **kw):
        held = bool(getattr(self, "seized", True))  # a resume with nothing to let go
        try:  # does not move the end
            return resume(self, *a, **kw)
        finally:
            if held and _window:
                del _window[1:]
                _window.append(time.time())

    cls.freeze, cls.resume = timed_freeze, timed_resume


def _watch_freezer():
    """Record the freeze window (time.time(), the target's CLOCK_REALTIME)."""
    for name in _FREEZER_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        cls = getattr(mod, "Freezer", None)
        if cls is not None and hasattr(cls, "freeze") and hasattr(cls, "resume"):
            _instrument(cls)
            return


def _watch_result():
    """Keep the stats of the Snapshot whose to_json() the CLI prints."""
    import snapcore

    cls = getattr(snapcore, "Snapshot", None)
    if cls is None or not hasattr(cls, "to_json"):
        return
    to_json = cls.to_json

    def wrapped(self, *a, **kw):
        out = to_json(self, *a, **kw)
        stats = getattr(self, "stats", None)
        if isinstance(stats, dict):
            _captured["stats"] = stats
        return out

    cls.to_json = wrapped


def vm_hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main(argv):
    path = argv[0]
    _watch_freezer()
    _watch_result()
    from snapcore import cli

    try:
        rc = cli.main(argv[1:])
    finally:
        sys.stdout.flush()
        record = {
            "main_hwm_kb": vm_hwm_kb(),
            "children_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "stats": _captured.get("stats"),
            "freeze_window": list(_window) if len(_window) == 2 else None,
        }
        with open(path, "w") as f:
            json.dump(record, f, default=str)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
