"""snapcore PID: the core of a running process (or of its whole tree, --tree).

    snapcore PID [-o PATH|DIR|TEMPLATE] [snapshot options] [-q] [--json]
    snapcore PID --tree [-o DIR] [snapshot options]

The snapshot options (common.SNAPSHOT_OPTIONS) build one SnapshotOptions,
which goes whole to snapshot() or snapshot_tree().  Exit status: 0 written
(--tree: PID's own core was written); 1 failed (the target was resumed, no
file left at PATH); 2 a request that cannot be honoured; 130/143 interrupted.
"""

import json
import sys

from .._version import __version__
from ..capture.publish import expand_output
from ..capture.snapshot import snapshot
from ..capture.tree import snapshot_tree
from ..errors import EXIT_FAILED, EXIT_OK
from ..procfs import comm_of
from . import common
from .progress import ProgressBar

PROG = common.PROG


def INTERRUPTED(args):  # noqa: N802 (common.execute's name)
    if args is not None and args.tree:
        return "interrupted; every process was resumed"
    return "interrupted; the target was resumed and no core was written"


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Write a gdb-compatible ELF core dump of a running process "
        "without stopping it for long or killing it.",
        epilog="other commands: 'snapcore info CORE', 'snapcore decompress CORE.zst', "
        "'snapcore debug BUNDLE', "
        "'snapcore run --timeout SECS -- CMD' (see 'snapcore COMMAND --help').  "
        "exit status: 0 core written, 1 snapshot failed, 2 usage error or a "
        "request that cannot be honoured, 130 interrupted, 143 terminated",
    )
    p.add_argument("pid", type=common.pid, help="process to snapshot")
    p.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="core file to write (default: core.PID in the current directory); "
        "a directory means DIR/core.PID; %%p pid, %%e process name, "
        "%%t time, %%h host name, %%%% a percent sign.  With --tree: the "
        "directory (default snapcore-PID-TIME)",
    )
    p.add_argument(
        "--tree",
        action="store_true",
        help="also snapshot every descendant of PID: one core per process and "
        "manifest.json in the directory; every snapshot option applies to "
        "each process",
    )
    common.add_snapshot_options(p.add_argument)
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on stdout"
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print nothing on success (no progress bar either)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def run(args, argv):
    options = common.options_from(args, trigger="cli", argv=[PROG, *argv])
    progress = None if args.quiet else ProgressBar(sys.stderr)
    try:
        if args.tree:
            return _tree(args, options, progress)
        output = _output(args, options)
        snap = snapshot(args.pid, output, options, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(snap.to_json()))
    elif not args.quiet:
        print(snap.summary())
    return EXIT_OK


def _output(args, options):
    try:
        return expand_output(
            args.output, args.pid, comm=comm_of(args.pid), suffix=options.output_suffix
        )
    except ValueError as exc:
        raise common.UsageError(str(exc)) from None


def _tree(args, options, progress):
    tree = snapshot_tree(args.pid, args.output, options, progress=progress)
    for p in tree.processes:
        if not p.ok:
            print(f"{PROG}: warning: pid {p.pid} ({p.comm}): {p.error}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "outdir": tree.outdir,
                    "manifest": tree.manifest,
                    "wall_seconds": round(tree.wall_time, 6),
                    "pause_seconds": round(tree.pause_time, 6),
                    "bundle": tree.bundle,
                    "processes": [
                        dict(
                            p.manifest_entry(),
                            snapshot=p.snapshot.to_json() if p.snapshot else None,
                        )
                        for p in tree.processes
                    ],
                }
            )
        )
    elif not args.quiet:
        for p in tree.ok:
            print(
                f"{p.core}: pid {p.pid} ({p.comm}), {len(p.threads)} thread"
                f"{'s' if len(p.threads) != 1 else ''}"
            )
        print(tree.summary())
        if tree.bundle is not None:
            print(f"{tree.bundle['path']}: the tree's bundle ('snapcore debug' opens it)")
    root = tree.get(args.pid)
    return EXIT_OK if root is not None and root.ok else EXIT_FAILED
