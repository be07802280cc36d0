"""Fault injection: snapcore killed, interrupted, raced, starved; the target must not care.

Trial counts are small in CI and large under `make soak` (SNAPCORE_SOAK=1).
"""

import os
import time

SOAK = os.environ.get("SNAPCORE_SOAK") == "1"


def trials(ci, soak):
    return soak if SOAK else ci


def tracer_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return 0


def wait_traced(pid, timeout=20.0, proc=None):
    """Poll until some thread of pid is traced (a snapshot is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            return False
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/status") as f:
                    text = f.read()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if "\nTracerPid:\t0\n" not in text:
                return True
        time.sleep(0.0005)
    return False
