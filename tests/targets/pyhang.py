"""pyhang: Python processes that hang in known ways, for `snapcore why`.

    python pyhang.py rlock     two threads take two threading.RLock in opposite
                               order (rlock_ab, rlock_ba): a deadlock
    python pyhang.py lock      "holder" sleeps inside `with LOCK:`; "waiter"
                               waits for LOCK (a threading.Lock): blocked
    python pyhang.py idle      two threads wait on a threading.Event nobody sets
    python pyhang.py gil       "c_holder" takes a pthread mutex in C (ctypes.CDLL
                               lets the GIL go) and then runs Python; "gil_holder"
                               locks the same mutex through ctypes.PyDLL, which
                               keeps the GIL: it blocks holding the GIL, which the
                               first one waits for.  A deadlock: mutex <-> GIL

The main thread prints "READY {json}" once the threads are started, then
reads stdin until EOF and exits (gil: it may wait for the GIL instead).
READY keys: pid, tids (the hanging threads, in the order above), locks (the
lock objects' addresses, id()), python ("3.11"), mutex (gil: the pthread
mutex's address).  Runs under any CPython 3.8+, so tests start it with each
installed interpreter.
"""

import ctypes
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


MUTEX = ctypes.create_string_buffer(64)  # a PTHREAD_MUTEX_NORMAL, all zeros
go = threading.Event()
c_locked = threading.Event()


def c_holder():
    tids["a"] = threading.get_native_id()
    ctypes.CDLL(None).pthread_mutex_lock(MUTEX)  # without the GIL
    c_locked.set()
    n = 0
    while True:  # Python: needs the GIL
        n += 1


def gil_holder():
    tids["b"] = threading.get_native_id()
    go.wait()
    c_locked.wait()
    ctypes.PyDLL(None).pthread_mutex_lock(MUTEX)  # with the GIL


MODES = {
    "rlock": ((rlock_ab, rlock_ba), (FIRST, SECOND)),
    "lock": ((holder, waiter), (LOCK,)),
    "idle": ((idle_wait, idle_wait), ()),
    "gil": ((c_holder, gil_holder), ()),
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
    if sys.argv[1] == "gil":
        info["mutex"] = ctypes.addressof(MUTEX)
    sys.stdout.write("READY " + json.dumps(info) + "\n")
    sys.stdout.flush()
    go.set()
    sys.stdin.read()


if __name__ == "__main__":
    main()
