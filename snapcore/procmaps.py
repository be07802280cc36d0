"""The mappings of a process: /proc/PID/maps and smaps, and map_files.

    iter_smaps(chunks)   Vmas parsed block by block as smaps is read
    read_smaps(pid)      every Vma with the smaps fields snapcore uses
    read_maps(pid)       the Vmas of maps alone (cheaper: no page counts)
    map_files_*          the files behind mappings (exact paths, which have one)

Parsers raise ValueError on what they do not understand; the read_* helpers
turn that and errno into snapcore's errors (procfs.parsed's rules).
"""

import os
import re
from typing import NamedTuple

from .errors import NoSuchProcess, ProcFormatError
from .procfs import parsed, translate


class Vma(NamedTuple):
    """One mapping of /proc/PID/maps, with the smaps fields snapcore uses.

    A tuple, not a dataclass: a process can have 65,000 of them, and a
    snapshot's memory must not grow with that (about 150 bytes each).
    """

    start: int
    end: int
    perms: str  # e.g. "rw-p"
    offset: int  # bytes
    dev_major: int
    dev_minor: int
    inode: int
    name: str  # as /proc shows it (newline escaped as \012)
    rss: int = 0  # bytes
    anonymous: int = 0
    swap: int = 0
    shared_rss: int = 0  # Shared_Clean + Shared_Dirty: pages other processes map too
    ksm: int = 0
    vmflags: frozenset = frozenset()

    @property
    def size(self):
        return self.end - self.start

    @property
    def readable(self):
        return self.perms[0] == "r"

    @property
    def writable(self):
        return self.perms[1] == "w"

    @property
    def executable(self):
        return self.perms[2] == "x"

    @property
    def shared(self):
        return "sh" in self.vmflags if self.vmflags else self.perms[3] == "s"

    @property
    def cow_shared(self):
        """Private memory with pages another process maps too (after a fork, KSM).

        process_vm_readv pins pages (FOLL_PIN), and pinning a copy-on-write
        shared anonymous page makes the kernel unshare it: copy it into the
        process read from.  /proc/PID/mem reads such pages without copying.
        """
        return not self.shared and (self.shared_rss > 0 or self.ksm > 0)

    @property
    def special(self):
        """A kernel-installed mapping ([vdso], [vvar], [vsyscall], [uprobes] ...).

        The kernel dumps these whole whatever their flags (always_dump_vma).
        [heap], [stack] and prctl-named anonymous memory ([anon:...]) are not.
        """
        n = self.name
        return (
            n.startswith("[")
            and n.endswith("]")
            and n not in ("[heap]", "[stack]")
            and not n.startswith("[anon:")
            and not n.startswith("[anon_shmem:")
            and not n.startswith("[stack:")
        )


_HEADER = re.compile(
    rb"^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) "
    rb"([0-9a-f]+):([0-9a-f]+) (\d+)(?: +(.*))?$"
)


_perms = {}


def parse_maps_line(line):
    """One maps (or smaps header) line, str or bytes -> the Vma fields as a tuple."""
    raw = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
    m = _HEADER.match(raw)
    if not m:
        raise ValueError(f"unrecognised maps line: {line!r}")
    start, end, perms, off, dmaj, dmin, inode, name = m.groups()
    return (
        int(start, 16),
        int(end, 16),
        _perms.get(perms) or _perms.setdefault(perms, perms.decode()),
        int(off, 16),
        int(dmaj, 16),
        int(dmin, 16),
        int(inode),
        name.decode("utf-8", "surrogateescape") if name else "",
    )


def parse_maps(text):
    """Parse /proc/PID/maps into Vmas (no smaps detail)."""
    return [Vma(*parse_maps_line(line)) for line in text.split("\n") if line]


# smaps fields snapcore reads; each block ends with its VmFlags line
_SMAPS_KB = (b"Rss:", b"Anonymous:", b"Swap:", b"KSM:", b"Shared_Clean:", b"Shared_Dirty:")
_VMFLAGS = b"VmFlags:"
_flag_sets = {}


def _vmflags(line):
    flags = _flag_sets.get(line)
    if flags is None:
        flags = _flag_sets[line] = frozenset(line[len(_VMFLAGS) :].decode().split())
    return flags


def _kb(line, key):
    if not line.endswith(b" kB"):
        raise ValueError(f"unexpected {key.decode()} field in smaps: {line!r}")
    return int(line[len(key) : -3]) * 1024


class _SmapsLayout:
    """Where each wanted field sits in a block: one kernel prints every block the
    same way, so after the first block a block is taken as the next ``length``
    lines, its fields by their index, once the keys at those indexes and the
    closing VmFlags line are checked (any other block is read line by line)."""

    def __init__(self, block):
        self.length = len(block)
        index = {}
        for i, line in enumerate(block):
            for key in _SMAPS_KB:
                if line.startswith(key):
                    index[key] = i
        # (index or None, key, len(key)) in _SMAPS_KB's order
        self.fields = tuple((index.get(key), key, len(key)) for key in _SMAPS_KB)
        self.values = {}  # one int object per value (most mappings share a few)

    def vma_at(self, lines, p):
        """The Vma of the block at lines[p:], or None if it is not laid out so."""
        end = p + self.length
        if end > len(lines):
            return None
        last = lines[end - 1]
        if not last.startswith(_VMFLAGS):
            return None
        kb = []
        for i, key, klen in self.fields:
            if i is None:
                kb.append(0)
                continue
            line = lines[p + i]
            if not line.startswith(key) or not line.endswith(b" kB"):
                return None
            v = int(line[klen:-3]) * 1024
            kb.append(self.values.setdefault(v, v))
        rss, anonymous, swap, ksm, shared_clean, shared_dirty = kb
        return Vma._make(
            (
                *parse_maps_line(lines[p]),
                rss,
                anonymous,
                swap,
                self.values.setdefault(shared_clean + shared_dirty, shared_clean + shared_dirty),
                ksm,
                _vmflags(last),
            )
        )


def _smaps_vma(block):
    fields = {}
    for line in block[1:-1]:
        for key in _SMAPS_KB:
            if line.startswith(key):
                fields[key] = _kb(line, key)
    return _vma(block[0], fields, block[-1])


def _vma(header, fields, vmflags):
    get = fields.get
    return Vma(
        *parse_maps_line(header),
        rss=get(b"Rss:", 0),
        anonymous=get(b"Anonymous:", 0),
        swap=get(b"Swap:", 0),
        shared_rss=get(b"Shared_Clean:", 0) + get(b"Shared_Dirty:", 0),
        ksm=get(b"KSM:", 0),
        vmflags=_vmflags(vmflags),
    )


def iter_smaps(chunks):
    """Vmas from /proc/PID/smaps given as byte chunks, block by block.

    Memory stays that of one chunk: a process with 65,000 mappings has 1.5
    million smaps lines, 45 MB of text, that are never held at once.  Raises
    ValueError on a block it does not understand.
    """
    rest = b""
    layout = None
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        n, p = len(lines), 0
        while p < n:
            if layout is not None:
                vma = layout.vma_at(lines, p)
                if vma is not None:
                    yield vma
                    p += layout.length
                    continue
            # one block, line by line (the first, or one laid out otherwise)
            if _HEADER.match(lines[p]) is None:
                raise ValueError(f"smaps field before any mapping: {lines[p][:80]!r}")
            q = p + 1
            while q < n and not lines[q].startswith(_VMFLAGS):
                if _HEADER.match(lines[q]) is not None:
                    raise ValueError(f"smaps mapping without VmFlags: {lines[p][:80]!r}")
                q += 1
            if q == n:  # the block goes on in the next chunk
                rest = b"\n".join(lines[p:] + [rest])
                break
            block = lines[p : q + 1]
            yield _smaps_vma(block)
            if layout is None:
                layout = _SmapsLayout(block)
            p = q + 1
    if rest.strip():
        raise ValueError(f"smaps ends inside a mapping's block: {rest[:80]!r}")


def parse_smaps(text):
    """Parse the whole text of /proc/PID/smaps into Vmas."""
    return list(iter_smaps([text.encode("utf-8", "surrogateescape")]))


def unescape_maps_name(name):
    """Undo seq_path's escaping in maps (only '\\n' is escaped, as \\012)."""
    return name.replace("\\012", "\n")


def read_smaps(pid):
    """The Vmas of pid, parsed as the file is read (see iter_smaps)."""
    path = f"/proc/{pid}/smaps"
    try:
        with open(path, "rb") as f:
            vmas = list(iter_smaps(iter(lambda: f.read(1 << 20), b"")))
    except OSError as exc:
        raise translate(pid, exc, path) from exc
    except ValueError as exc:
        if not os.path.exists(path):
            raise NoSuchProcess(pid) from None
        raise ProcFormatError(pid, path, str(exc)) from None
    if not vmas and not os.path.exists(path):
        raise NoSuchProcess(pid)
    return vmas


def read_maps(pid):
    return parsed(pid, parse_maps, "maps")


def map_files_link(pid, start, end):
    """The exact path of a file mapping (d_path, '(deleted)' included), or None."""
    try:
        raw = os.readlink(f"/proc/{pid}/map_files/{start:x}-{end:x}".encode())
    except OSError:
        return None
    return raw.decode("utf-8", "surrogateescape")


def map_files_ranges(pid):
    """The (start, end) of every VMA that has a file (vm_file), or None if unreadable."""
    try:
        names = os.listdir(f"/proc/{pid}/map_files")
    except OSError:
        return None
    out = set()
    for n in names:
        a, _, b = n.partition("-")
        out.add((int(a, 16), int(b, 16)))
    return out
