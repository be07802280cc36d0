"""snapcore run: run a command like timeout(1), but take cores of its whole
process tree before killing it.

    snapcore run --timeout SECS [--out DIR] [--grace SECS] -- CMD [ARGS...]

    start CMD (same process group, same stdio); become a child subreaper, so
    descendants orphaned by a dying parent are re-parented to us, not to init
    CMD ends in time            ->  exit with its status (128+N if killed by signal N)
    the deadline passes         ->  snapshot_tree(CMD) into DIR
                                    SIGTERM (+SIGCONT) to every process of the tree,
                                    SIGKILL after --grace to what is left, reap
                                    print where the cores are, a stack summary per
                                    process (pystack / gdb when installed) and the
                                    verdict of `snapcore why` (read/why.py), exit 124

SIGTERM, SIGHUP and SIGQUIT sent to snapcore are passed on to CMD.  SIGINT is
passed on too, unless snapcore is in the terminal's foreground process group
(then the terminal has already sent it to CMD).  The deadline keeps running.
Exit status: CMD's own; 124 timed out; 126 CMD cannot be executed; 127 CMD
not found; 2 usage error.  Messages go to stderr, never to CMD's stdout.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from .. import _sys, procfs, proctree
from ..capture.kill import KILL_WAIT, reap_children, terminate
from ..capture.tree import default_outdir, snapshot_tree
from ..errors import SnapcoreError
from ..read.stacks import shown_cmdline, summarize_tree
from ..read.why import explain
from ..read.whytext import brief
from . import common

PROG = f"{common.PROG} run"
INTERRUPTED = "interrupted"
TERM = False  # SIGTERM is passed on to CMD (see _Runner)

EXIT_TIMEOUT = 124
EXIT_CANNOT_EXEC = 126
EXIT_NOT_FOUND = 127
DEFAULT_GRACE = 5.0

_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Run CMD; if it is still running after SECS seconds, write a core of "
        "every process of its tree into DIR, then terminate them.",
        epilog="exit status: CMD's status, 124 if it timed out, 126 if CMD cannot be "
        "executed, 127 if not found, 2 usage error",
    )
    p.add_argument(
        "--timeout", type=common.seconds, required=True, metavar="SECS", help="seconds CMD may run"
    )
    p.add_argument(
        "--out", metavar="DIR", help="directory for the cores (default ./snapcore-PID-TIME)"
    )
    p.add_argument(
        "--grace",
        type=common.nonneg_seconds,
        default=DEFAULT_GRACE,
        metavar="SECS",
        help=f"after SIGTERM, wait SECS before SIGKILL (default {DEFAULT_GRACE:g})",
    )
    common.add_snapshot_options(p.add_argument)
    p.add_argument(
        "--no-stacks",
        action="store_true",
        help="do not print a stack summary (pystack/gdb) of each process",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="on timeout print only where the cores are"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    return p


def _say(message):
    print(f"{common.PROG}: {message}", file=sys.stderr, flush=True)


def run(args, argv):
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        raise common.UsageError(
            "no command given (usage: snapcore run --timeout SECS -- CMD [ARGS...])"
        )
    options = common.options_from(args, trigger="run", argv=[common.PROG, "run", *argv])
    options.check_path("run")  # before CMD starts
    try:
        _sys.set_child_subreaper()
    except OSError:
        pass  # orphans then go to init: still killed
    return _Runner(cmd, args, options).run()


class _Runner:
    def __init__(self, cmd, args, options):
        self.cmd = cmd
        self.args = args
        self.options = options
        self.child = None
        self.old = {}
        self.early = []  # signals that came before Popen() returned

    def run(self):
        for sig in _FORWARDED:
            self.old[sig] = signal.signal(sig, self._forward)
        try:
            try:
                self.child = subprocess.Popen(self.cmd)
            except FileNotFoundError:
                return common.fail(f"{self.cmd[0]}: command not found", EXIT_NOT_FOUND)
            except OSError as exc:
                return common.fail(
                    f"{self.cmd[0]}: cannot execute: {exc.strerror}", EXIT_CANNOT_EXEC
                )
            # CMD may already run (and be signalled for) before Popen() returns
            while self.early:
                self._forward(self.early.pop(0), None)
            deadline = time.monotonic() + self.args.timeout
            while True:
                try:
                    rc = self.child.wait(timeout=max(0.0, deadline - time.monotonic()))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        return self._timed_out()
            reap_children()
            return rc if rc >= 0 else 128 - rc
        finally:
            for sig, h in self.old.items():
                signal.signal(sig, h)

    def _forward(self, signum, frame):
        if self.child is None:
            self.early.append(signum)
            return
        if self.child.returncode is not None:
            return
        if signum == signal.SIGINT and _terminal_sent_it():
            return
        try:
            os.kill(self.child.pid, signum)
        except ProcessLookupError:
            pass

    def _timed_out(self):
        pid = self.child.pid
        args = self.args
        _say(
            f"timeout: '{shown_cmdline(self.cmd)}' (pid {pid}) still running after "
            f"{args.timeout:g}s; taking cores of its process tree"
        )
        outdir = args.out or default_outdir(pid)
        tree = None
        try:
            tree = snapshot_tree(pid, outdir, self.options)
        except SnapcoreError as exc:
            _say(f"error: no cores: {exc}")
        except OSError as exc:
            _say(f"error: no cores: {exc.strerror or exc}")
        killed = terminate_tree(pid, args.grace, self.child)
        if tree is not None:
            self._report(tree)
        _say(
            f"terminated {killed} process{'es' if killed != 1 else ''} "
            f"(SIGTERM, SIGKILL after {args.grace:g}s); exit status {EXIT_TIMEOUT}"
        )
        return EXIT_TIMEOUT

    def _report(self, tree):
        n = len(tree.ok)
        _say(f"cores of {n} process{'es' if n != 1 else ''} in {tree.outdir}/ (manifest.json)")
        if tree.bundle is not None:
            _say(f"bundle: {tree.bundle['path']} (snapcore debug opens it anywhere)")
        if self.args.quiet:
            return
        summaries = {}
        if not self.args.no_stacks:
            summaries = summarize_tree(tree.processes)
        for p in tree.processes:
            cmd = shown_cmdline(p.cmdline) or p.comm
            if not p.ok:
                print(f"  pid {p.pid} {cmd}: no core: {p.error}", file=sys.stderr)
                continue
            tool, lines = summaries.get(p.pid, (None, []))
            via = f"; stacks by {tool}:" if lines else ""
            print(
                f"  pid {p.pid} {cmd}: {os.path.basename(p.core)}, {len(p.threads)} "
                f"thread{'s' if len(p.threads) != 1 else ''}{via}",
                file=sys.stderr,
            )
            for line in lines:
                print(f"    {line}", file=sys.stderr)
        for line in _why_lines(tree.outdir):
            print(line, file=sys.stderr)
        sys.stderr.flush()


def _why_lines(outdir):
    """The verdict of `snapcore why` on the cores, and the top stack groups (<= 20 lines)."""
    try:
        return brief(explain(outdir), max_lines=20)
    except (SnapcoreError, OSError) as exc:
        return [f"{common.PROG}: why: no verdict: {exc}"]


def _terminal_sent_it():
    """True if we are in the terminal's foreground group: ^C reached CMD already."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------
# ending a process tree


def _members(root):
    """{pid: starttime} of root, its descendants, and our other children with theirs.

    Descendants orphaned by a parent that died were re-parented to us (we are
    a child subreaper), so they are found among our children.
    """
    parents = proctree.parent_map()
    me = os.getpid()
    tops = [root] + [p for p, pp in parents.items() if pp == me and p != root]
    pids = []
    for t in tops:
        if t in parents:
            pids += [t] + proctree.descendants(t, parents)
    out = {}
    for p in pids:
        try:
            st = procfs.read_stat(p)
        except SnapcoreError:
            continue
        if st.state not in ("Z", "X"):
            out[p] = st.starttime
    return out


def terminate_tree(root, grace, child):
    """SIGTERM every process of root's tree, SIGKILL after grace, reap; returns how many."""

    def reap():
        child.poll()
        reap_children()

    seen = terminate(lambda: _members(root), grace, reap)
    try:
        child.wait(timeout=KILL_WAIT)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + KILL_WAIT
    while time.monotonic() < end and any(
        pp == os.getpid() for pp in proctree.parent_map().values()
    ):
        reap_children()  # zombies re-parented to us as their parents died
        time.sleep(0.02)
    return len(seen)
