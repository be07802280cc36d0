"""What every command shares: the parser class, value types, the snapshot
options (one table, used by `snapcore PID`, `snapcore run` and the pytest
plugin), and the one error boundary.

    execute(command, argv)   parse, run, and turn every way out into an exit
                             status and at most one line on stderr:

        InvalidRequest, usage errors    2   "snapcore: error: ... (see --help)"
        other SnapcoreError, OSError    1   the error's message (and its advice)
        KeyboardInterrupt               130 the command's INTERRUPTED text
        SIGTERM                         143 the command's INTERRUPTED text
        anything else                   1   "internal error: ..." (SNAPCORE_DEBUG=1
                                            shows the traceback)
"""

import argparse
import os
import re
import signal
import sys
import traceback

from ..capture.request import SnapshotOptions
from ..errors import EXIT_FAILED, EXIT_SIGTERM, EXIT_USAGE, SnapcoreError, exit_status

PROG = "snapcore"
DEBUG_ENV = "SNAPCORE_DEBUG"


class UsageError(Exception):
    pass


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def fail(message, code=EXIT_FAILED, prog=PROG):
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def execute(command, argv):
    """Run command (a module with PROG, build_parser() and run(args, argv)); the one
    place a command's exceptions become exit statuses and messages."""
    prog = getattr(command, "PROG", PROG)
    interrupted = getattr(command, "INTERRUPTED", "interrupted")
    args = None

    def on_term(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, on_term) if getattr(command, "TERM", True) else None
    try:
        args = command.build_parser().parse_args(argv)
        return command.run(args, argv)
    except UsageError as exc:
        return fail(f"{exc} (see '{prog} --help')", EXIT_USAGE)
    except KeyboardInterrupt as exc:
        return fail(_said(interrupted, args), exit_status(exc))
    except Terminated:
        return fail(_said(interrupted, args).replace("interrupted", "terminated", 1), EXIT_SIGTERM)
    except SnapcoreError as exc:
        code = exit_status(exc)
        return fail(f"{exc}" + (f" (see '{prog} --help')" if code == EXIT_USAGE else ""), code)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return fail(f"{where}{exc.strerror or exc}")
    except Exception as exc:  # a bug: say so, in one line
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        return fail(
            f"internal error: {type(exc).__name__}: {exc} (please report it; "
            f"{DEBUG_ENV}=1 shows the traceback)"
        )
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _said(interrupted, args):
    """A command's INTERRUPTED text: a string, or a function of its arguments."""
    return interrupted(args) if callable(interrupted) else interrupted


# ---------------------------------------------------------------------------
# value types


def pid(text):
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a pid (a positive integer)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a pid (a positive integer)")
    return value


def mask(text):
    try:
        value = int(text, 0) if text.lower().startswith("0x") else int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a coredump_filter mask (hex, e.g. 0x33)")
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"'{text}' is out of range for coredump_filter")
    return value


def _number_of_seconds(text, ok, rule):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds")
    if not ok(value):
        raise argparse.ArgumentTypeError(rule)
    return value


def seconds(text):
    return _number_of_seconds(text, lambda v: v > 0, "the timeout must be positive")


def nonneg_seconds(text):
    return _number_of_seconds(text, lambda v: v >= 0, "the grace period cannot be negative")


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text):
    """'4096', '500K', '1.5G', '2GiB', '10MB' (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 4096, 500M, 2G)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return value


# ---------------------------------------------------------------------------
# the snapshot options, declared once

# (SnapshotOptions field, flag without dashes, argparse keywords)
SNAPSHOT_OPTIONS = (
    (
        "live",
        "live",
        dict(
            action="store_true",
            help="pause the target only while it forks a copy-on-write image of itself, then "
            "copy memory from the image (falls back to a normal snapshot when the target "
            "does not allow it); one process only",
        ),
    ),
    (
        "stop_timeout",
        "stop-timeout",
        dict(
            type=seconds,
            metavar="SECS",
            help="give up if a thread does not stop within SECS (default 5)",
        ),
    ),
    (
        "coredump_filter",
        "filter",
        dict(
            type=mask,
            metavar="MASK",
            help="override /proc/PID/coredump_filter (hex bits, e.g. 0x33)",
        ),
    ),
    (
        "all_mappings",
        "all",
        dict(
            action="store_true",
            help="dump every readable mapping whole, like gcore -a (ignores coredump_filter "
            "and MADV_DONTDUMP)",
        ),
    ),
    (
        "mini",
        "mini",
        dict(
            action="store_true",
            help="keep only what backtraces need: thread stacks, ELF-header pages, the dynamic "
            "linker's and the Python runtime's data",
        ),
    ),
    (
        "max_size",
        "max-size",
        dict(
            type=size,
            metavar="SIZE",
            help="keep each (uncompressed) core within SIZE (e.g. 200M): drop the largest "
            "regions first, never thread stacks or ELF headers; the core is marked "
            "truncated",
        ),
    ),
    (
        "compress",
        "compress",
        dict(
            choices=["zstd"],
            help="write zstandard-compressed cores (named .zst); needs 'pip install "
            "snapcore[zstd]'",
        ),
    ),
    (
        "metadata",
        "metadata",
        dict(
            action="store_true",
            help="also write CORE.json beside each core: time, mode, command line, limits, "
            "cgroup, pause, dropped and unreadable ranges",
        ),
    ),
    (
        "reason",
        "reason",
        dict(metavar="TEXT", help="why the snapshot was taken; recorded in the metadata"),
    ),
    ("force", "force", dict(action="store_true", help="replace files that exist")),
    (
        "bundle",
        "bundle",
        dict(
            action="store_true",
            help="write one archive (default name core.PID.tar.zst) holding the core, the "
            "executable and every mapped file with a build-id (the bytes that were running), "
            "and a manifest: 'snapcore debug ARCHIVE' opens it on any machine.  With --tree: "
            "DIR/bundle.tar.zst for the whole tree.  Needs zstandard",
        ),
    ),
    (
        "bundle_max_size",
        "bundle-max-size",
        dict(
            type=size,
            metavar="SIZE",
            help="with --bundle: keep the mapped files within SIZE (uncompressed): the "
            "executable first, then the smallest; the manifest lists what was left out",
        ),
    ),
)


def add_snapshot_options(add, prefix=""):
    """Declare the snapshot options with add (parser.add_argument, or a pytest
    option group's addoption); flags are --PREFIXNAME, dests PREFIX_FIELD."""
    dest_prefix = prefix.replace("-", "_")
    for field, flag, kw in SNAPSHOT_OPTIONS:
        flags = [f"--{prefix}{flag}"]
        if not prefix and field == "force":
            flags.insert(0, "-f")
        add(*flags, dest=dest_prefix + field, default=None, **kw)


def options_from(ns, prefix="", **fixed):
    """The SnapshotOptions an argparse namespace asks for (InvalidRequest if none can)."""
    dest_prefix = prefix.replace("-", "_")
    given = {}
    for field, _, _ in SNAPSHOT_OPTIONS:
        value = getattr(ns, dest_prefix + field, None)
        if value is not None and value is not False:
            given[field] = value
    given.update(fixed)
    return SnapshotOptions(**given)
