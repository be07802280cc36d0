"""Python threads, frames, the GIL and the locks frames hold, read from memory.

    walk(mem, runtime, valid=None) -> {
        "version": "3.11", "runtime": addr,
        "gil": {"address", "size", "locked", "holder"} | None,
        "threads": [{"tid", "ident", "holds_gil",
                     "frames": [{"name", "file", "line"}]        innermost first
                     "locks": [{"frame", "object", "type", "lock", "owner", "count"}]}],
        "errors": [text]}

The walk follows what CPython's own debuggers follow (and pystack reads):
_PyRuntime -> interpreters -> thread states -> each thread's frame chain ->
code objects (names, file, line table).  ``mem`` (memory.Memory) remembers
every range read, which is what a --mini core must keep for pystack too.

Locks: the words of each frame's locals and value stack that point at a
``_thread.lock`` / ``_thread.RLock`` object, or at a builtin method bound to
one (``with lock:`` keeps the bound ``__exit__`` on the value stack for the
whole block; a call ``lock.acquire()`` keeps ``lock`` there while it runs).
Each is recorded with the address of its PyThread lock (the futex a waiter
sleeps on: CPython 3.11-3.13 locks are POSIX semaphores) and, for an RLock,
its owner (the owning thread's ident, pthread_self()).  Words above a
frame's stack top may be stale: ``why`` trusts a lock only where a waiter's
futex address matches it, and names the other threads holding a reference
as candidates, never as owners.

Supported: CPython 3.11, 3.12 and 3.13 on x86_64 (arch/cpython.py).
"""

from ..arch.cpython import layout_for
from .objects import addr2line, keep_type, read_code, type_name

MAX_INTERPRETERS = 64
MAX_THREADS = 4096
MAX_FRAMES = 1024
LOCK_TYPES = {"_thread.RLock": "RLock", "_thread.lock": "Lock"}
BOUND_METHOD = "builtin_function_or_method"
DEBUG_COOKIE = b"xdebugpy"  # 3.13+: _Py_DebugOffsets at the start of _PyRuntime


def _version_text(v):
    return f"{v[0]}.{v[1]}"


def _checked_version(mem, runtime):
    """The version _PyRuntime says it is (3.13+ carry a cookie), else the file's."""
    head = mem.read(runtime.addr, 16, keep=False)
    if head[:8] == DEBUG_COOKIE:
        hexversion = int.from_bytes(head[8:16], "little")
        return ((hexversion >> 24) & 0xFF, (hexversion >> 16) & 0xFF)
    return runtime.version


def walk(mem, runtime, valid=None):
    """What the interpreter at runtime (locate.Runtime) holds; see the module docstring."""
    version = _checked_version(mem, runtime)
    out = {
        "version": _version_text(version),
        "runtime": runtime.addr,
        "gil": None,
        "threads": [],
        "errors": [],
    }
    lay = layout_for(version)
    if lay is None:
        out["errors"].append(f"CPython {_version_text(version)} is not supported (3.11-3.13 are)")
        return out
    walker = _Walker(mem, lay, valid)
    try:
        walker.run(runtime.addr, out)
    except Exception as exc:  # memory that changed under us, or not CPython's layout
        out["errors"].append(f"{type(exc).__name__}: {exc}")
    return out


class _Walker:
    def __init__(self, mem, lay, valid):
        self.mem = mem
        self.lay = lay
        self.valid = valid
        self.types = {}  # type address -> tp_name
        self.codes = {}  # code address -> Code or None
        self.lock_info = {}  # object address -> lock record or None

    def ptr(self, addr):
        v = self.mem.word(addr)
        return v if v and v % 8 == 0 else 0

    def run(self, runtime, out):
        mem, lay = self.mem, self.lay
        mem.keep(runtime, runtime + lay.runtime_size)
        interp = self.ptr(runtime + lay.runtime_interpreters_head)
        seen = set()
        while interp and interp not in seen and len(seen) < MAX_INTERPRETERS:
            seen.add(interp)
            mem.keep(interp, interp + lay.interp_size)
            for off in (lay.interp_builtins, lay.interp_sysdict, lay.interp_modules):
                d = self.ptr(interp + off)
                if d:  # pystack checks these are dicts before it trusts the interpreter
                    mem.read(d, 64)
                    type_name(mem, lay, d, self.types)
                    keep_type(mem, lay, d)
            gil = self._gil(runtime, interp)
            if gil is not None and out["gil"] is None:
                out["gil"] = gil
            tstate = self.ptr(interp + lay.interp_threads_head)
            threads = set()
            while tstate and tstate not in threads and len(threads) < MAX_THREADS:
                threads.add(tstate)
                out["threads"].append(self._thread(tstate, gil))
                tstate = self.ptr(tstate + lay.tstate_next)
            interp = self.ptr(interp + lay.interp_next)
        if out["gil"] is not None:
            out["gil"].pop("holder_tstate", None)

    def _gil(self, runtime, interp):
        lay, mem = self.lay, self.mem
        if lay.runtime_gil >= 0:
            gil = runtime + lay.runtime_gil
        else:
            gil = self.ptr(interp + lay.interp_gil_ptr)
        if not gil:
            return None
        mem.read(gil, lay.gil_size)
        locked = mem.i32(gil + lay.gil_locked)
        holder = self.ptr(gil + lay.gil_last_holder)
        tid = None
        if locked and holder:
            tid = mem.word(holder + lay.tstate_native_thread_id)
        return {
            "address": gil,
            "size": lay.gil_size,
            "locked": bool(locked),
            "holder": tid if locked else None,
            "holder_tstate": holder if locked else 0,
        }

    def _thread(self, tstate, gil):
        lay, mem = self.lay, self.mem
        mem.keep(tstate, tstate + lay.tstate_size)
        if lay.tstate_current_frame >= 0:
            frame = self.ptr(tstate + lay.tstate_current_frame)
        else:
            cframe = self.ptr(tstate + lay.tstate_cframe)
            frame = self.ptr(cframe + lay.cframe_current_frame) if cframe else 0
        frames, locks = self._frames(frame)
        holds = bool(gil and gil["locked"] and gil.get("holder_tstate") == tstate)
        return {
            "tid": mem.word(tstate + lay.tstate_native_thread_id),
            "ident": mem.word(tstate + lay.tstate_thread_id),
            "holds_gil": holds,
            "frames": frames,
            "locks": locks,
        }

    def _frames(self, frame):
        lay, mem = self.lay, self.mem
        frames, locks, seen = [], [], set()
        while frame and frame not in seen and len(seen) < MAX_FRAMES:
            seen.add(frame)
            head = mem.read(frame, lay.frame_size + 8)
            if len(head) < lay.frame_size:
                break
            code_addr = int.from_bytes(head[lay.frame_code : lay.frame_code + 8], "little")
            owner = head[lay.frame_owner]
            previous = int.from_bytes(head[lay.frame_previous : lay.frame_previous + 8], "little")
            if lay.frame_owner_cstack < 0 or owner != lay.frame_owner_cstack:
                code = self._code(code_addr)
                if code is None:
                    frames.append({"name": "???", "file": "???", "line": None})
                else:
                    instr = int.from_bytes(head[lay.frame_instr : lay.frame_instr + 8], "little")
                    units = (instr - (code_addr + lay.code_adaptive)) // 2
                    frames.append(
                        {
                            "name": code.name,
                            "file": code.filename,
                            "line": addr2line(code.linetable, code.firstlineno, 2 * units),
                        }
                    )
                    slots = mem.read(frame + lay.frame_size, 8 * code.nslots)
                    locks += self._locks(len(frames) - 1, slots, head, code.nslots)
            frame = previous if previous % 8 == 0 else 0
        return frames, _unique(locks)

    def _code(self, addr):
        if addr not in self.codes:
            self.codes[addr] = read_code(self.mem, self.lay, addr, self.types)
        return self.codes[addr]

    def _locks(self, index, slots, head, nslots):
        """Lock records for the words of one frame that reference a lock."""
        at = self.lay.frame_stacktop
        stacktop = int.from_bytes(head[at : at + 4], "little", signed=True)
        count = stacktop if 0 <= stacktop <= nslots else nslots
        out = []
        for i in range(0, min(len(slots), 8 * count), 8):
            obj = int.from_bytes(slots[i : i + 8], "little")
            rec = self._lock_of(obj)
            if rec is not None:
                out.append(dict(rec, frame=index))
        return out

    def _lock_of(self, obj, depth=0):
        if obj < 0x10000 or obj % 8 or (self.valid is not None and not self.valid(obj)):
            return None
        if obj in self.lock_info:
            return self.lock_info[obj]
        lay, mem = self.lay, self.mem
        self.lock_info[obj] = None
        name = type_name(mem, lay, obj, self.types)
        rec = None
        if name in LOCK_TYPES:
            kind = LOCK_TYPES[name]
            mem.read(obj, lay.rlock_size if kind == "RLock" else lay.lock_size)
            rec = {
                "object": obj,
                "type": kind,
                "lock": mem.word(obj + lay.lock_lock),
                "owner": mem.word(obj + lay.rlock_owner) if kind == "RLock" else None,
                "count": mem.word(obj + lay.rlock_count) if kind == "RLock" else None,
            }
        elif name == BOUND_METHOD and depth == 0:
            rec = self._lock_of(self.ptr(obj + lay.cfunc_self), depth=1)
        self.lock_info[obj] = rec
        return rec


def _unique(locks):
    out, seen = [], set()
    for rec in locks:
        key = (rec["object"], rec["frame"])
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out
