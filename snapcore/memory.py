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
import errno
import os
import stat
from dataclasses import dataclass

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
    vma: object
    filesz: int
    fill: str
    why: str
    has_file: bool
    backing_fd: int = -1
    fault_absent: bool = False

    def load(self):
        v = self.vma
        return Load(v.start, v.size, self.filesz, pflags(v.readable, v.writable, v.executable))


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


def _starts_with_elf_magic(pid, vma, fd):
    if fd >= 0:
        try:
            return os.pread(fd, 4, vma.offset) == ELFMAG
        except OSError:
            pass
    try:
        return _native.readv(pid, vma.start, 4) == ELFMAG
    except _native.SyscallError:
        pass
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
            f.seek(vma.start)
            return f.read(4) == ELFMAG
    except OSError:
        return False


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


def plan_dump(pid, vmas, filt, file_ranges, files, page_size):
    """A VmaPlan for every VMA, in address order with the gate VMA last."""
    plans = []
    for v in vmas:
        if file_ranges is not None:
            has_file = (v.start, v.end) in file_ranges
        else:
            has_file = v.inode != 0 or v.name.startswith("/")
        plans.append(plan_vma(pid, v, filt, has_file, files, page_size))
    # /proc lists [vsyscall] last already, as the kernel emits it; keep that.
    return plans


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


class Copier:
    """One sc_copy run; ``stats`` is shared with the C loop for progress and cancel."""

    BAD_CAP = 4096

    def __init__(self, pid, out_fd, bufsize=4 << 20, writer_thread=True, sequential=False,
                 stream_pos=0):
        """sequential: out_fd is a stream (e.g. a pipe to a compressor); every byte is
        written in order, holes as zeros, starting at file offset stream_pos."""
        lib = _native.require()
        self.ffi = _native.ffi
        self.lib = lib
        self.pid = pid
        self.stats = self.ffi.new("struct sc_copy_stats *")
        self.ctx = self.ffi.new("struct sc_copy_ctx *")
        self.ctx.pid = pid
        self.ctx.out_fd = out_fd
        self.ctx.bufsize = bufsize
        self.ctx.readv_ok = 1
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
        todo = [(p, off) for p, off in zip(plans, offsets) if p.fill == READ and p.filesz]
        segs = ffi.new("struct sc_seg[]", max(1, len(todo)))
        for i, (p, off) in enumerate(todo):
            s = segs[i]
            s.vaddr = p.vma.start
            s.len = p.filesz
            s.file_off = off
            s.backing_fd = p.backing_fd
            s.backing_off = p.vma.offset
            fl = 0
            if not p.vma.special:
                fl |= self.lib.SC_SEG_RESIDENT_ONLY
            if not p.vma.readable:
                fl |= self.lib.SC_SEG_FORCE_MEM
            if p.fault_absent:
                fl |= self.lib.SC_SEG_FAULT_ABSENT
            s.flags = fl
        bad = ffi.new("struct sc_bad[]", self.BAD_CAP)
        r = self.lib.sc_copy(self.ctx, segs, len(todo), self.stats, bad, self.BAD_CAP)
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
            scan_calls=int(st.scan_calls))
