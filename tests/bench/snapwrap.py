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
gets "guardian_hwm_kb".  Nothing else is changed.
"""
import json
import os
import subprocess
import sys

_GUARDIAN = [sys.executable, "-m", "snapcore._guardian"]


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
    rc = _guardian.main()
    _write(hwm_path, {"hwm_kb": vm_hwm_kb()})
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
    from snapcore import cli
    try:
        rc = cli.main(argv[1:])
    finally:
        sys.stdout.flush()
        record = {"main_hwm_kb": vm_hwm_kb(), "guardian": bool(redirected)}
        if redirected:
            try:
                with open(guardian_path) as f:
                    record["guardian_hwm_kb"] = json.load(f)["hwm_kb"]
                os.unlink(guardian_path)
            except (OSError, ValueError, KeyError):
                record["guardian_hwm_kb"] = None
        _write(hwm_path, record)
    return rc


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--guardian":
        sys.exit(guardian_main(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
