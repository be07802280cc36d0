"""pythreads: a Python 3 target with two threads in known Python frames.

    main thread      outer() -> inner() -> time.sleep(...)
    "worker" thread  worker_loop() -> threading.Event.wait()   (never set)

It speaks the test targets' protocol (tests/support/targets.py Target) without a
third thread: stdin is put in O_ASYNC mode, so a command line raises SIGIO,
and the SIGIO handler (run by the interpreter in the main thread, between
two slices of the sleep) answers it.  The sleep is then resumed (PEP 475),
so whenever no command is being answered the main thread sits in
time.sleep.  The worker blocks SIGIO, so the signal always reaches the main
thread.

time.sleep only looks at Python's signal flags when its syscall is
interrupted, so a SIGIO that arrives while the handler is finishing would
be noticed no sooner than the next one.  The test sends its next command as
soon as it has read a reply, so the handler lingers (LINGER seconds) after
its last command and answers whatever comes meanwhile before it returns.

    READY {"pid": P, "tids": [main, worker], "marker": ...}
    ping  -> "pong N"   N = commands answered so far (grows while the target runs)
    exit  -> exits 0
"""

import fcntl
import json
import os
import select
import signal
import sys
import threading
import time

MARKER = "snapcore-python-marker-7f3a"
LINGER = 0.2
answered = 0
stop_event = threading.Event()
worker_tid = []


def worker_loop(event):
    worker_tid.append(threading.get_native_id())
    event.wait()


def handle_io(signum, frame):
    global answered
    while True:
        try:
            chunk = os.read(0, 4096)
        except BlockingIOError:
            if not select.select([0], [], [], LINGER)[0]:
                return
            continue
        if not chunk:
            os._exit(0)  # the test closed our stdin
        for line in chunk.decode().splitlines():
            answered += 1
            if line.startswith("ping"):
                reply = f"pong {answered}"
            elif line.startswith("exit"):
                os._exit(0)
            else:
                reply = "ok"
            os.write(1, (reply + "\n").encode())


def inner():
    while True:
        time.sleep(3600)


def outer():
    inner()


def main():
    # the worker inherits a mask that blocks SIGIO; the main thread unblocks it
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
    worker = threading.Thread(target=worker_loop, args=(stop_event,), name="worker", daemon=True)
    worker.start()
    while not worker_tid:
        time.sleep(0.001)
    signal.signal(signal.SIGIO, handle_io)
    fl = fcntl.fcntl(0, fcntl.F_GETFL)
    fcntl.fcntl(0, fcntl.F_SETFL, fl | os.O_ASYNC | os.O_NONBLOCK)
    fcntl.fcntl(0, fcntl.F_SETOWN, os.getpid())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGIO})
    sys.stdout.write(
        "READY "
        + json.dumps(
            {
                "pid": os.getpid(),
                "tids": [threading.get_native_id(), worker_tid[0]],
                "marker": MARKER,
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    outer()


if __name__ == "__main__":
    main()
