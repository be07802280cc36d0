"""ia32 processes on an x86_64 kernel (compat_binfmt_elf, asm/elfcore-compat.h)."""

import struct

from ..elf.structs import (
    ELF32,
    NT_386_IOPERM,
    NT_386_TLS,
    NT_PRFPREG,
    NT_PRSTATUS,
    NT_PRXFPREG,
    NT_X86_XSTATE,
)
from . import x86
from .base import Arch
from .syscalls_i386 import SYSCALLS_I386

_USER_DESC = struct.Struct("<IIII")  # entry_number, base_addr, limit, flags (bitfields)
_EMPTY_DESC_FLAGS = 0x28  # read_exec_only | seg_not_present: fill_user_desc()
# of an all-zero descriptor


def tls_in_use(data):
    """arch/x86/kernel/tls.c regset_tls_active(): is any GDT TLS slot non-empty?

    GETREGSET(NT_386_TLS) always returns the 3 slots as struct user_desc; an
    empty slot reads back as base 0, limit 0 and only read_exec_only and
    seg_not_present set (set_thread_area() clears any descriptor given so).
    """
    for off in range(0, len(data) - _USER_DESC.size + 1, _USER_DESC.size):
        _, base, limit, flags = _USER_DESC.unpack_from(data, off)
        if (base, limit, flags) != (0, 0, _EMPTY_DESC_FLAGS):
            return True
    return False


I386 = Arch(
    name="i386",
    elf=ELF32,
    e_machine=3,  # EM_386
    page_size=4096,
    regs_size=68,
    # arch/x86/kernel/ptrace.c x86_32_regsets[], in order
    regsets=(
        (NT_PRSTATUS, "CORE"),
        (NT_PRFPREG, "CORE"),
        (NT_PRXFPREG, "LINUX"),
        (NT_X86_XSTATE, "LINUX"),
        (NT_386_TLS, "LINUX"),
        (NT_386_IOPERM, "LINUX"),
    ),
    # compat prstatus: 32-bit sigsets, pids, old_timeval32 times, 68-byte pr_reg
    prstatus=struct.Struct("<iiiHxxIIiiii8i68si"),
    # compat prpsinfo: u32 flag, u16 uid/gid
    prpsinfo=struct.Struct("<bcbbIHHiiii16s80s"),
    sigset_mask=(1 << 32) - 1,
    reg_names=(
        "ebx",
        "ecx",
        "edx",
        "esi",
        "edi",
        "ebp",
        "eax",
        "ds",
        "es",
        "fs",
        "gs",
        "orig_eax",
        "eip",
        "cs",
        "eflags",
        "esp",
        "ss",
    ),
    pc_reg="eip",
    sp_reg="esp",
    has_vsyscall=False,
    wait_syscalls=frozenset({7, 114, 284}),  # waitpid, wait4, waitid
    process_notes=x86.process_notes,
    regset_in_use={NT_386_TLS: tls_in_use},
    syscall_names=SYSCALLS_I386,
    syscall_nr_reg="orig_eax",
    syscall_arg_regs=("ebx", "ecx", "edx", "esi", "edi", "ebp"),
    syscall_ret_reg="eax",
    mutex_owner_offset=8,  # int __lock; unsigned __count; int __owner
    rwlock_writer_offset=28,  # sysdeps/x86/nptl/bits/struct_rwlock.h (__x86_64__ unset)
    rwlock_futex_offsets=(8, 12),
)

assert I386.prstatus.size == 144 and I386.prpsinfo.size == 124
