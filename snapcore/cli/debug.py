"""snapcore debug BUNDLE: open a bundle's core in gdb (or lldb, or pystack).

    snapcore debug BUNDLE [--lldb | --pystack] [--pid PID] [--print] [-- ARGS...]

The bundle is unpacked once into $XDG_CACHE_HOME/snapcore/bundles/<sha256>
and checked (snapcore.bundle.open_bundle); the debugger then gets the core,
the executable and the bundle's files as its sysroot and solib search path,
so every frame resolves on a machine that has none of the target's files.
ARGS after -- go to the debugger: snapcore debug B -- -batch -ex 'thread
apply all bt'.  The plain command is printed first (stderr), for people who
want it.  Exit status: the debugger's; 1 a bundle that cannot be opened;
2 usage error.
"""

import os
import shutil
import sys

from ..bundle import core_entry, executable, open_bundle
from ..bundle.debug import argv_for, shown
from ..read.stacks import pystack_path
from . import common

PROG = f"{common.PROG} debug"
INTERRUPTED = "interrupted"


class _Parser(common.Parser):
    """Everything after the first -- goes to the debugger, untouched (args.args)."""

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        tail = []
        if "--" in args:
            cut = args.index("--")
            args, tail = args[:cut], args[cut + 1 :]
        ns = super().parse_args(args, namespace)
        ns.args = tail
        return ns


def build_parser():
    p = _Parser(
        prog=PROG,
        usage=f"{PROG} BUNDLE [--lldb | --pystack] [--pid PID] [--print] [-- DEBUGGER ARGS...]",
        description="Open the core of a bundle (snapcore PID --bundle) in gdb, with the "
        "executable and libraries that were running, on any machine.",
        epilog="arguments after -- go to the debugger, e.g. "
        "snapcore debug B -- -batch -ex 'thread apply all bt'.  "
        "exit status: the debugger's, 1 the bundle cannot be opened, 2 usage error",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle (.tar.zst) written by --bundle")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--lldb", action="store_true", help="use lldb instead of gdb")
    which.add_argument(
        "--pystack", action="store_true", help="show the Python stacks with pystack instead"
    )
    p.add_argument(
        "--pid",
        type=common.pid,
        help="the process whose core to open, in a tree's bundle (default: the root); "
        "its pid on the host or in its own namespace",
    )
    p.add_argument(
        "--print",
        action="store_true",
        dest="print_only",
        help="unpack, print the debugger's command line on stdout, and stop there",
    )
    return p


def _say(message):
    print(f"{common.PROG}: {message}", file=sys.stderr)


def run(args, argv):
    extra = args.args
    kind = "lldb" if args.lldb else "pystack" if args.pystack else "gdb"
    core, sysroot, manifest = open_bundle(args.bundle, pid=args.pid)
    entry = core_entry(manifest, args.pid, args.bundle)
    exe = executable(manifest, entry, sysroot)
    program = pystack_path() if kind == "pystack" else shutil.which(kind)
    cmd = argv_for(kind, core, sysroot, exe, extra, program=program)
    if args.print_only:
        print(shown(argv_for(kind, core, sysroot, exe, extra)))
        return 0
    where = os.path.dirname(core)
    _say(f"{args.bundle}: pid {entry['pid']} ({entry.get('comm')}), unpacked in {where}")
    mine = [f for f in manifest.get("files", []) if entry["pid"] in (f.get("pids") or [])]
    for f in (f for f in mine if f.get("left_out")):
        _say(f"warning: {f['path']} is not in the bundle: {f['left_out']}")
    if exe is None:
        _say("warning: the executable is not in the bundle; the debugger gets the core alone")
    if os.environ.get("DEBUGINFOD_URLS") and kind != "pystack":
        _say("DEBUGINFOD_URLS is set: the debugger may fetch debug info for these build-ids")
    _say("the same without snapcore:\n  " + shown(argv_for(kind, core, sysroot, exe, extra)))
    if program is None:
        return common.fail(f"{kind} is not installed (--print shows the command)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(program, cmd)
