"""x86_64 (arch/x86/include/asm/user_64.h, include/linux/elfcore.h)."""

import struct

from ..elf.structs import ELF64, NT_386_IOPERM, NT_PRFPREG, NT_PRSTATUS, NT_X86_SHSTK, NT_X86_XSTATE
from . import x86
from .base import Arch
from .syscalls_x86_64 import SYSCALLS_X86_64

X86_64 = Arch(
    name="x86_64",
    elf=ELF64,
    e_machine=62,  # EM_X86_64
    page_size=4096,
    regs_size=216,
    # arch/x86/kernel/ptrace.c x86_64_regsets[], in order
    regsets=(
        (NT_PRSTATUS, "CORE"),
        (NT_PRFPREG, "CORE"),
        (NT_X86_XSTATE, "LINUX"),
        (NT_386_IOPERM, "LINUX"),
        (NT_X86_SHSTK, "LINUX"),
    ),
    # pr_info{signo,code,errno} cursig pad sigpend sighold pid ppid pgrp sid
    # utime stime cutime cstime (timeval: i64 sec, i64 usec) pr_reg fpvalid pad
    prstatus=struct.Struct("<iiiHxxQQiiii8q216si4x"),
    # state sname zomb nice pad flag uid gid pid ppid pgrp sid fname psargs
    prpsinfo=struct.Struct("<bcbb4xQIIiiii16s80s"),
    sigset_mask=(1 << 64) - 1,
    reg_names=(
        "r15",
        "r14",
        "r13",
        "r12",
        "rbp",
        "rbx",
        "r11",
        "r10",
        "r9",
        "r8",
        "rax",
        "rcx",
        "rdx",
        "rsi",
        "rdi",
        "orig_rax",
        "rip",
        "cs",
        "eflags",
        "rsp",
        "ss",
        "fs_base",
        "gs_base",
        "ds",
        "es",
        "fs",
        "gs",
    ),
    pc_reg="rip",
    sp_reg="rsp",
    has_vsyscall=True,
    syscall_insn=b"\x0f\x05",  # syscall
    nr_clone=56,
    nr_wait4=61,
    wait_syscalls=frozenset({61, 247}),  # wait4, waitid
    syscall_names=SYSCALLS_X86_64,
    syscall_nr_reg="orig_rax",
    syscall_arg_regs=("rdi", "rsi", "rdx", "r10", "r8", "r9"),
    syscall_ret_reg="rax",
    thread_pointer_reg="fs_base",
    mutex_owner_offset=8,  # glibc 2.36 sysdeps/nptl/bits/struct_mutex.h
    rwlock_writer_offset=24,  # sysdeps/x86/nptl/bits/struct_rwlock.h
    rwlock_futex_offsets=(8, 12),
    red_zone=128,  # the System V x86_64 ABI
    process_notes=x86.process_notes,
)

assert X86_64.prstatus.size == 336 and X86_64.prpsinfo.size == 136
