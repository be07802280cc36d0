"""Which memory goes in the core, and copying it.

``plan_dump`` applies the kernel's rule (fs/coredump.c vma_dump_size(), in its
order) to every VMA of the target; ``copy_memory`` hands the result to the C
loop, which reads only resident pages (pagemap), so a snapshot never commits
memory in the target.  Pages a VMA's file holds but the target never touched
are read from the file itself, which is what the kernel's dumper would have
faulted in.

Userspace cannot see vma->anon_vma; a private VMA "has been written" when
smaps shows Anonymous or Swap pages.  The only case this misses (an anon_vma
left behind after every anonymous page was dropped) changes p_filesz, never
the bytes a reader sees.
"""
import bisect
import dataclasses
import errno
import os
import stat
import struct
import time
from dataclasses import dataclass, field

from . import _native
from .elf.layout import Load, pflags
from .procfs import unescape_maps_name

# coredump_filter bits (include/linux/sched/coredump.h, MMF_DUMP_* - 2)
ANON_PRIVATE = 1 << 0
ANON_SHARED = 1 << 1
MAPPED_PRIVATE = 1 << 2
MAPPED_SHARED = 1 << 3
ELF_HEADERS = 1 << 4
HUGETLB_PRIVATE = 1 << 5
HUGETLB_SHARED = 1 << 6

ELFMAG = b"\x7fELF"

# how a planned segment is filled
READ = "read"          # copy from the target (resident pages) and backing file
ZEROS = "zeros"        # dumped, but the kernel could not read it either: holes
NONE = "none"          # p_filesz 0
PRELOADED = "preloaded"  # live mode: copied from the frozen target before the fork


@dataclass
class VmaPlan:
    """One PT_LOAD: a VMA, or a piece of one when a selection pass split it.

    The dumped bytes are [start, start + filesz).
    """
    vma: object
    filesz: int
    fill: str
    why: str
    has_file: bool
    backing_fd: int = -1
    fault_absent: bool = False
    start: int = None           # None: the whole VMA
    end: int = None
    backing_base: int = None    # file offset of vma.start in backing_fd (None: vma.offset)

    def __post_init__(self):
        if self.start is None:
            self.start = self.vma.start
        if self.end is None:
            self.end = self.vma.end

    @property
    def size(self):
        return self.end - self.start

    @property
    def first_piece(self):
        return self.start == self.vma.start

    def load(self):
        v = self.vma
        return Load(self.start, self.size, self.filesz,
                    pflags(v.readable, v.writable, v.executable))


class BackingFiles:
    """Read-only fds of the files behind file-backed VMAs, opened once per file."""

    def __init__(self, pid):
        self.pid = pid
        self._cache = {}

    def get(self, vma):
        """(fd or -1, os.stat_result or None) for a VMA that has a file."""
        key = (vma.dev_major, vma.dev_minor, vma.inode, vma.name)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._open(vma)
        return hit

    def _open(self, vma):
        # /proc/PID/map_files reaches deleted files, memfd and shmem too, but
        # following its links needs CAP_CHECKPOINT_RESTORE/CAP_SYS_ADMIN.
        link = f"/proc/{self.pid}/map_files/{vma.start:x}-{vma.end:x}"
        candidates = [link]
        name = vma.name
        if name.startswith("/") and not name.endswith(" (deleted)"):
            candidates.append(unescape_maps_name(name))
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_ino != vma.inode or (os.major(st.st_dev), os.minor(st.st_dev)) != (
                    vma.dev_major, vma.dev_minor):
                continue                          # replaced since it was mapped
            if not stat.S_ISREG(st.st_mode):
                return -1, st                     # never open devices
            try:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY), st
            except OSError:
                return -1, st
        return -1, None

    def close(self):
        for fd, _ in self._cache.values():
            if fd >= 0:
                os.close(fd)
        self._cache.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_memory(pid, addr, length):
    """A few bytes of the target's memory (b"" or fewer bytes where unreadable).

    Through /proc/PID/mem, which never unshares a copy-on-write page (see
    Vma.cow_shared), with process_vm_readv as the fallback.
    """
    if addr <= 0 or length <= 0:
        return b""
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            return os.pread(fd, length, addr)
        except OSError:
            pass
        finally:
            os.close(fd)
    try:
        return _native.readv(pid, addr, length)
    except _native.SyscallError:
        return b""


def _starts_with_elf_magic(pid, vma, fd):
    if fd >= 0:
        try:
            return os.pread(fd, 4, vma.offset) == ELFMAG
        except OSError:
            pass
    return read_memory(pid, vma.start, 4) == ELFMAG


def plan_vma(pid, vma, filt, has_file, files, page_size):
    """fs/coredump.c vma_dump_size(), rule by rule.  Returns a VmaPlan."""
    def plan(filesz, fill, why, fd=-1):
        return VmaPlan(vma, filesz, fill if filesz else NONE, why, has_file, fd)

    flags = vma.vmflags
    # 1. always_dump_vma: the gate VMA and named special mappings, whole.
    if vma.special:
        unreadable = "io" in flags or not vma.readable
        return plan(vma.size, ZEROS if unreadable else READ, "special mapping")
    # 2. MADV_DONTDUMP
    if "dd" in flags:
        return plan(0, NONE, "MADV_DONTDUMP")
    fd, st = files.get(vma) if has_file else (-1, None)
    # 3. DAX cannot be seen from userspace (no VmFlag); treated as a file mapping.
    # 4. hugetlb
    if "ht" in flags:
        bit = HUGETLB_SHARED if vma.shared else HUGETLB_PRIVATE
        return plan(vma.size if filt & bit else 0, READ, "hugetlb", fd)
    # 5. VM_IO
    if "io" in flags:
        return plan(0, NONE, "VM_IO")
    # 6. shared: anonymous (unlinked inode) or a real file
    if vma.shared:
        if st is not None:
            unlinked = st.st_nlink == 0
        else:
            unlinked = vma.name.endswith(" (deleted)") or vma.inode == 0
        bit = ANON_SHARED if unlinked else MAPPED_SHARED
        return plan(vma.size if filt & bit else 0, READ,
                    "shared anonymous" if unlinked else "shared file", fd)
    # 7. private and written to (has an anon_vma)
    if (vma.anonymous > 0 or vma.swap > 0) and filt & ANON_PRIVATE:
        p = plan(vma.size, READ, "written private", fd)
        p.fault_absent = has_file and fd < 0
        return p
    # 8. anonymous and never written
    if not has_file:
        return plan(0, NONE, "untouched anonymous")
    # 9. file-backed private
    if filt & MAPPED_PRIVATE:
        p = plan(vma.size, READ, "private file", fd)
        p.fault_absent = fd < 0
        return p
    # 10. the ELF header rule: first page of an executable or ELF file
    if filt & ELF_HEADERS and vma.offset == 0 and vma.readable:
        if st is not None and st.st_mode & 0o111:
            is_elf = True
        else:
            is_elf = _starts_with_elf_magic(pid, vma, fd)
        if is_elf:
            p = plan(min(page_size, vma.size), READ, "ELF header", fd)
            p.fault_absent = fd < 0
            return p
    return plan(0, NONE, "file, not dumped")


def plan_vma_all(pid, vma, has_file, files, page_size):
    """--all (gcore -a): every mapping whose memory can be read, whole.

    coredump_filter and MADV_DONTDUMP are ignored; VM_IO/VM_PFNMAP mappings
    (device memory, which no reader can fetch) keep p_filesz 0, and the kernel's
    special mappings are dumped as the kernel dumps them.  Pages never touched
    are still holes, never faulted in.
    """
    if vma.special or "io" in vma.vmflags:
        return plan_vma(pid, vma, 0, has_file, files, page_size)
    fd, _ = files.get(vma) if has_file else (-1, None)
    p = VmaPlan(vma, vma.size, READ, "all mappings", has_file, fd)
    p.fault_absent = has_file and fd < 0
    return p


def plan_dump(pid, vmas, filt, file_ranges, files, page_size, all_mappings=False):
    """A VmaPlan for every VMA, in address order with the gate VMA last."""
    plans = []
    for v in vmas:
        if file_ranges is not None:
            has_file = (v.start, v.end) in file_ranges
        else:
            has_file = v.inode != 0 or v.name.startswith("/")
        if all_mappings:
            plans.append(plan_vma_all(pid, v, has_file, files, page_size))
        else:
            plans.append(plan_vma(pid, v, filt, has_file, files, page_size))
    # /proc lists [vsyscall] last already, as the kernel emits it; keep that.
    return plans


# ---------------------------------------------------------------------------
# Selection passes over a plan: --mini and --max-size
#
# Both keep an "essential" set of address ranges and drop the rest of the
# dumped bytes, VMA by VMA.  A VMA that keeps only part of its bytes is split
# into pieces, one PT_LOAD each: a piece starts at a kept range and its
# p_filesz covers that range only, the way the kernel's ELF-header rule gives
# a segment p_filesz < p_memsz.  Readers treat the undumped part like any
# undumped memory (gdb falls back to the mapped file, then zeros).

RED_ZONE = 128                  # x86_64 ABI: below the stack pointer, still live
STACK_CAP = 8 << 20             # the most of one thread's stack kept (default RLIMIT_STACK)
RTLD_DATA_CAP = 1 << 20         # a library's data mapping is kept whole up to this size
MAX_LINK_MAPS = 65536

AT_PHDR = 3
AT_PHNUM = 5
PT_DYNAMIC = 2
PT_PHDR = 6
DT_NULL = 0
DT_DEBUG = 21


@dataclass
class Dropped:
    """Dumped bytes of one VMA that a selection pass left out."""
    start: int
    end: int
    bytes: int
    why: str

    def to_json(self):
        return {"start": self.start, "end": self.end, "bytes": self.bytes, "why": self.why}


@dataclass
class Selection:
    """What was chosen, for the SNAPCORE note and the result."""
    mode: str = "normal"        # normal | all | mini | max-size
    max_size: int = None
    truncated: bool = False
    dropped: list = field(default_factory=list)      # [Dropped]

    @property
    def bytes_dropped(self):
        return sum(d.bytes for d in self.dropped)


def _merge(ranges):
    out = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _page_out(lo, hi, page):
    return lo // page * page, (hi + page - 1) // page * page


class _VmaIndex:
    def __init__(self, vmas):
        self.vmas = sorted(vmas, key=lambda v: v.start)
        self.starts = [v.start for v in self.vmas]

    def find(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None


def _reader(pid):
    return lambda addr, length: read_memory(pid, addr, length)


def _read_cstring(read, addr, limit=4096):
    data = read(addr, limit)
    if not data:                              # may cross into an unmapped page
        data = read(addr, 4096 - addr % 4096)
    n = data.find(b"\0")
    return data if n < 0 else data[:n + 1]


def rtld_ranges(read, auxv, word_size, index):
    """What gdb and elfutils read to list shared libraries, from the live target.

    AT_PHDR -> PT_DYNAMIC -> DT_DEBUG -> r_debug -> the link_map chain (with the
    l_name strings), every namespace (r_debug_extended.r_next); and ld.so's data
    mapping, which holds r_debug and the thread lists libthread_db walks.
    """
    w = struct.Struct("<Q" if word_size == 8 else "<I")
    aux = {}
    for off in range(0, len(auxv) - 2 * word_size + 1, 2 * word_size):
        t, v = w.unpack_from(auxv, off)[0], w.unpack_from(auxv, off + word_size)[0]
        if t == 0:
            break
        aux.setdefault(t, v)
    phdr, phnum = aux.get(AT_PHDR), aux.get(AT_PHNUM)
    if not phdr or not phnum:
        return []
    if word_size == 8:
        ph = struct.Struct("<IIQQQQQQ")          # type flags offset vaddr paddr filesz memsz align
        field_of = lambda t: (t[0], t[3], t[6])            # noqa: E731
    else:
        ph = struct.Struct("<IIIIIIII")          # type offset vaddr paddr filesz memsz flags align
        field_of = lambda t: (t[0], t[2], t[5])            # noqa: E731
    raw = read(phdr, phnum * ph.size)
    entries = [field_of(ph.unpack_from(raw, i * ph.size)) for i in range(len(raw) // ph.size)]
    bias = 0
    for typ, vaddr, _ in entries:
        if typ == PT_PHDR:
            bias = phdr - vaddr
    ranges = [(phdr, phdr + phnum * ph.size)]
    r_debug = 0
    for typ, vaddr, memsz in entries:
        if typ != PT_DYNAMIC:
            continue
        dyn = bias + vaddr
        ranges.append((dyn, dyn + memsz))
        data = read(dyn, memsz)
        for off in range(0, len(data) - 2 * word_size + 1, 2 * word_size):
            tag, val = w.unpack_from(data, off)[0], w.unpack_from(data, off + word_size)[0]
            if tag == DT_NULL:
                break
            if tag == DT_DEBUG:
                r_debug = val
    seen = set()
    namespaces = 0
    while r_debug and r_debug not in seen and namespaces < 256:
        seen.add(r_debug)
        namespaces += 1
        ranges.append((r_debug, r_debug + 6 * word_size))
        v = index.find(r_debug)
        if v is not None and v.size <= RTLD_DATA_CAP:
            ranges.append((v.start, v.end))
        head = read(r_debug, 6 * word_size)
        if len(head) < 6 * word_size:
            break
        lm = w.unpack_from(head, word_size)[0]
        version = struct.unpack_from("<i", head, 0)[0]
        nodes = 0
        while lm and lm not in seen and nodes < MAX_LINK_MAPS:
            seen.add(lm)
            nodes += 1
            node = read(lm, 5 * word_size)      # l_addr l_name l_ld l_next l_prev
            if len(node) < 5 * word_size:
                break
            ranges.append((lm, lm + 5 * word_size))
            name = w.unpack_from(node, word_size)[0]
            if name:
                ranges.append((name, name + len(_read_cstring(read, name))))
            lm = w.unpack_from(node, 3 * word_size)[0]
        r_debug = w.unpack_from(head, 5 * word_size)[0] if version >= 2 else 0
    return ranges


def essential_ranges(pid, arch, auxv, threads, plans, page_size, read=None):
    """Page-aligned address ranges a backtrace of every thread needs.

    Each thread's stack from just below its stack pointer to the top of that
    mapping (at most STACK_CAP), its thread control block (x86_64: the page
    around fs_base, where glibc's struct pthread lives), the dynamic linker's
    state (rtld_ranges), the kernel's special mappings ([vdso] has the CFI for
    signal frames) and the first page of every dumped file mapping at offset 0
    (ELF headers: build-ids, and the phdrs gdb starts from).
    """
    from .elf.structs import NT_PRSTATUS
    read = read or _reader(pid)
    index = _VmaIndex([p.vma for p in plans if p.first_piece])
    ranges = []
    for t in threads:
        regs = arch.regs(t.regset(NT_PRSTATUS))
        sp = regs[arch.sp_reg]
        v = index.find(max(0, sp - RED_ZONE)) or index.find(sp)
        if v is not None:
            lo = max(v.start, sp - RED_ZONE)
            ranges.append((lo, min(v.end, lo + STACK_CAP)))
        tp = regs.get("fs_base")
        if tp:
            ranges.append((tp - page_size, tp + page_size))
    ranges += rtld_ranges(read, auxv, arch.word_size, index)
    for p in plans:
        if not p.filesz:
            continue
        if p.vma.special:
            ranges.append((p.start, p.end))
        elif p.has_file and p.vma.offset == 0 and p.first_piece:
            ranges.append((p.start, p.start + page_size))
        if p.has_file and p.why == "written private" and p.filesz <= RTLD_DATA_CAP:
            # .data/.got/RELRO of the executable and libraries: libthread_db
            # reads libc's (__nptl_rtld_global, the thread lists through it)
            ranges.append((p.start, p.start + p.filesz))
    return _merge(_page_out(lo, hi, page_size) for lo, hi in ranges)


def stack_vmas(arch, threads, plans):
    """Start addresses of the VMAs holding a thread's stack pointer."""
    from .elf.structs import NT_PRSTATUS
    index = _VmaIndex([p.vma for p in plans if p.first_piece])
    out = set()
    for t in threads:
        v = index.find(arch.regs(t.regset(NT_PRSTATUS))[arch.sp_reg])
        if v is not None:
            out.add(v.start)
    return out


def _kept_parts(plan, essential):
    """The parts of plan's dumped bytes inside the essential ranges."""
    lo, hi = plan.start, plan.start + plan.filesz
    i = bisect.bisect_right(essential, (lo, float("inf"))) - 1
    out = []
    for a, b in essential[max(i, 0):]:
        if a >= hi:
            break
        a, b = max(a, lo), min(b, hi)
        if a < b:
            out.append((a, b))
    return out


def _split(plan, keep, why):
    """plan as pieces: each kept range starts a piece and is its p_filesz."""
    if keep == [(plan.start, plan.start + plan.filesz)]:
        return [plan]
    replace = dataclasses.replace
    pieces = []
    if not keep or keep[0][0] > plan.start:
        first_end = keep[0][0] if keep else plan.end
        pieces.append(replace(plan, start=plan.start, end=first_end, filesz=0, fill=NONE,
                              why=why))
    for k, (a, b) in enumerate(keep):
        end = keep[k + 1][0] if k + 1 < len(keep) else plan.end
        pieces.append(replace(plan, start=a, end=end, filesz=b - a))
    return pieces


def select_mini(plans, essential):
    """Keep only the essential bytes (--mini).  Returns (plans, Selection)."""
    sel = Selection(mode="mini")
    out = []
    for p in plans:
        if not p.filesz:
            out.append(p)
            continue
        keep = _kept_parts(p, essential)
        pieces = _split(p, keep, "mini")
        kept = sum(b - a for a, b in keep)
        if kept < p.filesz:
            sel.dropped.append(Dropped(p.vma.start, p.vma.end, p.filesz - kept, "mini"))
        out.extend(pieces)
    return out, sel


def select_max_size(plans, essential, budget, stacks=()):
    """Drop dumped bytes until their sum is at most budget (--max-size).

    The essential ranges stay; of the rest, whole VMAs are dropped largest
    first (anonymous memory, including the written pages of private file
    mappings), and the parts of thread stacks below the stack pointer only
    after everything else; then the smallest dropped ones that fit in the room
    left are given back.  Small regions therefore stay longest.
    Returns (plans, Selection, minimum) where minimum is the sum the essential
    bytes alone need; the caller decides what to do when it exceeds budget.
    """
    sel = Selection(mode="max-size")
    total = sum(p.filesz for p in plans)
    cands = []
    minimum = 0
    for i, p in enumerate(plans):
        if not p.filesz:
            continue
        keep = _kept_parts(p, essential)
        kept = sum(b - a for a, b in keep)
        minimum += kept
        if kept < p.filesz:
            rank = 1 if p.vma.start in stacks else 0
            cands.append((rank, -(p.filesz - kept), i, keep))
    cands.sort()
    dropped = []
    for rank, neg_saving, i, keep in cands:
        if total <= budget:
            break
        dropped.append((-neg_saving, i, keep))
        total += neg_saving
    # dropping the big ones may have made room: give back the smallest that fit
    for saving, i, keep in sorted(dropped):
        if total + saving <= budget:
            total += saving
            dropped.remove((saving, i, keep))
    replaced = {}
    for saving, i, keep in dropped:
        p = plans[i]
        replaced[i] = _split(p, keep, "max-size")
        sel.dropped.append(Dropped(p.vma.start, p.vma.end, saving, "max-size"))
    sel.truncated = bool(sel.dropped)
    sel.dropped.sort(key=lambda d: d.start)
    out = []
    for i, p in enumerate(plans):
        out.extend(replaced.get(i, [p]))
    return out, sel, minimum


@dataclass
class CopyResult:
    bytes_read: int
    bytes_from_file: int
    bytes_written: int
    bytes_absent: int
    bytes_zero: int
    bytes_unreadable: int
    unreadable: list            # [(addr, len, errno)]
    unreadable_truncated: int   # ranges not listed
    readv_calls: int
    mem_reads: int
    scan_calls: int
    read_seconds: float = 0.0   # the C loop reading the target and backing files
    write_seconds: float = 0.0  # its zero scan and writes (on the writer thread, overlapped)
    scan_seconds: float = 0.0   # asking pagemap which pages are resident
    wait_seconds: float = 0.0   # the reader waiting for the writer (write-bound)
    copy_seconds: float = 0.0   # the whole sc_copy call


class Copier:
    """One sc_copy run; ``stats`` is shared with the C loop for progress and cancel.

    The C loop packs resident runs into batches (up to IOV_MAX runs, one
    process_vm_readv each) that go round a ring of ``nbufs`` buffers to the
    writer thread.  Batches are BATCH bytes (less if bufsize // nbufs is
    smaller): small enough that what the reader just copied is still in cache
    when the writer copies it on (1 GiB random, same run, quiet machine: the
    copy took 0.272 s with 256 KiB batches, 0.283 s with 1 MiB ones; 4 MiB ones
    cost the writer 2-5x as long).
    """

    BAD_CAP = 4096
    NBUFS = 4
    BATCH = 256 << 10

    def __init__(self, pid, out_fd, bufsize=4 << 20, writer_thread=True, sequential=False,
                 stream_pos=0, use_readv=True, nbufs=None):
        """bufsize: the most buffer memory to use, in all (nbufs batches).

        sequential: out_fd is a stream (e.g. a pipe to a compressor); every byte is
        written in order, holes as zeros, starting at file offset stream_pos.

        use_readv=False reads everything through /proc/PID/mem: for a forked
        live image, every page of which is copy-on-write shared with the
        target (see Vma.cow_shared)."""
        lib = _native.require()
        self.ffi = _native.ffi
        self.lib = lib
        self.pid = pid
        self.stats = self.ffi.new("struct sc_copy_stats *")
        self.ctx = self.ffi.new("struct sc_copy_ctx *")
        self.ctx.pid = pid
        self.ctx.out_fd = out_fd
        nbufs = self.NBUFS if nbufs is None else max(1, nbufs)
        self.ctx.bufsize = max(4096, min(self.BATCH, bufsize // nbufs))
        self.ctx.nbufs = nbufs
        self.ctx.readv_ok = 1 if use_readv else 0
        self.ctx.writer_thread = 1 if writer_thread else 0
        self.ctx.sequential = 1 if sequential else 0
        self.ctx.stream_pos = stream_pos
        self._fds = []
        self.ctx.mem_fd = self._open(f"/proc/{pid}/mem")
        self.ctx.pagemap_fd = self._open(f"/proc/{pid}/pagemap")
        self.ctx.scan_mode = 2 if self.ctx.pagemap_fd >= 0 else 0

    def _open(self, path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1
        self._fds.append(fd)
        return fd

    def close(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def cancel(self):
        self.stats.cancel = 1

    @property
    def stream_pos(self):
        """Sequential mode: the file offset the stream has reached."""
        return int(self.ctx.stream_pos)

    @property
    def bytes_done(self):
        return int(self.stats.bytes_done)

    def run(self, plans, offsets):
        """Copy every READ plan's bytes to its file offset.  Raises OSError on write errors."""
        ffi = self.ffi
        todo = [(p, off) for p, off in zip(plans, offsets)
                if p.fill in (READ, PRELOADED) and p.filesz]
        segs = ffi.new("struct sc_seg[]", max(1, len(todo)))
        for i, (p, off) in enumerate(todo):
            s = segs[i]
            s.vaddr = p.start
            s.len = p.filesz
            s.file_off = off
            s.backing_fd = p.backing_fd
            base = p.vma.offset if p.backing_base is None else p.backing_base
            s.backing_off = base + (p.start - p.vma.start)
            fl = 0
            if p.fill == PRELOADED:
                fl |= self.lib.SC_SEG_BACKING_ONLY
            elif not p.vma.special:
                fl |= self.lib.SC_SEG_RESIDENT_ONLY
            if not p.vma.readable or p.vma.cow_shared:
                fl |= self.lib.SC_SEG_FORCE_MEM
            if p.fault_absent:
                fl |= self.lib.SC_SEG_FAULT_ABSENT
            s.flags = fl
        bad = ffi.new("struct sc_bad[]", self.BAD_CAP)
        t0 = time.monotonic()
        r = self.lib.sc_copy(self.ctx, segs, len(todo), self.stats, bad, self.BAD_CAP)
        elapsed = time.monotonic() - t0
        st = self.stats
        if r == -errno.ECANCELED:
            from .errors import SnapshotCancelled
            raise SnapshotCancelled()
        if r == -errno.ESRCH:
            from .errors import TargetExited
            raise TargetExited(self.pid)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return CopyResult(
            bytes_read=int(st.bytes_read), bytes_from_file=int(st.bytes_from_file),
            bytes_written=int(st.bytes_written), bytes_absent=int(st.bytes_absent),
            bytes_zero=int(st.bytes_zero), bytes_unreadable=int(st.bytes_unreadable),
            unreadable=[(int(bad[i].addr), int(bad[i].len), int(bad[i].err))
                        for i in range(int(st.n_bad))],
            unreadable_truncated=int(st.n_bad_total - st.n_bad),
            readv_calls=int(st.readv_calls), mem_reads=int(st.mem_reads),
            scan_calls=int(st.scan_calls), read_seconds=st.read_ns / 1e9,
            write_seconds=st.write_ns / 1e9, scan_seconds=st.scan_ns / 1e9,
            wait_seconds=st.wait_ns / 1e9, copy_seconds=elapsed)
