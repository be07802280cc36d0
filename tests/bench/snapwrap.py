"""Run the snapcore CLI and record its peak RSS, for `make bench`.

    python snapwrap.py HWM_FILE SNAPCORE-ARGS...

runs ``snapcore SNAPCORE-ARGS...`` in this process (exactly what ``python -m
snapcore`` does) and, just before exiting, writes {"main_hwm_kb": VmHWM} of this
process to HWM_FILE.  VmHWM is the high-water mark of this process's own
resident set; getrusage's ru_maxrss would not do, since a forked child starts
with its parent's.

Live snapshots run their job in a guardian process (snapcore/_guardian.py).
Its command line is redirected here (``snapwrap.py --guardian FILE``), which
runs the same guardian code and then writes its own VmHWM to FILE; the result
gets "guardian_hwm_kb".

Both also note when the target was frozen: "freeze_window" is [CLOCK_REALTIME
when Freezer.freeze() was first entered, when the last Freezer.resume() that
let threads go returned], so that the bench can tell the target's heartbeat
gap at the freeze from stalls at other times.  Nothing else is changed.
"""
import json
import os
import subprocess
import sys
import time

_GUARDIAN = [sys.executable, "-m", "snapcore._guardian"]


_window = []


def _watch_freezer():
    """Record the freeze window (time.time(), the target's CLOCK_REALTIME)."""
    from snapcore import tracer
    freeze, resume = tracer.Freezer.freeze, tracer.Freezer.resume

    def timed_freeze(self, *a, **kw):
        if not _window:
            _window.append(time.time())
        return freeze(self, *a, **kw)

    def timed_resume(self, *a, **kw):
        held = bool(self.seized)
        try:
            return resume(self, *a, **kw)
        finally:
            if held and _window:
                del _window[1:]
                _window.append(time.time())

    tracer.Freezer.freeze, tracer.Freezer.resume = timed_freeze, timed_resume


def window():
    return list(_window) if len(_window) == 2 else None


def vm_hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _write(path, record):
    with open(path, "w") as f:
        json.dump(record, f)


def guardian_main(hwm_path):
    from snapcore import _guardian
    _watch_freezer()
    rc = _guardian.main()
    _write(hwm_path, {"hwm_kb": vm_hwm_kb(), "freeze_window": window()})
    return rc


def main(argv):
    hwm_path = argv[0]
    guardian_path = hwm_path + ".guardian"
    redirected = []
    real_popen = subprocess.Popen

    class Popen(real_popen):
        def __init__(self, args, *a, **kw):
            if isinstance(args, (list, tuple)) and list(args[:3]) == _GUARDIAN:
                args = [sys.executable, os.path.abspath(__file__), "--guardian",
                        guardian_path, *args[3:]]
                redirected.append(True)
            super().__init__(args, *a, **kw)

    subprocess.Popen = Popen
    _watch_freezer()
    from snapcore import cli
    try:
        rc = cli.main(argv[1:])
    finally:
        sys.stdout.flush()
        record = {"main_hwm_kb": vm_hwm_kb(), "guardian": bool(redirected),
                  "freeze_window": window()}
        if redirected:
            try:
                with open(guardian_path) as f:
                    g = json.load(f)
                record["guardian_hwm_kb"] = g["hwm_kb"]
                record["freeze_window"] = g.get("freeze_window") or record["freeze_window"]
                os.unlink(guardian_path)
            except (OSError, ValueError, KeyError):
                record["guardian_hwm_kb"] = None
        _write(hwm_path, record)
    return rc


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--guardian":
        sys.exit(guardian_main(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
