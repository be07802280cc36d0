"""Native stacks of every thread of a core, by the first unwinder that works.

    native_stacks(core, exe=None) -> (tool, {tid: ["function", ...] innermost first})

    1. elfutils (eu-stack --core): fast, reads CFI and symbol tables
    2. drgn (the Python library, when installed): CFI and DWARF
    3. gdb in batch mode, where installed

Each is asked in turn; the first that names frames wins.  None of them is
required: without any, ``(None, {})`` and `why` falls back to the symbol at
each thread's pc.  SNAPCORE_WHY_UNWINDERS (e.g. "drgn,gdb", or "none")
chooses which are tried, in that order.  A zstandard core is decompressed to a temporary file
first (the unwinders read plain cores only).
"""

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile

from .._optional import zstandard
from ..bundle import debug
from .source import ZSTD_MAGIC

MAX_FRAMES = 64
TIMEOUT = 60

_EU_THREAD = re.compile(r"^TID (\d+):")
_EU_FRAME = re.compile(r"^#\d+\s+0x[0-9a-f]+(?:\s+(\S.*?))?\s*$")
_GDB_THREAD = re.compile(r"^Thread \d+ \(.*?(?:LWP|process) (\d+)")
_GDB_FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(")


def run_tool(argv):
    """A reader's stdout, or None if it cannot be run or takes too long."""
    try:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout


def parse_eu_stack(text):
    stacks, cur = {}, None
    for line in text.splitlines():
        m = _EU_THREAD.match(line)
        if m:
            cur = stacks.setdefault(int(m.group(1)), [])
            continue
        m = _EU_FRAME.match(line)
        if m and cur is not None:
            cur.append(m.group(1) or "??")
    return stacks


def parse_gdb(text):
    stacks, cur = {}, None
    for line in text.splitlines():
        m = _GDB_THREAD.match(line)
        if m:
            cur = stacks.setdefault(int(m.group(1)), [])
            continue
        m = _GDB_FRAME.match(line)
        if m and cur is not None:
            cur.append(m.group(1))
    return stacks


def _eu_stack(core, exe):
    tool = shutil.which("eu-stack")
    if not tool:
        return None
    argv = [tool, "--core", core, "-n", str(MAX_FRAMES)]
    if exe and os.path.exists(exe):
        argv += ["-e", exe]
    out = run_tool(argv)
    return parse_eu_stack(out) if out else None


def _drgn(core, exe):
    try:
        import drgn  # optional dependency
    except ImportError:
        return None
    logging.getLogger("drgn").setLevel(logging.ERROR)
    try:
        prog = drgn.Program()
        prog.set_core_dump(core)
        try:
            prog.load_default_debug_info()
        except drgn.MissingDebugInfoError:
            pass
        stacks = {}
        for thread in prog.threads():
            names = []
            try:
                for frame in thread.stack_trace():
                    try:
                        names.append(frame.name or "??")
                    except Exception:
                        names.append("??")
                    if len(names) >= MAX_FRAMES:
                        break
            except Exception:
                pass
            stacks[thread.tid] = names
        return stacks
    except Exception:
        return None


def _gdb(core, exe, sysroot=None):
    gdb = shutil.which("gdb")
    if not gdb:
        return None
    batch = ["-nx", "-batch", "-ex", "set debuginfod enabled off"]
    batch += ["-ex", f"thread apply all bt {MAX_FRAMES}"]
    if sysroot is not None:  # a bundle's files, as `snapcore debug` opens them
        argv = debug.argv_for("gdb", core, sysroot, exe, extra=batch, program=gdb)
    else:
        argv = [gdb, *batch] + ([exe, core] if exe and os.path.exists(exe) else ["-c", core])
    out = run_tool(argv)
    return parse_gdb(out) if out else None


UNWINDERS = (("eu-stack", _eu_stack), ("drgn", _drgn), ("gdb", _gdb))
UNWINDERS_ENV = "SNAPCORE_WHY_UNWINDERS"


def chosen_unwinders():
    """UNWINDERS, or those SNAPCORE_WHY_UNWINDERS names, in its order."""
    wanted = os.environ.get(UNWINDERS_ENV)
    if wanted is None:
        return UNWINDERS
    table = dict(UNWINDERS)
    names = [n.strip() for n in wanted.split(",") if n.strip() in table]
    return tuple((n, table[n]) for n in names)


@contextlib.contextmanager
def plain_core(path):
    """path itself, or a decompressed temporary copy of a zstandard core."""
    with open(path, "rb") as f:
        compressed = f.read(4) == ZSTD_MAGIC
    if not compressed:
        yield path
        return
    zstd = zstandard("unwinding a .zst core")
    fd, tmp = tempfile.mkstemp(prefix="snapcore-why-", suffix=".core")
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            zstd.ZstdDecompressor().copy_stream(src, dst)
        yield tmp
    finally:
        os.unlink(tmp)


def native_stacks(core, exe=None, unwinders=None, sysroot=None):
    """(tool, {tid: [function names, innermost first]}); (None, {}) without one.

    With a sysroot (a bundle's files), only gdb is asked: it is the one that
    can be told to read the mapped files from there rather than from this
    machine's paths.
    """
    if unwinders is None:
        unwinders = chosen_unwinders()
    if sysroot is not None:
        unwinders = [
            (name, lambda c, e: _gdb(c, e, sysroot)) for name, _ in unwinders if name == "gdb"
        ]
    if not unwinders:
        return None, {}
    try:
        with plain_core(core) as plain:
            for name, unwind in unwinders:
                stacks = unwind(plain, exe)
                if stacks and any(stacks.values()):
                    return name, stacks
    except OSError:
        pass
    return None, {}
