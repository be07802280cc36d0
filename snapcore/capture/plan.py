"""Which memory goes in the core: the kernel's rule, VMA by VMA.

``plan_dump`` applies the kernel's rule (fs/coredump.c vma_dump_size(), in its
order) to every VMA of the target; copy.py hands the result to the C loop,
which reads only resident pages (pagemap), so a snapshot never commits
memory in the target.  Pages a VMA's file holds but the target never touched
are read from the file itself, which is what the kernel's dumper would have
faulted in.

Userspace cannot see vma->anon_vma; a private VMA "has been written" when
smaps shows Anonymous or Swap pages.  The only case this misses (an anon_vma
left behind after every anonymous page was dropped) changes p_filesz, never
the bytes a reader sees.
"""

import os
import stat
import threading

from .. import _native, procmaps
from ..elf.layout import pflags
from ..procmaps import unescape_maps_name
from .tracer import snapcore_thread

# coredump_filter bits (include/linux/sched/coredump.h, MMF_DUMP_* - 2)
ANON_PRIVATE = 1 << 0
ANON_SHARED = 1 << 1
MAPPED_PRIVATE = 1 << 2
MAPPED_SHARED = 1 << 3
ELF_HEADERS = 1 << 4
HUGETLB_PRIVATE = 1 << 5
HUGETLB_SHARED = 1 << 6

ELFMAG = b"\x7fELF"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# how a planned segment is filled
READ = "read"  # copy from the target (resident pages) and backing file
ZEROS = "zeros"  # dumped, but the kernel could not read it either: holes
NONE = "none"  # p_filesz 0
PRELOADED = "preloaded"  # live mode: copied from the frozen target before the fork


class VmaPlan:
    """One PT_LOAD: a VMA, or a piece of one when a selection pass split it.

    The dumped bytes are [start, start + filesz).  A class with __slots__: one
    per mapping, and a process can have 65,000 mappings.
    """

    __slots__ = (
        "vma",
        "filesz",
        "fill",
        "why",
        "has_file",
        "backing_fd",
        "fault_absent",
        "start",
        "end",
        "backing_base",
    )

    def __init__(
        self,
        vma,
        filesz,
        fill,
        why,
        has_file,
        backing_fd=-1,
        fault_absent=False,
        start=None,
        end=None,
        backing_base=None,
    ):
        self.vma = vma
        self.filesz = filesz
        self.fill = fill
        self.why = why
        self.has_file = has_file
        self.backing_fd = backing_fd
        self.fault_absent = fault_absent
        self.start = vma.start if start is None else start  # None: the whole VMA
        self.end = vma.end if end is None else end
        self.backing_base = backing_base  # file offset of vma.start in backing_fd (None:
        #                                   vma.offset)

    def replace(self, **changes):
        """A copy with some fields changed (a piece of this plan)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return VmaPlan(**fields)

    def __eq__(self, other):
        return isinstance(other, VmaPlan) and all(
            getattr(self, n) == getattr(other, n) for n in self.__slots__
        )

    def __repr__(self):
        return "VmaPlan(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"

    @property
    def size(self):
        return self.end - self.start

    @property
    def first_piece(self):
        return self.start == self.vma.start

    # what elf.layout.CoreLayout reads of a segment (elf.layout.Load's fields)
    @property
    def vaddr(self):
        return self.start

    @property
    def memsz(self):
        return self.end - self.start

    @property
    def flags(self):
        v = self.vma
        return pflags(v.readable, v.writable, v.executable)


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
        # Else the name under the target's own root: in a container the host's
        # file of the same name is another file (the inode check below says so).
        link = f"/proc/{self.pid}/map_files/{vma.start:x}-{vma.end:x}"
        candidates = [link]
        name = vma.name
        if name.startswith("/") and not name.endswith(" (deleted)"):
            candidates.append(f"/proc/{self.pid}/root" + unescape_maps_name(name))
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_ino != vma.inode or (os.major(st.st_dev), os.minor(st.st_dev)) != (
                vma.dev_major,
                vma.dev_minor,
            ):
                continue  # replaced since it was mapped
            if not stat.S_ISREG(st.st_mode):
                return -1, st  # never open devices
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
        return plan(
            vma.size if filt & bit else 0,
            READ,
            "shared anonymous" if unlinked else "shared file",
            fd,
        )
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
    sizes = {}
    for v in vmas:
        if file_ranges is not None:
            has_file = (v.start, v.end) in file_ranges
        else:
            has_file = v.inode != 0 or v.name.startswith("/")
        if all_mappings:
            p = plan_vma_all(pid, v, has_file, files, page_size)
        else:
            p = plan_vma(pid, v, filt, has_file, files, page_size)
        # one int object per size, not one per mapping (65,000 one-page mappings
        # would hold 65,000 equal ints of 28 bytes)
        p.filesz = sizes.setdefault(p.filesz, p.filesz)
        plans.append(p)
    # /proc lists [vsyscall] last already, as the kernel emits it; keep that.
    return plans


class EarlyPlan:
    """plan_dump() of a frozen target, made on a second thread while the tracer
    thread reads every thread's registers and /proc state (collect.py).

    Reading those is the kernel's work, in one C call that leaves Python's lock
    free; reading and parsing smaps is the kernel's and Python's: on two cores
    they overlap.  start() is called just before that C call (collect_threads'
    ``before_read``); result() plans on the calling thread if it never was.  The
    planning thread makes no ptrace call (only the tracer thread may).  ``files``
    stays open until close(): the plans hold its fds for the copy.
    """

    def __init__(self, pid, filt, page_size, all_mappings):
        self.pid, self.filt, self.page_size, self.all_mappings = pid, filt, page_size, all_mappings
        self.files = BackingFiles(pid)
        self._box = {}
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="snapcore-plan", daemon=True)
        self._thread.start()

    def _run(self):
        with snapcore_thread():
            try:
                ranges = procmaps.map_files_ranges(self.pid)
                vmas = procmaps.read_smaps(self.pid)
                plans = plan_dump(
                    self.pid,
                    vmas,
                    self.filt,
                    ranges,
                    self.files,
                    self.page_size,
                    all_mappings=self.all_mappings,
                )
                self._box["value"] = ranges, plans
            except BaseException as exc:  # handed to result()
                self._box["error"] = exc

    def result(self):
        """(map_files ranges, plans), or what planning raised."""
        if self._thread is None:
            self._run()
        else:
            self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]

    def close(self):
        if self._thread is not None:
            self._thread.join()
        self.files.close()
