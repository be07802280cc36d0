"""CPython objects read from memory: str, bytes, tuples, types, code objects,
and the line number of an instruction.

Layouts come from snapcore/arch/cpython.py; everything here is version-neutral
for 3.11-3.13 (the location table format of PEP 626 as 3.11 rewrote it).
"""

from dataclasses import dataclass

MAX_STR = 4096


def type_name(mem, lay, obj, cache):
    """tp_name of obj's type ("code", "_thread.RLock" ...), or None."""
    tp = mem.word(obj + lay.ob_type, keep=False)
    if not tp or tp % 8:
        return None
    if tp in cache:
        return cache[tp]
    name_ptr = mem.word(tp + lay.type_name, keep=False)
    name = mem.cstring(name_ptr, keep=False) if name_ptr else None
    cache[tp] = name
    return name


def keep_type(mem, lay, obj):
    """Keep obj's type object and its tp_name (pystack checks both); nothing for a
    type pointer that is null or not aligned (not an object's)."""
    tp = mem.word(obj + lay.ob_type)
    if tp and tp % 8 == 0:
        mem.read(tp, 32)
        name_ptr = mem.word(tp + lay.type_name)
        if name_ptr:
            mem.cstring(name_ptr)


def read_str(mem, lay, addr):
    """A compact str object's text, or None (legacy or unreadable strings)."""
    if not addr or addr % 8:
        return None
    head = mem.read(addr, lay.compact_size)
    if len(head) < lay.ascii_size:
        return None
    length = int.from_bytes(head[lay.str_length : lay.str_length + 8], "little", signed=True)
    state = int.from_bytes(head[lay.str_state : lay.str_state + 4], "little")
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not compact or kind not in (1, 2, 4) or not 0 <= length <= MAX_STR:
        return None
    data_at = addr + (lay.ascii_size if ascii_ else lay.compact_size)
    raw = mem.read(data_at, (length + 1) * kind)
    if len(raw) < length * kind:
        return None
    raw = raw[: length * kind]
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    return raw.decode(codec, "replace")


def read_bytes(mem, lay, addr, limit=1 << 20):
    if not addr or addr % 8:
        return None
    size = mem.sword(addr + lay.var_size)
    if size is None or not 0 <= size <= limit:
        return None
    mem.read(addr, lay.bytes_data)
    data = mem.read(addr + lay.bytes_data, size + 1)
    return data[:size] if len(data) >= size else None


def tuple_items(mem, lay, addr, count):
    """The first count item pointers of a tuple (fewer if it is shorter)."""
    if not addr or addr % 8:
        return []
    size = mem.sword(addr + lay.var_size)
    if size is None or size < 0:
        return []
    n = min(count, size, 4096)
    mem.read(addr, lay.tuple_items)
    raw = mem.read(addr + lay.tuple_items, 8 * n)
    return [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw) - 7, 8)]


# ---------------------------------------------------------------------------
# the location table (Objects/locations.md, Objects/codeobject.c)

_NONE, _LONG, _NO_COLUMNS = 15, 14, 13


def _varint(data, pos):
    read = data[pos]
    pos += 1
    val, shift = read & 63, 0
    while read & 64:
        read = data[pos]
        pos += 1
        shift += 6
        val |= (read & 63) << shift
    return val, pos


def _svarint(data, pos):
    val, pos = _varint(data, pos)
    return (-(val >> 1) if val & 1 else val >> 1), pos


def addr2line(table, firstlineno, addrq):
    """PyCode_Addr2Line(): the line of the instruction at byte offset addrq.

    Returns None for an instruction without a line (and for a table that
    does not parse).
    """
    if addrq < 0:
        return firstlineno
    line, pos, start = firstlineno, 0, 0
    try:
        while pos < len(table):
            first = table[pos]
            pos += 1
            code, length = (first >> 3) & 15, (first & 7) + 1
            delta, noline = 0, False
            if code == _NONE:
                noline = True
            elif code in (_LONG, _NO_COLUMNS):
                delta, pos = _svarint(table, pos)
                if code == _LONG:
                    for _ in range(3):
                        _, pos = _varint(table, pos)
            elif code >= 10:
                delta = code - 10
                pos += 2
            else:
                pos += 1
            line += delta
            end = start + 2 * length
            if start <= addrq < end:
                return None if noline else line
            start = end
    except IndexError:
        return None
    return None


@dataclass
class Code:
    name: str
    qualname: str
    filename: str
    firstlineno: int
    linetable: bytes
    nslots: int  # co_nlocalsplus + co_stacksize: the frame's localsplus words


def read_code(mem, lay, addr, names):
    """A Code from a code object (None if addr is not one); keeps what pystack reads:
    the struct, its type, filename, name, line table, the names of its locals."""
    if not addr or addr % 8:
        return None
    if type_name(mem, lay, addr, names) != "code":
        return None
    mem.read(addr, lay.code_size)
    keep_type(mem, lay, addr)
    filename = read_str(mem, lay, mem.word(addr + lay.code_filename))
    name = read_str(mem, lay, mem.word(addr + lay.code_name))
    qualname = read_str(mem, lay, mem.word(addr + lay.code_qualname))
    table = read_bytes(mem, lay, mem.word(addr + lay.code_linetable)) or b""
    first = mem.i32(addr + lay.code_firstlineno) or 0
    nlocalsplus = mem.i32(addr + lay.code_nlocalsplus) or 0
    stacksize = mem.i32(addr + lay.code_stacksize) or 0
    names_tuple = mem.word(addr + lay.code_localsplusnames)
    for item in tuple_items(mem, lay, names_tuple, max(0, min(nlocalsplus, 256))):
        read_str(mem, lay, item)  # pystack reads every local's name
    return Code(
        name=name if name is not None else "???",
        qualname=qualname or name or "???",
        filename=filename if filename is not None else "???",
        firstlineno=first,
        linetable=table,
        nslots=max(0, min(nlocalsplus + stacksize, 1 << 16)),
    )
