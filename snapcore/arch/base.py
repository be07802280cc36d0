"""What an architecture contributes to a core file."""

import os
import struct
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def ticks_to_timeval(ticks):
    sec, rem = divmod(ticks, CLK_TCK)
    return sec, rem * 1_000_000 // CLK_TCK


@dataclass(frozen=True)
class Arch:
    name: str
    elf: object  # elf.structs.ElfClass
    e_machine: int
    page_size: int
    regs_size: int  # user_regs_struct as GETREGSET returns it
    regsets: tuple  # ((note_type, owner), ...) in the kernel's view order
    prstatus: struct.Struct
    prpsinfo: struct.Struct
    sigset_mask: int  # pr_sigpend/pr_sighold width
    reg_names: tuple  # user_regs_struct field names, in order
    pc_reg: str
    sp_reg: str
    has_vsyscall: bool
    syscall_insn: bytes = b""  # the instruction live mode re-executes (empty: no live mode)
    nr_clone: int = -1
    nr_wait4: int = -1
    wait_syscalls: frozenset = frozenset()  # wait4, waitid (and waitpid): a parent's waits
    red_zone: int = 0  # bytes below the stack pointer a leaf function may use
    # f(first thread's ThreadNotes, cpuid) -> [(owner, type, desc)]: notes the kernel
    # writes once per core for this architecture, after the threads'
    process_notes: object = field(default=None, hash=False)
    # note_type -> f(GETREGSET bytes) -> bool, for regsets whose kernel active() hook
    # looks at more than "GETREGSET worked" (fill_thread_core_info skips inactive ones)
    regset_in_use: dict = field(default_factory=dict, hash=False)
    # a thread's system call in its registers (live mode's injections, `why`)
    syscall_names: tuple = ()  # name by number (None: unused)
    syscall_nr_reg: str = ""  # the number of the call the thread is in (-1: none)
    syscall_arg_regs: tuple = ()  # the six arguments, in order
    syscall_ret_reg: str = ""  # the number going in, the result coming out
    thread_pointer_reg: str = ""  # the TCB: pthread_self() and CPython's thread ident
    # glibc (nptl) lock layouts: offsets in pthread_mutex_t and pthread_rwlock_t
    mutex_owner_offset: int = 8  # struct __pthread_mutex_s.__owner
    rwlock_writer_offset: int = -1  # struct __pthread_rwlock_arch_t.__cur_writer (-1: unknown)
    rwlock_futex_offsets: tuple = ()  # __wrphase_futex, __writers_futex

    def syscall_name(self, nr):
        """The name of system call nr, or None."""
        if nr is None or not 0 <= nr < len(self.syscall_names):
            return None
        return self.syscall_names[nr]

    def syscall_of(self, regs):
        """(nr, [six arguments]) of the call a stopped thread is in; nr None if none.

        A thread stopped inside a system call keeps its number in orig_rax
        (orig_eax) and the arguments in their registers (the kernel preserves
        them); a thread stopped in user code has -1 there.
        """
        nr = regs.get(self.syscall_nr_reg)
        if nr is None:
            return None, []
        bits = 8 * self.word_size
        if nr >= 1 << (bits - 1):
            nr -= 1 << bits
        args = [regs.get(r, 0) for r in self.syscall_arg_regs]
        return (nr if nr >= 0 else None), args

    @property
    def word_size(self):
        return self.elf.word_size

    @property
    def _regs_fmt(self):
        return f"<{len(self.reg_names)}{'Q' if self.word_size == 8 else 'I'}"

    def regset_active(self, note_type, data):
        """Whether the kernel's core would hold this regset note for the thread."""
        check = self.regset_in_use.get(note_type)
        return bool(data) and (check is None or check(data))

    def regs(self, raw):
        """user_regs_struct bytes -> {name: value}."""
        return dict(zip(self.reg_names, struct.unpack_from(self._regs_fmt, raw)))

    def pack_regs(self, regs):
        """{name: value} -> user_regs_struct bytes (values taken modulo the word size)."""
        mask = (1 << (8 * self.word_size)) - 1
        return struct.pack(self._regs_fmt, *(regs[n] & mask for n in self.reg_names))

    def build_prstatus(
        self,
        *,
        tid,
        ppid,
        pgrp,
        sid,
        sigpend,
        sighold,
        utime,
        stime,
        cutime,
        cstime,
        regs,
        fpvalid,
        cursig=0,
        signo=0,
    ):
        """struct elf_prstatus (include/linux/elfcore.h); times in clock ticks."""
        if len(regs) != self.regs_size:
            raise ValueError(
                f"{self.name}: register set of {len(regs)} bytes, expected {self.regs_size}"
            )
        times = []
        for t in (utime, stime, cutime, cstime):
            times.extend(ticks_to_timeval(t))
        m = self.sigset_mask
        return self.prstatus.pack(
            signo,
            0,
            0,
            cursig,
            sigpend & m,
            sighold & m,
            tid,
            ppid,
            pgrp,
            sid,
            *times,
            regs,
            1 if fpvalid else 0,
        )

    def build_prpsinfo(
        self, *, state_index, sname, nice, flag, uid, gid, pid, ppid, pgrp, sid, fname, psargs
    ):
        """struct elf_prpsinfo; fname and psargs are bytes, NUL padded here."""
        return self.prpsinfo.pack(
            state_index,
            sname.encode(),
            1 if sname == "Z" else 0,
            max(-128, min(127, nice)),
            flag,
            uid,
            gid,
            pid,
            ppid,
            pgrp,
            sid,
            fname[:15],
            psargs[:79],
        )
