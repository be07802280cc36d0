"""Ending a set of processes: SIGTERM (+SIGCONT), SIGKILL after a grace period.

Processes are followed by (pid, start time), so a pid reused by an unrelated
process is never signalled.  ``find()`` is called again and again while we
wait, so processes forked meanwhile are caught too, and every process it ever
returned is followed until it is gone, even after it left the tree (its
parent died and it was re-parented).
"""

import os
import signal
import time

from ..proctree import same_process_alive

KILL_WAIT = 10.0


def terminate(find, grace, reap=None):
    """End find()'s processes; returns {pid: starttime} of all that were signalled.

    find()  -> {pid: starttime} of the processes to end now
    grace   seconds between SIGTERM and SIGKILL
    reap()  called while waiting (e.g. to reap our own exited children)
    """
    seen = {}

    def left():
        for p, s in find().items():
            seen.setdefault(p, s)
        return {p: s for p, s in seen.items() if same_process_alive(p, s)}

    def send(procs, sig):
        for p, s in procs.items():
            if same_process_alive(p, s):
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    termed = {}
    deadline = time.monotonic() + grace
    for sig, limit in ((signal.SIGTERM, deadline), (signal.SIGKILL, None)):
        procs = left()
        if not procs:
            break
        if sig == signal.SIGKILL:
            limit = time.monotonic() + KILL_WAIT
        send(procs, sig)
        if sig == signal.SIGTERM:
            termed.update(procs)
            send(procs, signal.SIGCONT)  # a stopped process must see the SIGTERM
        while procs and time.monotonic() < limit:
            time.sleep(0.02)
            if reap is not None:
                reap()
            procs = left()
            if sig == signal.SIGTERM:
                new = {p: s for p, s in procs.items() if p not in termed}
                termed.update(new)
                send(new, signal.SIGTERM)
                send(new, signal.SIGCONT)
    if reap is not None:
        reap()
    return seen


def reap_children():
    """Reap every exited child of ours (orphans re-parented to a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
