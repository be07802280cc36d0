"""Reading a process's memory a page at a time, remembering what was read.

    mem = Memory(read)          read(addr, n) -> bytes (short or b"" where unreadable):
                                /proc/PID/mem of a frozen process, or a core's segments
    mem.read(addr, n)           the bytes (cached by page); the range is remembered
    mem.word(addr), mem.u32()   little-endian values, None where unreadable
    mem.touched                 [(start, end)] every range read with keep=True

The ranges read while listing Python threads are the ranges a Python stack
reader needs, which is what a --mini core keeps (capture/select.py).
"""

import struct

PAGE = 4096
_Q = struct.Struct("<Q")
_q = struct.Struct("<q")
_I = struct.Struct("<I")
_i = struct.Struct("<i")


class Memory:
    MAX_PAGES = 1 << 16  # cache bound: 256 MiB of pages would be a runaway walk

    def __init__(self, read):
        self._read = read
        self._pages = {}
        self.touched = []
        self.reads = 0

    def _page(self, base):
        data = self._pages.get(base)
        if data is None:
            if len(self._pages) >= self.MAX_PAGES:
                self._pages.clear()
            try:
                data = self._read(base, PAGE) or b""
            except OSError:
                data = b""
            self.reads += 1
            self._pages[base] = data
        return data

    def read(self, addr, n, keep=True):
        """Up to n bytes at addr (fewer where the memory ends or is unreadable)."""
        if addr <= 0 or n <= 0 or addr + n > 1 << 64:
            return b""
        out = []
        pos, end = addr, addr + n
        while pos < end:
            base = pos - pos % PAGE
            page = self._page(base)
            piece = page[pos - base : min(end - base, PAGE)]
            if not piece:
                break
            out.append(piece)
            pos += len(piece)
            if len(page) < PAGE:
                break
        data = b"".join(out)
        if keep and data:
            self.touched.append((addr, addr + len(data)))
        return data

    def keep(self, start, end):
        """Remember a range without reading it (a structure a reader copies whole)."""
        if start > 0 and end > start:
            self.touched.append((start, end))

    def _unpack(self, st, addr, keep):
        data = self.read(addr, st.size, keep)
        return st.unpack(data)[0] if len(data) == st.size else None

    def word(self, addr, keep=True):
        return self._unpack(_Q, addr, keep)

    def sword(self, addr, keep=True):
        return self._unpack(_q, addr, keep)

    def u32(self, addr, keep=True):
        return self._unpack(_I, addr, keep)

    def i32(self, addr, keep=True):
        return self._unpack(_i, addr, keep)

    def byte(self, addr, keep=True):
        data = self.read(addr, 1, keep)
        return data[0] if data else None

    def cstring(self, addr, limit=256, keep=True):
        data = self.read(addr, limit, keep=False)
        n = data.find(b"\0")
        if n < 0:
            return None
        if keep:
            self.touched.append((addr, addr + n + 1))
        return data[:n].decode("utf-8", "replace")
