"""snapcore completion bash|zsh: print a shell completion script (snapcore/clidoc.py).

Exit status: 0 printed; 2 usage error.
"""

import sys

from .. import clidoc
from . import common
from .main import parsers

PROG = f"{common.PROG} completion"


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Print a completion script for SHELL, generated from "
        "snapcore's own option parsers.",
        epilog="bash: snapcore completion bash > "
        "~/.local/share/bash-completion/completions/snapcore; zsh: snapcore "
        "completion zsh > DIR/_snapcore, DIR in $fpath.  exit status: 0 "
        "printed, 2 usage error",
    )
    p.add_argument("shell", choices=sorted(clidoc.SHELLS), help="the shell: %(choices)s")
    return p


def run(args, argv):
    sys.stdout.write(clidoc.SHELLS[args.shell](parsers()))
    return 0
