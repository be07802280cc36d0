"""snapcore why TARGET: what a hung process (or tree) waits on, and why.

    snapcore why PID [--tree] [--full] [--keep DIR] [--samples N --interval S] [--json]
    snapcore why CORE | DIR | BUNDLE [--json]

A PID is snapshotted first (--mini unless --full; --tree takes its children
too) into a temporary directory, removed afterwards unless --keep names one;
a process that cannot be frozen (a thread in uninterruptible sleep, another
tracer attached) gets a verdict from /proc alone (kernel states and stacks,
system calls, fds);
a core (plain or .zst, snapcore's, the kernel's or gcore's), a tree
directory (manifest.json) or a bundle (its cores, unwound against its own
files) is read as it is.  The verdict comes first, then the
deadlock cycles, the threads grouped by stack, and every thread's state.
--samples N takes N snapshots --interval seconds apart and says, per group,
whether it is stuck (same stacks, no CPU used) or slow (moving).

Exit status: 0 a verdict was printed; 1 the target could not be read or
snapshotted; 2 usage error.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from ..arch import arch_for_machine
from ..capture import kstate
from ..capture.plan import read_memory
from ..capture.request import SnapshotOptions
from ..capture.snapshot import snapshot
from ..capture.tree import snapshot_tree
from ..errors import EXIT_OK, AlreadyTraced, ThreadStopTimeout
from ..procfs import comm_of
from ..read.why import analyze, compare, explain
from ..read.whymodel import from_samples
from ..read.whytext import format_text
from . import common

PROG = f"{common.PROG} why"
INTERRUPTED = "interrupted; every process was resumed"


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("the number of samples must be at least 1")
    return value


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Say why a process hangs: a deadlock (with its cycle), blocked (and on "
        "what), busy or idle; with the threads grouped by stack across processes.",
        epilog="exit status: 0 verdict printed, 1 target unreadable or snapshot failed, "
        "2 usage error",
    )
    p.add_argument(
        "target", metavar="TARGET", help="a pid, a core file, a tree directory or a bundle"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/why.md)")
    p.add_argument("--tree", action="store_true", help="PID: also its descendants")
    p.add_argument("--full", action="store_true", help="PID: a full snapshot rather than --mini")
    p.add_argument("--keep", metavar="DIR", help="PID: keep the cores in DIR")
    p.add_argument(
        "--stop-timeout",
        type=common.seconds,
        default=5.0,
        metavar="SECS",
        help="PID: give up freezing after SECS (default 5); a process that cannot be "
        "frozen (a thread in uninterruptible sleep) gets a verdict from /proc alone",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=1,
        metavar="N",
        help="PID: take N snapshots and say which thread groups are stuck or slow",
    )
    p.add_argument(
        "--interval",
        type=common.seconds,
        default=1.0,
        metavar="SECS",
        help="seconds between samples (default 1)",
    )
    return p


def _is_pid(text):
    return text.isdigit() and not os.path.exists(text)


def run(args, argv):
    if _is_pid(args.target):
        result = _from_pid(common.pid(args.target), args, argv)
    else:
        if args.tree or args.full or args.keep or args.samples > 1:
            raise common.UsageError("--tree, --full, --keep and --samples need a PID")
        result = explain(args.target)
    if args.json:
        print(json.dumps(result))
    else:
        sys.stdout.write(format_text(result))
    return EXIT_OK


def _from_pid(pid, args, argv):
    options = SnapshotOptions(
        mini=not args.full,
        trigger="cli",
        reason="snapcore why",
        argv=[PROG, *argv],
        stop_timeout=args.stop_timeout,
        force=True,  # --keep DIR: a second run replaces the first one's cores
    )
    options.check_path("tree" if args.tree else "single")
    workdir = args.keep or tempfile.mkdtemp(prefix=f"snapcore-why-{pid}-")
    os.makedirs(workdir, exist_ok=True)
    try:
        results = []
        for i in range(args.samples):
            if i:
                time.sleep(args.interval)
            where = os.path.join(workdir, f"sample-{i + 1}") if args.samples > 1 else workdir
            try:
                results.append(explain(_take(pid, where, options, args.tree)))
            except (ThreadStopTimeout, AlreadyTraced) as exc:
                results.append(_unfrozen(pid, exc))
        return results[0] if len(results) == 1 else compare(results)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


class _LiveMemory:
    """The words a verdict reads (a mutex's owner), from the running process."""

    def __init__(self, pid):
        self.pid = pid

    def read(self, addr, n):
        return read_memory(self.pid, addr, n)

    def close(self):
        pass


def _unfrozen(pid, exc):
    """The verdict from /proc alone, for a process some thread of which did not stop,
    or that another tracer holds (ptrace allows one)."""
    samples = kstate.sample_threads(pid), kstate.sample_process(pid)
    try:
        with open(f"/proc/{pid}/exe", "rb") as f:
            arch = arch_for_machine(int.from_bytes(f.read(20)[18:20], "little"))
    except OSError:
        arch = None
    if isinstance(exc, AlreadyTraced):
        who = f" ({exc.tracer_comm})" if exc.tracer_comm else ""
        why = f"traced by PID {exc.tracer_pid}{who}"
    else:
        why = f"thread(s) {', '.join(str(t) for t in exc.tids)} did not stop"
    proc = from_samples(pid, comm_of(pid), *samples, arch, why, mem=_LiveMemory(pid))
    result = analyze([proc])
    result["summary"] += f" [not frozen: {why}; from /proc only]"
    return result


def _take(pid, where, options, tree):
    if tree:
        snapshot_tree(pid, where, options)
        return where
    os.makedirs(where, exist_ok=True)
    path = os.path.join(where, f"core.{pid}")
    snapshot(pid, path, options)
    return path
