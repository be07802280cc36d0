"""The command line; the only modules that print or exit are this one and
the subcommand modules it dispatches to (snapcore/commands/).

    snapcore PID [-o PATH|DIR|TEMPLATE] [--force] [--stop-timeout SECS] [--filter MASK]
                 [--all | --mini] [--max-size SIZE] [--compress zstd] [--metadata]
                 [--reason TEXT] [-q] [--json]
    snapcore PID --tree [-o DIR] ...   PID and all its descendants into DIR
    snapcore info CORE [--json]
    snapcore decompress CORE.zst [-o CORE] [--force]
    snapcore run --timeout SECS [--out DIR] [--grace SECS] -- CMD [ARGS...]
    snapcore SUBCOMMAND ...        (see SUBCOMMANDS)

Exit status: 0 core written; 1 snapshot failed (the target was resumed, no
file left at PATH); 2 usage error; 130 interrupted (SIGINT); 143 terminated
(SIGTERM).  Errors are one line on stderr, never a traceback.
"""
import argparse
import json
import signal
import sys

from ._version import __version__
from .errors import SnapcoreError
from .snapshot import snapshot

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

PROG = "snapcore"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler."""


def _pid(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a pid (a positive integer)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a pid (a positive integer)")
    return value


def _mask(text):
    try:
        value = int(text, 0) if text.lower().startswith("0x") else int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a coredump_filter mask "
                                         "(hex, e.g. 0x33)")
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"'{text}' is out of range for coredump_filter")
    return value


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size(text):
    """'4096', '500K', '1.5G', '2GiB', '10MB' (binary units) -> bytes."""
    import re
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 4096, 500M, 2G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return value


def build_parser():
    p = _Parser(
        prog=PROG,
        description="Write a gdb-compatible ELF core dump of a running process "
                    "without stopping it for long or killing it.",
        epilog="other commands: 'snapcore info CORE [--json]' describes a core (also "
               ".zst, kernel and gcore cores); 'snapcore decompress CORE.zst [-o CORE]' "
               "restores a sparse core; 'snapcore run', 'snapcore completion bash|zsh', "
               "'snapcore manpage': see their --help.  "
               "exit status: 0 core written, 1 snapshot failed, 2 usage error, "
               "130 interrupted, 143 terminated",
    )
    p.add_argument("pid", type=_pid, help="process to snapshot")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="core file to write (default: core.PID in the current directory); "
                        "a directory means DIR/core.PID; %%p pid, %%e process name, "
                        "%%t time, %%h host name, %%%% a percent sign")
    p.add_argument("-f", "--force", action="store_true",
                   help="replace PATH if it exists")
    p.add_argument("--live", action="store_true",
                   help="pause the target only while it forks a copy-on-write image of "
                        "itself, then copy memory from the image (falls back to a normal "
                        "snapshot when the target does not allow it)")
    p.add_argument("--stop-timeout", type=_seconds, default=5.0, metavar="SECS",
                   help="give up if a thread does not stop within SECS (default 5)")
    p.add_argument("--filter", type=_mask, metavar="MASK",
                   help="override /proc/PID/coredump_filter (hex bits, e.g. 0x33)")
    # -- what goes in the core, and how it is written (issue 8)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true",
                       help="dump every readable mapping whole, like gcore -a "
                            "(ignores coredump_filter and MADV_DONTDUMP)")
    which.add_argument("--mini", action="store_true",
                       help="keep only what backtraces need: thread stacks, ELF-header "
                            "pages and the dynamic linker's data")
    p.add_argument("--max-size", type=_size, metavar="SIZE",
                   help="keep the (uncompressed) core within SIZE (e.g. 200M): drop the "
                        "largest regions first, never thread stacks or ELF headers; "
                        "the core is marked truncated")
    p.add_argument("--compress", choices=["zstd"],
                   help="write a zstandard-compressed core (default name core.PID.zst); "
                        "needs 'pip install snapcore[zstd]'")
    p.add_argument("--metadata", action="store_true",
                   help="also write PATH.json: time, mode, command line, limits, cgroup, "
                        "pause, dropped and unreadable ranges")
    p.add_argument("--reason", metavar="TEXT",
                   help="why the snapshot was taken; recorded in the core's metadata")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print nothing on success (no progress bar either)")
    p.add_argument("--tree", action="store_true",
                   help="also snapshot every descendant of PID: -o names a directory "
                        "(default snapcore-PID-TIME) that gets core.P per process and "
                        "manifest.json; exit 0 when PID's own core was written")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _fail(message, code):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


# name -> module in snapcore.commands exposing main(argv) -> exit status.
# Each is imported only when used.
SUBCOMMANDS = {
    "info": "info",
    "decompress": "decompress",
    "run": "run",
    "completion": "completion",
    "manpage": "manpage",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib
        module = importlib.import_module(f"snapcore.commands.{SUBCOMMANDS[argv[0]]}")
        return module.main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", EXIT_USAGE)

    from .commands._progress import ProgressBar
    from .output import expand_output
    from .procfs import comm_of
    try:
        output = expand_output(args.output, args.pid, comm=comm_of(args.pid),
                               suffix=".zst" if args.compress else "")
    except ValueError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", EXIT_USAGE)
    progress = None if args.quiet else ProgressBar(sys.stderr)

    def on_term(signum, frame):
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_term)
    if args.tree:
        try:
            return _tree(args)
        finally:
            signal.signal(signal.SIGTERM, old_term)
    try:
        snap = snapshot(args.pid, output, force=args.force, live=args.live,
                        stop_timeout=args.stop_timeout, coredump_filter=args.filter,
                        all_mappings=args.all, mini=args.mini, max_size=args.max_size,
                        compress=args.compress,
                        metadata_path=f"{output}.json" if args.metadata else None,
                        reason=args.reason, trigger="cli", argv=[PROG, *argv],
                        progress=progress)
    except KeyboardInterrupt:
        return _fail("interrupted; the target was resumed and no core was written",
                     EXIT_SIGINT)
    except _Terminated:
        return _fail("terminated; the target was resumed and no core was written",
                     EXIT_SIGTERM)
    except SnapcoreError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}", EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(snap.to_json()))
    elif not args.quiet:
        print(snap.summary())
    return EXIT_OK


def _tree(args):
    """snapcore PID --tree: cores of PID and its descendants, manifest.json."""
    from .tree import snapshot_tree
    try:
        tree = snapshot_tree(args.pid, args.output, force=args.force,
                             stop_timeout=args.stop_timeout, coredump_filter=args.filter)
    except KeyboardInterrupt:
        return _fail("interrupted; every process was resumed", EXIT_SIGINT)
    except _Terminated:
        return _fail("terminated; every process was resumed", EXIT_SIGTERM)
    except SnapcoreError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}", EXIT_FAILED)
    for p in tree.processes:
        if p.ok:
            if not args.quiet:
                print(f"{p.core}: pid {p.pid} ({p.comm}), {len(p.threads)} thread"
                      f"{'s' if len(p.threads) != 1 else ''}")
        else:
            print(f"{PROG}: warning: pid {p.pid} ({p.comm}): {p.error}", file=sys.stderr)
    if not args.quiet:
        print(tree.summary())
    root = tree.get(args.pid)
    return EXIT_OK if root is not None and root.ok else EXIT_FAILED
