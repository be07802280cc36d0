"""Copying the planned memory into the core: the C loop, and the sinks.

Copier       one sc_copy run over the planned segments (csrc/snapcore.c)
copy_core    the header block, then the segments, to the file at their
             offsets (holes stay holes), or, compressed, every byte in order
             through a pipe to a zstandard thread
"""

import errno
import fcntl
import os
import threading
import time
from dataclasses import dataclass

from .. import _native
from .._optional import zstandard
from ..errors import OutputError, SnapcoreError, SnapshotCancelled, TargetExited
from .plan import PRELOADED, READ
from .publish import writev_all


@dataclass
class CopyResult:
    bytes_read: int
    bytes_from_file: int
    bytes_written: int
    bytes_absent: int
    bytes_zero: int
    bytes_unreadable: int
    unreadable: list  # [(addr, len, errno)]
    unreadable_truncated: int  # ranges not listed
    readv_calls: int
    mem_reads: int
    scan_calls: int
    read_seconds: float = 0.0  # the C loop reading the target and backing files
    write_seconds: float = 0.0  # its zero scan and writes (on the writer thread, overlapped)
    scan_seconds: float = 0.0  # asking pagemap which pages are resident
    wait_seconds: float = 0.0  # the reader waiting for the writer (write-bound)
    copy_seconds: float = 0.0  # the whole sc_copy call


class Copier:
    """One sc_copy run; ``stats`` is shared with the C loop for progress and cancel.

    The C loop packs resident runs into batches (up to IOV_MAX runs, one
    process_vm_readv each) that go round a ring of ``nbufs`` buffers to the
    writer thread.  Batches are BATCH bytes (less if bufsize // nbufs is
    smaller): small enough that what the reader just copied is still in cache
    when the writer copies it on (1 GiB random, same run, quiet machine: the
    copy took 0.272 s with 256 KiB batches, 0.283 s with 1 MiB ones; 4 MiB ones
    cost the writer 2-5x as long).  Each batch is one pwrite() per run, and the
    page cache takes a write in folios as large as its length: 128 KiB ones are
    cheaper to get than 256 KiB ones once the page cache has used up the free
    memory's smaller blocks (4 GiB, THP target, 5 snapshots each, interleaved:
    3.48 s with 128 KiB batches against 4.35 s with 256 KiB ones, every pair;
    64 KiB: 3.56 s; 1 GiB: 0.270-0.281 s for 128 KiB, 0.272 s for 256 KiB,
    0.298 s for 64 KiB).
    """

    BAD_CAP = 4096
    NBUFS = 4
    BATCH = 128 << 10

    def __init__(
        self,
        pid,
        out_fd,
        bufsize=4 << 20,
        writer_thread=True,
        sequential=False,
        stream_pos=0,
        use_readv=True,
        nbufs=None,
    ):
        """bufsize: the most buffer memory to use, in all (nbufs batches).

        sequential: out_fd is a stream (e.g. a pipe to a compressor); every byte is
        written in order, holes as zeros, starting at file offset stream_pos.

        use_readv=False reads everything through /proc/PID/mem: for a forked
        live image, every page of which is copy-on-write shared with the
        target (see Vma.cow_shared)."""
        lib = _native.require()
        self.ffi = _native.ffi
        self.lib = lib
        self.pid = pid
        self.stats = self.ffi.new("struct sc_copy_stats *")
        self.ctx = self.ffi.new("struct sc_copy_ctx *")
        self.ctx.pid = pid
        self.ctx.out_fd = out_fd
        nbufs = self.NBUFS if nbufs is None else max(1, nbufs)
        self.ctx.bufsize = max(4096, min(self.BATCH, bufsize // nbufs))
        self.ctx.nbufs = nbufs
        self.ctx.readv_ok = 1 if use_readv else 0
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
        todo = [
            (p, off) for p, off in zip(plans, offsets) if p.fill in (READ, PRELOADED) and p.filesz
        ]
        segs = ffi.new("struct sc_seg[]", max(1, len(todo)))
        for i, (p, off) in enumerate(todo):
            s = segs[i]
            s.vaddr = p.start
            s.len = p.filesz
            s.file_off = off
            s.backing_fd = p.backing_fd
            base = p.vma.offset if p.backing_base is None else p.backing_base
            s.backing_off = base + (p.start - p.vma.start)
            fl = 0
            if p.fill == PRELOADED:
                fl |= self.lib.SC_SEG_BACKING_ONLY
            elif not p.vma.special:
                fl |= self.lib.SC_SEG_RESIDENT_ONLY
            if not p.vma.readable or p.vma.cow_shared:
                fl |= self.lib.SC_SEG_FORCE_MEM
            if p.fault_absent:
                fl |= self.lib.SC_SEG_FAULT_ABSENT
            s.flags = fl
        bad = ffi.new("struct sc_bad[]", self.BAD_CAP)
        t0 = time.monotonic()
        r = self.lib.sc_copy(self.ctx, segs, len(todo), self.stats, bad, self.BAD_CAP)
        elapsed = time.monotonic() - t0
        st = self.stats
        if r == -errno.ECANCELED:
            raise SnapshotCancelled()
        if r == -errno.ESRCH:
            raise TargetExited(self.pid)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return CopyResult(
            bytes_read=int(st.bytes_read),
            bytes_from_file=int(st.bytes_from_file),
            bytes_written=int(st.bytes_written),
            bytes_absent=int(st.bytes_absent),
            bytes_zero=int(st.bytes_zero),
            bytes_unreadable=int(st.bytes_unreadable),
            unreadable=[
                (int(bad[i].addr), int(bad[i].len), int(bad[i].err)) for i in range(int(st.n_bad))
            ],
            unreadable_truncated=int(st.n_bad_total - st.n_bad),
            readv_calls=int(st.readv_calls),
            mem_reads=int(st.mem_reads),
            scan_calls=int(st.scan_calls),
            read_seconds=st.read_ns / 1e9,
            write_seconds=st.write_ns / 1e9,
            scan_seconds=st.scan_ns / 1e9,
            wait_seconds=st.wait_ns / 1e9,
            copy_seconds=elapsed,
        )


class CoreWriter:
    """Writes one core: the header block, the memory, the PN_XNUM trailer.

    Uncompressed, segments go to their offsets in the file and holes stay
    holes.  With compress="zstd" every byte goes, in order, through a pipe to
    a zstandard thread (the file is a stream: nothing is rewritten later).
    """

    def __init__(self, out, src, options, use_readv):
        self.out = out  # publish.CoreSink
        self.src = src  # the pid memory is read from
        self.options = options
        self.use_readv = use_readv
        self.copier = None
        self._cancelled = False

    def done(self):
        c = self.copier
        return c.bytes_done if c is not None else 0

    def cancel(self):
        self._cancelled = True
        if self.copier is not None:
            self.copier.cancel()

    def _new_copier(self, fd, **kw):
        self.copier = Copier(
            self.src,
            fd,
            self.options.buffer_size,
            self.options.writer_thread,
            use_readv=self.use_readv,
            **kw,
        )
        if self._cancelled:
            raise SnapshotCancelled()
        return self.copier

    def write(self, plans, layout, header_later=False):
        """Returns the CopyResult; raises OutputError, SnapshotCancelled, TargetExited.

        header_later: leave the ELF header, program headers and notes to
        write_header() (a file only: a compressed stream is written in order).
        """
        if self.options.compress == "zstd":
            if header_later:
                raise ValueError("a compressed core is written in order")
            return self._write_compressed(plans, layout)
        if not header_later:
            self.write_header(layout)
        return self._write_file(plans, layout)

    def write_header(self, layout):
        """Bytes [0, data_off) of an uncompressed core (see write())."""
        self.out.write_parts_at(layout.header_parts(), 0)

    def _write_file(self, plans, layout):
        out = self.out
        copier = self._new_copier(out.fd)
        try:
            result = copier.run(plans, layout.offsets)
        except SnapcoreError:
            raise  # e.g. TargetExited (a ProcessLookupError)
        except OSError as exc:
            raise out.write_error(exc) from exc
        finally:
            copier.close()
        trailer = layout.trailer_block()
        if trailer is not None:
            out.write_at(trailer[1], trailer[0])
        return result

    def _write_compressed(self, plans, layout):
        out = self.out
        zstd = zstandard()
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        box = {}

        def compress():
            try:
                cctx = zstd.ZstdCompressor(level=3, write_checksum=True)
                with (
                    os.fdopen(r, "rb", buffering=0) as src,
                    os.fdopen(out.fd, "wb", closefd=False) as dst,
                ):
                    cctx.copy_stream(
                        src, dst, size=layout.file_size, read_size=1 << 20, write_size=1 << 20
                    )
            except BaseException as exc:  # handed to the writing thread
                box["error"] = exc

        t = threading.Thread(target=compress, name="snapcore-zstd", daemon=True)
        t.start()
        copier = None
        try:
            header_len = writev_all(w, layout.header_parts())
            copier = self._new_copier(w, sequential=True, stream_pos=header_len)
            result = copier.run(plans, layout.offsets)
            _pad_zeros(w, layout.data_end - copier.stream_pos)
            trailer = layout.trailer_block()
            if trailer is not None:
                _write_all(w, trailer[1])
        except SnapcoreError:
            raise
        except OSError as exc:
            os.close(w)  # the compressor sees EOF and reports its own error
            w = -1
            t.join()
            self._raise_compressor_error(box)
            raise out.write_error(exc) from exc
        finally:
            if copier is not None:
                copier.close()
            if w >= 0:
                os.close(w)
            t.join()
        self._raise_compressor_error(box)
        return result

    def _raise_compressor_error(self, box):
        err = box.get("error")
        if isinstance(err, OSError):
            raise self.out.write_error(err) from err
        if err is not None:
            raise OutputError(self.out.path, f"compressing {self.out.path} failed: {err}") from err


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pad_zeros(fd, n):
    if n > 0:
        r = _native.require().sc_write_zeros(fd, n)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
