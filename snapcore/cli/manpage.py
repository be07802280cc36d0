"""snapcore manpage: print snapcore(1) in roff, generated from the parsers (snapcore/clidoc.py).

Exit status: 0 printed; 2 usage error.
"""

import sys

from .. import clidoc
from . import common
from .main import parsers

PROG = f"{common.PROG} manpage"


def build_parser():
    return common.Parser(
        prog=PROG,
        description="Print the snapcore(1) manual page (roff), "
        "generated from snapcore's own option parsers.",
        epilog="view it with 'snapcore manpage | man -l -'; install it as "
        "man1/snapcore.1 in a directory of manpath.  exit status: 0 "
        "printed, 2 usage error",
    )


def run(args, argv):
    sys.stdout.write(clidoc.manpage(parsers()))
    return 0
