"""ia32 processes on an x86_64 kernel (compat_binfmt_elf, asm/elfcore-compat.h)."""
import struct

from ..elf.structs import (ELF32, NT_386_IOPERM, NT_386_TLS, NT_PRFPREG, NT_PRSTATUS,
                           NT_PRXFPREG, NT_X86_XSTATE)
from .base import Arch

I386 = Arch(
    name="i386",
    elf=ELF32,
    e_machine=3,                        # EM_386
    page_size=4096,
    regs_size=68,
    # arch/x86/kernel/ptrace.c x86_32_regsets[], in order
    regsets=((NT_PRSTATUS, "CORE"), (NT_PRFPREG, "CORE"), (NT_PRXFPREG, "LINUX"),
             (NT_X86_XSTATE, "LINUX"), (NT_386_TLS, "LINUX"), (NT_386_IOPERM, "LINUX")),
    # compat prstatus: 32-bit sigsets, pids, old_timeval32 times, 68-byte pr_reg
    prstatus=struct.Struct("<iiiHxxIIiiii8i68si"),
    # compat prpsinfo: u32 flag, u16 uid/gid
    prpsinfo=struct.Struct("<bcbbIHHiiii16s80s"),
    sigset_mask=(1 << 32) - 1,
    reg_names=("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
               "orig_eax", "eip", "cs", "eflags", "esp", "ss"),
    pc_reg="eip",
    sp_reg="esp",
    has_vsyscall=False,
)

assert I386.prstatus.size == 144 and I386.prpsinfo.size == 124
