"""snapcore completion bash|zsh: print a shell completion script (snapcore/clidoc.py).

Exit status: 0 printed; 2 usage error.
"""

import sys

from .. import clidoc
from ..cli import _fail, _Parser, _UsageError

PROG = "snapcore completion"


def build_parser():
    p = _Parser(
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


def main(argv):
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", 2)
    sys.stdout.write(clidoc.SHELLS[args.shell](clidoc.all_parsers()))
    return 0
