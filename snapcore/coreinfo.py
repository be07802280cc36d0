"""Reading a core back: what ``snapcore info`` reports (it prints; this does not).

Works on any ELF core of a Linux process: snapcore's, the kernel's, gcore's;
plain or zstandard-compressed (read as a stream, never decompressed to disk).
pyelftools parses the ELF header, the program headers and the note records;
the note payloads are decoded here from their kernel layouts.

``inspect_core(path)`` returns a dict with the stable schema below (also in
README.md).  Addresses and sizes are integers; absent facts are null.

    schema      "snapcore-info/1"
    core        {path, compressed ("zstd"|null), file_size, core_size, arch,
                 segments, producer ("snapcore"|"gcore"|"kernel")}
    process     {pid, ppid, pgrp, sid, uid, gid, comm, psargs, cmdline (list|null),
                 executable, state, signal, signal_name}
    threads     [{tid, name, state, pc, sp, symbol, signal, signal_name, current}]
                symbol: "name+0xoff" when the mapped ELF file (or the ELF image in
                the core, e.g. [vdso]) is readable and names the pc, else null
    memory      {mapped, dumped, mappings}
    mappings    [{start, end, size, dumped, perms, file, offset}]
                one per PT_LOAD; file and offset from NT_FILE
    modules     [{start, file, build_id, build_id_source ("core"|"file"|null),
                  file_build_id, matches}]  ELF images: executable, libraries, [vdso]
    snapcore    the SNAPCORE note's record (see snapcore/metadata.py) or null
    warnings    [text]
"""
import io
import os
import signal as _signal
import struct

from . import metadata as _metadata
from .errors import MissingDependency, SnapcoreError

SCHEMA = "snapcore-info/1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ELFMAG = b"\x7fELF"

NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
NT_GNU_BUILD_ID = 3
AT_PHDR = 3
AT_ENTRY = 9
AT_SYSINFO_EHDR = 33
AT_EXECFN = 31

# pr_reg offset and register names inside NT_PRSTATUS, per ELF class
_PRSTATUS = {
    64: dict(size=336, pid=32, cursig=12, reg=112, word="<Q", pc=16, sp=19),
    32: dict(size=144, pid=24, cursig=12, reg=72, word="<I", pc=12, sp=15),
}
# elf_prpsinfo: state sname zomb nice flag uid gid pid ppid pgrp sid fname psargs
_PRPSINFO = {64: struct.Struct("<bcbb4xQIIiiii16s80s"),
             32: struct.Struct("<bcbbIHHiiii16s80s")}


class CoreFormatError(SnapcoreError):
    def __init__(self, path, detail):
        super().__init__(f"{path}: {detail}")
        self.path = path


# ---------------------------------------------------------------------------
# random access over a plain or zstd-compressed core


class _PlainSource:
    compressed = None

    def __init__(self, path):
        self.f = open(path, "rb")
        self.size = os.fstat(self.f.fileno()).st_size

    def read_at(self, offset, length):
        return os.pread(self.f.fileno(), length, offset)

    def close(self):
        self.f.close()


class _ZstdSource:
    """Forward-only decompression with a cache of the blocks asked for.

    A read behind the stream position that is not cached restarts the stream;
    the reads ``info`` makes go mostly forward (header, notes, then ELF
    headers in address order), so that is rare.
    """
    compressed = "zstd"
    BLOCK = 1 << 16

    def __init__(self, path, zstandard):
        self.path = path
        self.zstd = zstandard
        self.cache = {}
        self.f = None
        self._restart()
        with open(path, "rb") as f:
            head = f.read(18)
        size = -1
        try:
            size = zstandard.frame_content_size(head)
        except zstandard.ZstdError:
            pass
        if size is None or size < 0:
            size = self._measure()
        self.size = size

    def _restart(self):
        if self.f is not None:
            self.f.close()
        self.f = open(self.path, "rb")
        self.reader = self.zstd.ZstdDecompressor().stream_reader(self.f,
                                                                 read_across_frames=True)
        self.pos = 0

    def _read(self, n):
        out = []
        while n > 0:
            try:
                chunk = self.reader.read(min(n, 1 << 20))
            except self.zstd.ZstdError as exc:
                raise CoreFormatError(self.path, f"corrupt zstandard data ({exc})") from None
            if not chunk:
                break
            out.append(chunk)
            n -= len(chunk)
            self.pos += len(chunk)
        return b"".join(out)

    def _measure(self):
        while self._read(1 << 24):
            pass
        size = self.pos
        self._restart()
        return size

    def _block(self, i):
        data = self.cache.get(i)
        if data is not None:
            return data
        start = i * self.BLOCK
        if start < self.pos:
            self._restart()
        while self.pos < start:
            if not self._read(min(start - self.pos, 1 << 24)):
                return b""
        data = self._read(self.BLOCK)
        self.cache[i] = data
        return data

    def read_at(self, offset, length):
        out = []
        while length > 0:
            i, rel = divmod(offset, self.BLOCK)
            block = self._block(i)
            piece = block[rel:rel + length]
            if not piece:
                break
            out.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(out)

    def close(self):
        self.f.close()


def _zstandard(feature):
    try:
        import zstandard
    except ImportError:
        raise MissingDependency(feature, "zstandard", "zstd") from None
    return zstandard


def open_source(path):
    """A reader for a plain or zstd core (detected by content, not by name)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == ZSTD_MAGIC:
        return _ZstdSource(path, _zstandard("reading a .zst core"))
    return _PlainSource(path)


class _SourceFile(io.RawIOBase):
    """A seekable file object over a source, for pyelftools."""

    def __init__(self, source):
        self.source = source
        self.pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = self.source.size + offset
        return self.pos

    def tell(self):
        return self.pos

    def read(self, n=-1):
        if n is None or n < 0:
            n = max(0, self.source.size - self.pos)
        data = self.source.read_at(self.pos, n)
        self.pos += len(data)
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


# ---------------------------------------------------------------------------
# ELF images: build-ids and symbols


def _elf_build_id(elf):
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        try:
            for n in seg.iter_notes():
                if n["n_type"] == "NT_GNU_BUILD_ID" and n["n_name"] == "GNU":
                    return n["n_desc"]
        except Exception:
            continue
    return None


def build_id_from_image(page):
    """The GNU build-id in an ELF image's first bytes (a dumped ELF-header page)."""
    if len(page) < 64 or page[:4] != ELFMAG:
        return None
    cls = page[4]
    if cls == 2:
        phoff, = struct.unpack_from("<Q", page, 32)
        phentsize, phnum = struct.unpack_from("<HH", page, 54)
        ph = struct.Struct("<IIQQQQQQ")
        pick = lambda t: (t[0], t[2], t[5])      # noqa: E731 type, offset, filesz
    elif cls == 1:
        phoff, = struct.unpack_from("<I", page, 28)
        phentsize, phnum = struct.unpack_from("<HH", page, 42)
        ph = struct.Struct("<IIIIIIII")
        pick = lambda t: (t[0], t[1], t[4])      # noqa: E731
    else:
        return None
    if phentsize != ph.size:
        return None
    for i in range(phnum):
        off = phoff + i * ph.size
        if off + ph.size > len(page):
            break
        typ, noff, nsz = pick(ph.unpack_from(page, off))
        if typ != 4:
            continue
        end = min(len(page), noff + nsz)
        while noff + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", page, noff)
            name_off = noff + 12
            desc_off = name_off + ((namesz + 3) & ~3)
            if (ntype == NT_GNU_BUILD_ID and page[name_off:name_off + namesz] == b"GNU\0"
                    and desc_off + descsz <= len(page)):
                return page[desc_off:desc_off + descsz].hex()
            noff = desc_off + ((descsz + 3) & ~3)
    return None


class _Symbols:
    """Function symbols of one ELF image, and file offset -> address."""

    def __init__(self, elf, debug_elf=None):
        self.loads = [(s["p_offset"], s["p_filesz"], s["p_vaddr"])
                      for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        syms = {}
        for image in (debug_elf, elf):
            if image is None:
                continue
            for name in (".symtab", ".dynsym"):
                sec = image.get_section_by_name(name)
                if sec is None or not hasattr(sec, "iter_symbols"):
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC"):
                        continue
                    if not sym["st_size"] or not sym.name:
                        continue
                    start = sym["st_value"]
                    rank = 0 if sym["st_info"]["bind"] == "STB_GLOBAL" else 1
                    old = syms.get(start)
                    if old is None or (rank, len(sym.name)) < old[2:]:
                        syms[start] = (sym["st_size"], sym.name, rank, len(sym.name))
            if syms:
                break
        self.table = sorted((start, start + v[0], v[1]) for start, v in syms.items())
        self.starts = [t[0] for t in self.table]

    def vaddr_of_offset(self, off):
        for p_off, p_filesz, p_vaddr in self.loads:
            if p_off <= off < p_off + p_filesz:
                return p_vaddr + off - p_off
        return None

    def lookup(self, vaddr):
        import bisect
        i = bisect.bisect_right(self.starts, vaddr) - 1
        while i >= 0:
            start, end, name = self.table[i]
            if start <= vaddr < end:
                return f"{name.split('@')[0]}+{vaddr - start:#x}"
            if end <= vaddr and i > 0 and self.table[i - 1][1] <= vaddr:
                break
            i -= 1
        return None


def _debug_file(build_id):
    if not build_id or len(build_id) < 4:
        return None
    path = f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    return path if os.path.exists(path) else None


# ---------------------------------------------------------------------------
# the report


def _signal_name(sig):
    if not sig:
        return None
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _perms(flags):
    return "".join(c if flags & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))


def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Core:
    def __init__(self, path):
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile
        self.path = path
        self.source = open_source(path)
        try:
            self.elf = ELFFile(_SourceFile(self.source))
        except (ELFError, struct.error) as exc:
            self.source.close()
            raise CoreFormatError(path, f"not an ELF file ({exc})") from None
        except Exception as exc:
            self.source.close()
            raise CoreFormatError(path, f"not an ELF file ({exc})") from None
        if self.elf["e_type"] != "ET_CORE":
            self.source.close()
            raise CoreFormatError(path, f"an ELF file of type {self.elf['e_type']}, "
                                        "not a core")
        self.bits = self.elf.elfclass
        self.word = struct.Struct("<Q" if self.bits == 64 else "<I")
        self.loads = []
        self.notes = []
        for seg in self.elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                self.loads.append((seg["p_vaddr"], seg["p_memsz"], seg["p_filesz"],
                                   seg["p_offset"], seg["p_flags"]))
            elif seg["p_type"] == "PT_NOTE":
                for n in seg.iter_notes():
                    desc = n["n_descdata"]
                    if not isinstance(desc, bytes):
                        desc = bytes(desc)
                    self.notes.append((n["n_name"], n["n_type"], desc))

    def close(self):
        self.source.close()

    def note_type(self, ntype):
        """Map pyelftools' names back to numbers."""
        names = {"NT_PRSTATUS": NT_PRSTATUS, "NT_PRPSINFO": NT_PRPSINFO, "NT_AUXV": NT_AUXV,
                 "NT_SIGINFO": NT_SIGINFO, "NT_FILE": NT_FILE}
        return names.get(ntype, ntype)

    def read_mem(self, addr, length):
        """Bytes dumped at addr (as many as one segment holds), or b""."""
        for vaddr, memsz, filesz, off, _ in self.loads:
            if vaddr <= addr < vaddr + filesz:
                n = min(length, vaddr + filesz - addr)
                return self.source.read_at(off + addr - vaddr, n)
        return b""


def _parse_file_note(desc, word):
    w = word.size
    count, page = word.unpack_from(desc, 0)[0], word.unpack_from(desc, w)[0]
    entries = []
    off = 2 * w
    for _ in range(count):
        start, end, pgoff = (word.unpack_from(desc, off + k * w)[0] for k in range(3))
        entries.append([start, end, pgoff])
        off += 3 * w
    names = desc[off:].split(b"\0")
    for e, name in zip(entries, names):
        e.append(name.decode("utf-8", "surrogateescape"))
    return page, [tuple(e) for e in entries if len(e) == 4]


def inspect_core(path, symbols=True):
    """The report (see the module docstring).  Raises CoreFormatError, OSError,
    MissingDependency."""
    core = _Core(path)
    try:
        return _report(core, symbols)
    finally:
        core.close()


def _report(core, want_symbols):
    warnings = []
    bits = core.bits
    word = core.word
    arch = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "aarch64"}.get(
        core.elf["e_machine"], core.elf["e_machine"])
    prstatus, prpsinfo, auxv, file_note, siginfo, snap = [], None, b"", None, None, None
    for name, ntype, desc in core.notes:
        t = core.note_type(ntype)
        if name == "CORE" and t == NT_PRSTATUS:
            prstatus.append(desc)
        elif name == "CORE" and t == NT_PRPSINFO and prpsinfo is None:
            prpsinfo = desc
        elif name == "CORE" and t == NT_AUXV and not auxv:
            auxv = desc
        elif name == "CORE" and t == NT_FILE and file_note is None:
            file_note = desc
        elif name == "CORE" and t == NT_SIGINFO and siginfo is None:
            siginfo = desc
        elif name == _metadata.SNAPCORE_OWNER and snap is None:
            snap = _metadata.parse_note(desc)
            if snap is None:
                warnings.append("the SNAPCORE note is not valid JSON")

    # -- process
    process = dict(pid=None, ppid=None, pgrp=None, sid=None, uid=None, gid=None, comm=None,
                   psargs=None, cmdline=None, executable=None, state=None, signal=None,
                   signal_name=None)
    ps = _PRPSINFO.get(bits)
    if prpsinfo is not None and ps is not None and len(prpsinfo) >= ps.size:
        (_, sname, _, _, _, uid, gid, pid, ppid, pgrp, sid, fname,
         psargs) = ps.unpack_from(prpsinfo)
        process.update(pid=pid, ppid=ppid, pgrp=pgrp, sid=sid, uid=uid, gid=gid,
                       comm=_cstr(fname), psargs=_cstr(psargs).rstrip(),
                       state=sname.decode("ascii", "replace"))
    aux = {}
    for off in range(0, len(auxv) - 2 * word.size + 1, 2 * word.size):
        a_type = word.unpack_from(auxv, off)[0]
        if a_type == 0:
            break
        aux.setdefault(a_type, word.unpack_from(auxv, off + word.size)[0])
    page_size, files = 4096, []
    if file_note is not None:
        try:
            page_size, files = _parse_file_note(file_note, word)
        except struct.error:
            warnings.append("the NT_FILE note is malformed")

    def file_at(addr):
        for start, end, pgoff, name in files:
            if start <= addr < end:
                return start, end, pgoff, name
        return None

    # -- threads
    layout = _PRSTATUS.get(bits)
    threads = []
    for i, desc in enumerate(prstatus):
        if layout is None or len(desc) < layout["size"]:
            warnings.append(f"NT_PRSTATUS {i} has {len(desc)} bytes; skipped")
            continue
        tid = struct.unpack_from("<i", desc, layout["pid"])[0]
        cursig = struct.unpack_from("<H", desc, layout["cursig"])[0]
        w = struct.calcsize(layout["word"])
        pc = struct.unpack_from(layout["word"], desc, layout["reg"] + layout["pc"] * w)[0]
        sp = struct.unpack_from(layout["word"], desc, layout["reg"] + layout["sp"] * w)[0]
        threads.append(dict(tid=tid, name=None, state=None, pc=pc, sp=sp, symbol=None,
                            signal=cursig or None, signal_name=_signal_name(cursig),
                            current=i == 0))
    if threads and threads[0]["signal"]:
        process["signal"] = threads[0]["signal"]
        process["signal_name"] = threads[0]["signal_name"]
    elif siginfo and len(siginfo) >= 4 and struct.unpack_from("<i", siginfo, 0)[0]:
        sig = struct.unpack_from("<i", siginfo, 0)[0]
        process["signal"], process["signal_name"] = sig, _signal_name(sig)
    if snap is not None:
        by_tid = {t.get("tid"): t for t in snap.get("threads") or [] if isinstance(t, dict)}
        for t in threads:
            info = by_tid.get(t["tid"], {})
            t["name"], t["state"] = info.get("name"), info.get("state")
        process["cmdline"] = snap.get("cmdline")
        process["executable"] = snap.get("exe")
    else:
        for t in threads:
            if t["tid"] == process["pid"]:
                t["name"] = process["comm"]
    if process["executable"] is None:
        hit = file_at(aux.get(AT_PHDR, 0)) or file_at(aux.get(AT_ENTRY, 0))
        if hit is not None:
            process["executable"] = hit[3]
        elif aux.get(AT_EXECFN):
            raw = core.read_mem(aux[AT_EXECFN], 4096)
            if raw:
                process["executable"] = _cstr(raw)

    # -- mappings
    mappings = []
    for vaddr, memsz, filesz, off, flags in core.loads:
        f = file_at(vaddr)
        mappings.append(dict(start=vaddr, end=vaddr + memsz, size=memsz, dumped=filesz,
                             perms=_perms(flags),
                             file=f[3] if f else None,
                             offset=(f[2] * page_size + vaddr - f[0]) if f else None))
    memory = dict(mapped=sum(m["size"] for m in mappings),
                  dumped=sum(m["dumped"] for m in mappings), mappings=len(mappings))

    # -- modules: every ELF image start (NT_FILE at offset 0, and [vdso])
    from elftools.elf.elffile import ELFFile
    modules = []
    images = {}             # start -> (end, pyelftools ELF or None, symbols cache key)
    starts = [(s, name) for s, e, pg, name in files if pg == 0]
    vdso = aux.get(AT_SYSINFO_EHDR)
    if vdso and not any(s == vdso for s, _ in starts):
        starts.append((vdso, "[vdso]"))
    opened = []
    for start, name in sorted(starts):
        page = core.read_mem(start, page_size)
        in_core = build_id_from_image(page) if page[:4] == ELFMAG else None
        on_disk, elf = None, None
        if name != "[vdso]":
            try:
                fh = open(name, "rb")
                opened.append(fh)
                if fh.read(4) == ELFMAG:
                    fh.seek(0)
                    elf = ELFFile(fh)
                    on_disk = _elf_build_id(elf)
                    on_disk = on_disk if isinstance(on_disk, str) else None
            except (OSError, Exception):
                elf = None
        elif page[:4] == ELFMAG:
            seg = next((x for x in core.loads if x[0] == start), None)
            if seg is not None:
                try:
                    elf = ELFFile(io.BytesIO(core.read_mem(start, seg[2])))
                except Exception:
                    elf = None
        if in_core is None and on_disk is None and page[:4] != ELFMAG and elf is None:
            continue
        matches = None if in_core is None or on_disk is None else in_core == on_disk
        if matches is False:
            warnings.append(f"{name} was replaced since the core was written "
                            "(build-ids differ); its symbols are not used")
            elf = None
        modules.append(dict(start=start, file=name, build_id=in_core or on_disk,
                            build_id_source="core" if in_core else ("file" if on_disk
                                                                    else None),
                            file_build_id=on_disk, matches=matches))
        images[start] = (name, elf, in_core or on_disk)

    # -- symbols for the pcs
    if want_symbols:
        cache = {}
        for t in threads:
            t["symbol"] = _symbolize(t["pc"], files, page_size, images, cache, core, opened)
    for fh in opened:
        fh.close()

    compressed = core.source.compressed
    try:
        file_size = os.path.getsize(core.path)
    except OSError:
        file_size = None
    producer = "snapcore" if snap is not None else (
        "gcore" if core.elf.num_sections() > 0 else "kernel")
    return {
        "schema": SCHEMA,
        "core": dict(path=core.path, compressed=compressed, file_size=file_size,
                     core_size=core.source.size, arch=arch, segments=len(core.loads),
                     producer=producer),
        "process": process,
        "threads": threads,
        "memory": memory,
        "mappings": mappings,
        "modules": modules,
        "snapcore": snap,
        "warnings": warnings,
    }


def _symbolize(pc, files, page_size, images, cache, core, opened):
    hit = None
    for start, end, pgoff, name in files:
        if start <= pc < end:
            hit = (start, pgoff, name)
            break
    if hit is not None:
        start, pgoff, name = hit
        # the image this mapping belongs to: the module whose file is name
        img = next(((s, v) for s, v in images.items() if v[0] == name), None)
        if img is None or img[1][1] is None:
            return None
        elf, build_id = img[1][1], img[1][2]
        key = (name, build_id)
        if key not in cache:
            cache[key] = _load_symbols(elf, build_id, opened)
        syms = cache[key]
        if syms is None:
            return None
        vaddr = syms.vaddr_of_offset(pgoff * page_size + pc - start)
        return syms.lookup(vaddr) if vaddr is not None else None
    # an ELF image only in the core, e.g. [vdso]: its load bias is its start
    for start, (name, elf, build_id) in images.items():
        if elf is None or name != "[vdso]":
            continue
        seg = next((x for x in core.loads if x[0] == start), None)
        if seg is None or not start <= pc < start + seg[1]:
            continue
        key = (name, build_id)
        if key not in cache:
            cache[key] = _load_symbols(elf, build_id, opened)
        syms = cache[key]
        if syms is None:
            return None
        first = min((p[2] for p in syms.loads), default=0)
        return syms.lookup(pc - start + first)
    return None


def _load_symbols(elf, build_id, opened):
    from elftools.elf.elffile import ELFFile
    debug = None
    path = _debug_file(build_id)
    if path is not None:
        try:
            fh = open(path, "rb")
            opened.append(fh)
            debug = ELFFile(fh)
        except Exception:
            debug = None
    try:
        return _Symbols(elf, debug)
    except Exception:
        return None
