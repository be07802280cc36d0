"""Architecture descriptions: register layouts, note sizes and regset lists.

The architecture is chosen from the target (the size of the NT_PRSTATUS
regset the kernel returns for it), never from the host.
"""
from .i386 import I386
from .x86_64 import X86_64

_BY_PRSTATUS_REGS = {X86_64.regs_size: X86_64, I386.regs_size: I386}


def arch_for_regs_size(size):
    """The Arch whose general register set has this size, or None."""
    return _BY_PRSTATUS_REGS.get(size)


__all__ = ["X86_64", "I386", "arch_for_regs_size"]
