"""snapcore manpage: print snapcore(1) in roff, generated from the parsers (snapcore/clidoc.py).

Exit status: 0 printed; 2 usage error.
"""

import sys

from .. import clidoc
from ..cli import _fail, _Parser, _UsageError

PROG = "snapcore manpage"


def build_parser():
    return _Parser(
        prog=PROG,
        description="Print the snapcore(1) manual page (roff), "
        "generated from snapcore's own option parsers.",
        epilog="view it with 'snapcore manpage | man -l -'; install it as "
        "man1/snapcore.1 in a directory of manpath.  exit status: 0 "
        "printed, 2 usage error",
    )


def main(argv):
    try:
        build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(f"{exc} (see '{PROG} --help')", 2)
    sys.stdout.write(clidoc.manpage(clidoc.all_parsers()))
    return 0
