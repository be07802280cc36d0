"""Architecture descriptions: register layouts, note sizes and regset lists.

The architecture is chosen from the target (the size of the NT_PRSTATUS
regset the kernel returns for it), never from the host.
"""

import sys

from .i386 import I386
from .x86_64 import X86_64

_BY_PRSTATUS_REGS = {X86_64.regs_size: X86_64, I386.regs_size: I386}
_BY_MACHINE = {X86_64.e_machine: X86_64, I386.e_machine: I386}


def arch_for_regs_size(size):
    """The Arch whose general register set has this size, or None."""
    return _BY_PRSTATUS_REGS.get(size)


def arch_for_machine(e_machine):
    """The Arch of a core's e_machine, or None (aarch64 would go here)."""
    return _BY_MACHINE.get(e_machine)


def this_process():
    """The Arch of the running interpreter (for a helper looking at its own caller,
    which runs the same binary; targets are always identified by their registers)."""
    return X86_64 if sys.maxsize > 2**32 else I386


__all__ = ["X86_64", "I386", "arch_for_machine", "arch_for_regs_size", "this_process"]
