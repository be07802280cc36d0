"""Reading a core back: what ``snapcore info`` reports (it prints; this does not).

Works on any ELF core of a Linux process: snapcore's, the kernel's, gcore's;
plain or zstandard-compressed (read as a stream, never decompressed to disk).
pyelftools parses the ELF header, the program headers and the note records;
the note payloads are decoded here from their kernel layouts.

``inspect_core(path)`` returns a dict with the stable schema below (also in
docs/formats.md).  Addresses and sizes are integers; absent facts are null.

    schema      "snapcore-info/1"
    core        {path, compressed ("zstd"|null), file_size, core_size, arch,
                 segments, producer ("snapcore"|"gcore"|"kernel")}
    process     {pid, ppid, pgrp, sid, uid, gid, comm, psargs, cmdline (list|null),
                 executable, state, signal, signal_name}
    threads     [{tid, name, state, pc, sp, symbol, signal, signal_name, current, kernel}]
                symbol: "name+0xoff" when the mapped ELF file (or the ELF image in
                the core, e.g. [vdso]) is readable and names the pc, else null
                kernel: the kernel's view of the thread (read/threadstate.py):
                {state, wchan, syscall: {nr, name, args, sp, pc} | null, stack,
                sigblk, sigpnd, tracer, voluntary_ctxt_switches,
                nonvoluntary_ctxt_switches, utime, stime, cpu_ns, source};
                a core without snapcore's note: state "?" and the system call
                from the registers
    memory      {mapped, dumped, mappings}
    mappings    [{start, end, size, dumped, perms, file, offset}]
                one per PT_LOAD; file and offset from NT_FILE
    modules     [{start, file, build_id, build_id_source ("core"|"file"|null),
                  file_build_id, matches, provided_by}]  ELF images: executable,
                libraries, [vdso]; provided_by: "bundle" (a bundle's sysroot holds
                the file), "disk" (the file at that path here, same build-id),
                "core" (the whole image is in the core: [vdso]) or null
    debuginfod  DEBUGINFOD_URLS when it is set (gdb may fetch debug info by build-id)
    snapcore    the SNAPCORE note's record (see snapcore/metadata.py) or null
    warnings    [text]
"""

import bisect
import io
import os
import signal as _signal

from elftools.elf.elffile import ELFFile

from ..elf.structs import (
    AT_ENTRY,
    AT_EXECFN,
    AT_PHDR,
    AT_SYSINFO_EHDR,
    ELF_BY_CLASS,
    ELFMAG,
    NT_GNU_BUILD_ID,
    PT_NOTE,
    iter_notes,
)
from .core import CoreReader
from .threadstate import kernel_of

SCHEMA = "snapcore-info/1"


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
    if len(page) < 64 or page[:4] != ELFMAG or page[4] not in ELF_BY_CLASS:
        return None
    elf = ELF_BY_CLASS[page[4]]
    ehdr = elf.unpack_ehdr(page)
    if ehdr["e_phentsize"] != elf.phdr.size:
        return None
    for i in range(ehdr["e_phnum"]):
        off = ehdr["e_phoff"] + i * elf.phdr.size
        if off + elf.phdr.size > len(page):
            break
        ph = elf.unpack_phdr(page, off)
        if ph.p_type != PT_NOTE:
            continue
        for name, ntype, desc in iter_notes(page[ph.p_offset : ph.p_offset + ph.p_filesz]):
            if ntype == NT_GNU_BUILD_ID and name == "GNU" and desc:
                return bytes(desc).hex()
    return None


class _Symbols:
    """Function symbols of one ELF image, and file offset -> address."""

    def __init__(self, elf, debug_elf=None):
        self.loads = [
            (s["p_offset"], s["p_filesz"], s["p_vaddr"])
            for s in elf.iter_segments()
            if s["p_type"] == "PT_LOAD"
        ]
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


def inspect_core(path, symbols=True, sysroot=None):
    """The report (see the module docstring).  sysroot: where a bundle's files
    are (they are looked for there first).  Raises CoreFormatError, OSError,
    MissingDependency."""
    with CoreReader(path) as core:
        return _report(core, symbols, sysroot)


def _places(name, sysroot):
    """(path, provider) to look for a mapped file at: the bundle's, then this machine's."""
    if sysroot is not None and name.startswith("/"):
        yield sysroot + name.removesuffix(" (deleted)"), "bundle"
    yield name, "disk"


def _open_image(path, opened):
    """(pyelftools ELF, build-id or None) of the ELF file at path, or (None, None)."""
    try:
        fh = open(path, "rb")
    except OSError:
        return None, None
    opened.append(fh)
    try:
        if fh.read(4) != ELFMAG:
            return None, None
        fh.seek(0)
        elf = ELFFile(fh)
        bid = _elf_build_id(elf)
    except Exception:
        return None, None
    return elf, bid if isinstance(bid, str) else None


def _report(core, want_symbols, sysroot=None):
    warnings = []
    arch = core.arch.name if core.arch is not None else str(core.e_machine)
    snap = core.snapcore_record()
    if snap is False:
        warnings.append("the SNAPCORE note is not valid JSON")
        snap = None

    # -- process
    process = dict(
        pid=None,
        ppid=None,
        pgrp=None,
        sid=None,
        uid=None,
        gid=None,
        comm=None,
        psargs=None,
        cmdline=None,
        executable=None,
        state=None,
        signal=None,
        signal_name=None,
    )
    ps = core.prpsinfo()
    if ps is not None:
        process.update(
            pid=ps["pid"],
            ppid=ps["ppid"],
            pgrp=ps["pgrp"],
            sid=ps["sid"],
            uid=ps["uid"],
            gid=ps["gid"],
            comm=ps["fname"],
            psargs=ps["psargs"],
            state=ps["sname"],
        )
    aux = core.auxv()
    page_size, files = core.files()

    def file_at(addr):
        for start, end, pgoff, name in files:
            if start <= addr < end:
                return start, end, pgoff, name
        return None

    # -- threads
    threads = [
        dict(
            tid=t.tid,
            name=None,
            state=None,
            pc=t.pc,
            sp=t.sp,
            symbol=None,
            signal=t.cursig or None,
            signal_name=_signal_name(t.cursig),
            current=i == 0,
        )
        for i, t in enumerate(core.threads())
    ]
    if threads and threads[0]["signal"]:
        process["signal"] = threads[0]["signal"]
        process["signal_name"] = threads[0]["signal_name"]
    elif core.siginfo_signo():
        sig = core.siginfo_signo()
        process["signal"], process["signal_name"] = sig, _signal_name(sig)
    by_tid = {}
    if snap is not None:
        # the notes carry a thread's id in its own pid namespace (ns_tid)
        listed = [t for t in snap.get("threads") or [] if isinstance(t, dict)]
        by_tid = {t.get("ns_tid", t.get("tid")): t for t in listed}
    for t, ct in zip(threads, core.threads()):
        t["kernel"] = kernel_of(core.arch, ct, by_tid.get(t["tid"], {}).get("kernel"))
    if snap is not None:
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
                process["executable"] = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    # -- mappings
    mappings = []
    for ld in core.loads:
        f = file_at(ld.vaddr)
        mappings.append(
            dict(
                start=ld.vaddr,
                end=ld.vaddr + ld.memsz,
                size=ld.memsz,
                dumped=ld.filesz,
                perms=_perms(ld.flags),
                file=f[3] if f else None,
                offset=(f[2] * page_size + ld.vaddr - f[0]) if f else None,
            )
        )
    end = max((ld.offset + ld.filesz for ld in core.loads), default=0)
    if end > core.source.size:
        warnings.append(
            f"truncated: the segments need {end} bytes, the file holds {core.source.size}; "
            "memory past the end reads as zeros"
        )
    memory = dict(
        mapped=sum(m["size"] for m in mappings),
        dumped=sum(m["dumped"] for m in mappings),
        mappings=len(mappings),
    )

    # -- modules: every ELF image start (NT_FILE at offset 0, and [vdso])
    modules = []
    images = {}  # start -> (end, pyelftools ELF or None, symbols cache key)
    starts = [(s, name) for s, e, pg, name in files if pg == 0]
    vdso = aux.get(AT_SYSINFO_EHDR)
    if vdso and not any(s == vdso for s, _ in starts):
        starts.append((vdso, "[vdso]"))
    opened = []
    for start, name in sorted(starts):
        page = core.read_mem(start, page_size)
        in_core = build_id_from_image(page) if page[:4] == ELFMAG else None
        on_disk, elf, provider = None, None, None
        if name != "[vdso]":
            for where, label in _places(name, sysroot):
                elf, on_disk = _open_image(where, opened)
                if elf is not None:
                    provider = label
                    break
        elif page[:4] == ELFMAG:
            seg = next((x for x in core.loads if x.vaddr == start), None)
            if seg is not None:
                try:
                    elf = ELFFile(io.BytesIO(core.read_mem(start, seg.filesz)))
                    provider = "core"
                except Exception:
                    elf = None
        if in_core is None and on_disk is None and page[:4] != ELFMAG and elf is None:
            continue
        matches = None if in_core is None or on_disk is None else in_core == on_disk
        if matches is False:
            warnings.append(
                f"{name} was replaced since the core was written "
                "(build-ids differ); its symbols are not used"
            )
            elf = None
        modules.append(
            dict(
                start=start,
                file=name,
                build_id=in_core or on_disk,
                build_id_source="core" if in_core else ("file" if on_disk else None),
                file_build_id=on_disk,
                matches=matches,
                provided_by=provider if elf is not None else None,
            )
        )
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
    producer = "snapcore" if snap is not None else ("gcore" if core.has_sections else "kernel")
    return {
        "schema": SCHEMA,
        "core": dict(
            path=core.path,
            compressed=compressed,
            file_size=file_size,
            core_size=core.source.size,
            arch=arch,
            segments=len(core.loads),
            producer=producer,
        ),
        "process": process,
        "threads": threads,
        "memory": memory,
        "mappings": mappings,
        "modules": modules,
        "snapcore": snap,
        "warnings": warnings,
        "debuginfod": os.environ.get("DEBUGINFOD_URLS") or None,
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
        syms = _cached_symbols(cache, name, img[1][1], img[1][2], opened)
        if syms is None:
            return None
        vaddr = syms.vaddr_of_offset(pgoff * page_size + pc - start)
        return syms.lookup(vaddr) if vaddr is not None else None
    # an ELF image only in the core, e.g. [vdso]: its load bias is its start
    for start, (name, elf, build_id) in images.items():
        if elf is None or name != "[vdso]":
            continue
        seg = next((x for x in core.loads if x.vaddr == start), None)
        if seg is None or not start <= pc < start + seg.memsz:
            continue
        syms = _cached_symbols(cache, name, elf, build_id, opened)
        if syms is None:
            return None
        first = min((p[2] for p in syms.loads), default=0)
        return syms.lookup(pc - start + first)
    return None


def _cached_symbols(cache, name, elf, build_id, opened):
    """_load_symbols() of one image, once per (name, build-id)."""
    key = (name, build_id)
    if key not in cache:
        cache[key] = _load_symbols(elf, build_id, opened)
    return cache[key]


def _load_symbols(elf, build_id, opened):
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
