"""tree.py: a process tree target (Python), for snapshot_tree and friends.

    python tree.py [--fanout 2,1]

The root starts fanout[0] children, each of which starts fanout[1] children,
and so on (each child is this script again, talking over its stdin/stdout).
Every process has a ticker thread counting milliseconds.  Once its whole
subtree is up, a process prints one line, "READY {json}", with "pid" and
"pids" (its subtree, itself first), then answers commands on stdin:

    ping       -> "pong TICKS"
    pingall    -> "pongs {json: {pid: ticks}}" of the whole subtree
    zombie     -> starts a child that exits at once and is never reaped;
                  "zombie PID" once it is a zombie
    stop       -> SIGSTOPs its first child; "stopped PID"
    exit       -> exits

The main thread of the root waits in root_loop(), the others in child_loop().
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

ticks = 0


def ticker():
    global ticks
    while True:
        time.sleep(0.001)
        ticks += 1


def start_children(fanout):
    kids = []
    if not fanout:
        return kids
    for _ in range(fanout[0]):
        argv = [sys.executable, os.path.abspath(__file__), "--child"]
        if fanout[1:]:
            argv += ["--fanout", ",".join(str(n) for n in fanout[1:])]
        p = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        line = p.stdout.readline()
        assert line.startswith("READY"), line
        kids.append((p, json.loads(line[5:])))
    return kids


def ask(p, text):
    p.stdin.write(text + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def serve(kids):
    held = []
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "ping":
            reply = f"pong {ticks}"
        elif cmd == "pingall":
            all_ticks = {os.getpid(): ticks}
            for p, _ in kids:
                all_ticks.update({int(k): v for k, v in json.loads(ask(p, "pingall")[6:]).items()})
            reply = "pongs " + json.dumps(all_ticks)
        elif cmd == "zombie":
            z = subprocess.Popen([sys.executable, "-c", "pass"])
            held.append(z)  # never waited for
            while True:
                with open(f"/proc/{z.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                time.sleep(0.005)
            reply = f"zombie {z.pid}"
        elif cmd == "stop":
            os.kill(kids[0][0].pid, signal.SIGSTOP)
            reply = f"stopped {kids[0][0].pid}"
        elif cmd == "exit":
            break
        else:
            reply = f"unknown {cmd!r}"
        print(reply, flush=True)
    for p, _ in kids:
        try:
            p.kill()
            p.wait(timeout=10)
        except Exception:
            pass


def root_loop(kids):
    serve(kids)


def child_loop(kids):
    serve(kids)


def main():
    args = sys.argv[1:]
    fanout = []
    if "--fanout" in args:
        fanout = [int(n) for n in args[args.index("--fanout") + 1].split(",") if n]
    threading.Thread(target=ticker, daemon=True, name="ticker").start()
    kids = start_children(fanout)
    pids = [os.getpid()] + [pid for _, info in kids for pid in info["pids"]]
    print(
        "READY "
        + json.dumps({"pid": os.getpid(), "pids": pids, "children": [p.pid for p, _ in kids]}),
        flush=True,
    )
    if "--child" in args:
        child_loop(kids)
    else:
        root_loop(kids)


if __name__ == "__main__":
    main()
