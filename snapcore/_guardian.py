"""The guardian: a live snapshot's tracer, in a process of its own.

While a live snapshot injects a system call, one thread of the target runs
with borrowed registers.  If its tracer died in that moment the kernel would
detach the thread and let it run on with them.  So live snapshots are traced
from this separate process, started in a new session and deaf to SIGINT,
SIGTERM and SIGHUP: killing snapcore (even with SIGKILL, even its whole
process group) cannot cut an injection short.  The caller asks it to stop by
writing "cancel" or by going away (EOF on the control pipe); the guardian
then finishes the step it is in, puts the target back, kills the image and
exits.

Protocol (length-prefixed pickles):
    caller -> guardian, on stdin:  the job spec, then later b"cancel\\n" or EOF
    guardian -> caller, on stdout: ("progress", done, total)*, then
                                   ("ok", Snapshot, file_size, record) or ("error", exc)
The core is written through an fd the caller passes (its O_TMPFILE inode),
which the caller publishes once the guardian reports success.
"""
import os
import pickle
import signal
import struct
import sys
import threading

_LEN = struct.Struct("<I")


def send(f, obj):
    data = pickle.dumps(obj)
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def recv(f):
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("guardian pipe closed")
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("guardian pipe closed")
    return pickle.loads(data)


def main():
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    spec = recv(stdin)

    import importlib

    from .tracer import CancelToken, run_traced
    job_mod = importlib.import_module("snapcore.snapshot")   # the module, not the function
    cancel = CancelToken()

    def control():
        try:
            while True:
                line = stdin.readline()
                if not line or line.strip() == b"cancel":
                    break
        except OSError:
            pass
        cancel.set()

    threading.Thread(target=control, daemon=True, name="snapcore-control").start()
    from .output import CoreSink
    out = CoreSink(spec["fd"], spec["path"])
    opts = spec["opts"]
    zstd = job_mod._zstandard() if opts.compress == "zstd" else None
    job = job_mod._Job(spec["pid"], out, spec["status"], opts, spec["facts"], spec["started"],
                       cancel, zstd)
    lock = threading.Lock()

    def poll():
        if job.total:
            with lock:
                try:
                    send(stdout, ("progress", job.done(), job.total))
                except OSError:
                    cancel.set()

    try:
        snap = run_traced(job.run, cancel, poll)
        poll()
        result = ("ok", snap, *job.finish(snap, spec["t0"]))
    except BaseException as exc:  # reported to the caller
        result = ("error", exc)
    with lock:
        try:
            send(stdout, result)
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
