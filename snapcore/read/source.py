"""Random access to a core file, plain or zstandard-compressed.

    open_source(path)      detects the format by content (never by name)
    source.read_at(off, n) bytes at an offset of the *uncompressed* core
    SourceFile(source)     a seekable file object over it, for pyelftools

A .zst core is never decompressed to disk: reads go forward through the
stream with a small cache of the blocks asked for.
"""

import io
import os

from .._optional import zstandard
from ..errors import CoreFormatError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class PlainSource:
    compressed = None

    def __init__(self, path):
        self.f = open(path, "rb")
        self.size = os.fstat(self.f.fileno()).st_size

    def read_at(self, offset, length):
        return os.pread(self.f.fileno(), length, offset)

    def close(self):
        self.f.close()


class ZstdSource:
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
        self.reader = self.zstd.ZstdDecompressor().stream_reader(self.f, read_across_frames=True)
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
            piece = block[rel : rel + length]
            if not piece:
                break
            out.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(out)

    def close(self):
        self.f.close()


def open_source(path):
    """A reader for a plain or zstd core (detected by content, not by name)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == ZSTD_MAGIC:
        return ZstdSource(path, zstandard("reading a .zst core"))
    return PlainSource(path)


class SourceFile(io.RawIOBase):
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
        b[: len(data)] = data
        return len(data)
