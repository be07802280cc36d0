"""pyhang: Python processes that hang in known ways, for `snapcore why`.

    python pyhang.py rlock     two threads take two threading.RLock in opposite
                               order (rlock_ab, rlock_ba): a deadlock
    python pyhang.py lock      "holder" sleeps inside `with LOCK:`; "waiter"
                               waits for LOCK (a threading.Lock): blocked
    python pyhang.py idle      two threads wait on a threading.Event nobody sets

The main thread prints "READY {json}" once the threads are started, then
reads stdin until EOF and exits.  READY keys: pid, tids (the hanging threads,
in the order above), locks (the lock objects' addresses, id()), python
("3.11").  Runs under any CPython 3.8+, so tests start it with each installed
interpreter.
"""

import json
import os
import sys
import threading
import time

FIRST = threading.RLock()
SECOND = threading.RLock()
LOCK = threading.Lock()
EVENT = threading.Event()
barrier = threading.Barrier(2)
tids = {}


def rlock_ab():
    tids["a"] = threading.get_native_id()
    with FIRST:
        barrier.wait()
        with SECOND:
            pass


def rlock_ba():
    tids["b"] = threading.get_native_id()
    with SECOND:
        barrier.wait()
        with FIRST:
            pass


def holder():
    tids["a"] = threading.get_native_id()
    with LOCK:
        barrier.wait()
        while True:
            time.sleep(3600)


def waiter():
    tids["b"] = threading.get_native_id()
    barrier.wait()
    with LOCK:
        pass


def idle_wait():
    tids["a" if "a" not in tids else "b"] = threading.get_native_id()
    EVENT.wait()


MODES = {
    "rlock": ((rlock_ab, rlock_ba), (FIRST, SECOND)),
    "lock": ((holder, waiter), (LOCK,)),
    "idle": ((idle_wait, idle_wait), ()),
}


def main():
    funcs, locks = MODES[sys.argv[1]]
    for f in funcs:
        threading.Thread(target=f, name=f.__name__, daemon=True).start()
        while len(tids) < funcs.index(f) + 1:
            time.sleep(0.001)
    info = {
        "pid": os.getpid(),
        "tids": [tids["a"], tids["b"]],
        "locks": [id(x) for x in locks],
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
    }
    sys.stdout.write("READY " + json.dumps(info) + "\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
