"""What x86_64 and ia32 processes share: the XSAVE layout note."""

import struct

from ..elf.structs import NT_X86_XSAVE_LAYOUT, NT_X86_XSTATE

XCR0_OFFSET = 464  # xstate_fx_sw_bytes.xfeatures in the FXSAVE sw_reserved area


def build_xsave_layout(xstate, cpuid):
    """NT_X86_XSAVE_LAYOUT from the XCR0 word of an XSAVE image and CPUID leaf 0xD.

    One {type, size, offset, flags=0} per enabled extended feature (bit >= 2),
    as arch/x86/kernel/fpu/xstate.c dump_xsave_layout_desc() writes it.
    """
    if xstate is None or len(xstate) < XCR0_OFFSET + 8:
        return None
    (xcr0,) = struct.unpack_from("<Q", xstate, XCR0_OFFSET)
    out = []
    for bit in range(2, 64):
        if xcr0 & (1 << bit):
            eax, ebx, _, _ = cpuid(0xD, bit)
            out.append(struct.pack("<IIII", bit, eax, ebx, 0))
    return b"".join(out) if out else None


def process_notes(first_thread, cpuid):
    """Once per core, last: NT_X86_XSAVE_LAYOUT (Linux 6.12+ writes it)."""
    layout = build_xsave_layout(
        first_thread.regset(NT_X86_XSTATE) if first_thread is not None else None, cpuid
    )
    return [] if layout is None else [("LINUX", NT_X86_XSAVE_LAYOUT, layout)]
