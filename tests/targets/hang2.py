"""hang2.py PIDFILE: a two-process hung tree, for `snapcore run --timeout`.

The parent starts a child and waits for it forever (parent_waits_for_child);
the child sleeps forever (child_sleeps_forever) and ignores SIGTERM, so it
is only ended by SIGKILL, after its parent is gone (an orphan by then).
Both pids go to PIDFILE ("PARENT CHILD") once the child is running.
"""

import os
import signal
import subprocess
import sys
import time

HELD = bytes(range(256)) * 32768  # 8 MiB of data: more than test_options.py's --max-size

CHILD = """
import signal, sys, time
HELD = bytes(range(256)) * 32768  # 8 MiB of data: more than test_options.py's --max-size
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def child_sleeps_forever():
    print("up", flush=True)
    while True:
        time.sleep(100)
child_sleeps_forever()
"""


def parent_waits_for_child(pidfile):
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    child.stdout.readline()
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    os.rename(tmp, pidfile)
    print("hang2: both running", flush=True)
    child.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent_waits_for_child(sys.argv[1])
    time.sleep(1)
