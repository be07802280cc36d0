"""The command line: `snapcore PID` and its subcommands, one module each.

    snapcore PID [options]             cli/snapshot.py   (--tree: the whole tree)
    snapcore info CORE [--json]        cli/info.py
    snapcore decompress CORE.zst       cli/decompress.py
    snapcore run --timeout S -- CMD    cli/run.py
    snapcore why PID|CORE|DIR          cli/why.py

Every command runs inside common.execute(), the one place where exceptions
become exit statuses and one-line messages (see docs/cli.md).  Subcommand
modules are imported when named, so that `snapcore PID` starts without the
readers' imports (pyelftools and the rest).
"""

import importlib
import sys

from . import common

# name -> module in snapcore.cli; "" is `snapcore PID`
COMMANDS = {
    "": "snapshot",
    "info": "info",
    "decompress": "decompress",
    "run": "run",
    "why": "why",
}


def command(name):
    return importlib.import_module(f"snapcore.cli.{COMMANDS[name]}")


def parsers():
    """[(command line, argparse parser)] of every command (man page, completion)."""
    out = []
    for name in COMMANDS:
        prog = f"{common.PROG} {name}".strip()
        out.append((prog, command(name).build_parser()))
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    name = argv[0] if argv and argv[0] in COMMANDS and argv[0] else ""
    return common.execute(command(name), argv[1:] if name else argv)
