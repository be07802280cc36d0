"""snapcore decompress CORE.zst [-o CORE] [--force]: a .zst core back to a sparse core.

All-zero pages are left as holes, so the result takes the room the
uncompressed core took, and gdb and the others open it as usual.  Like a
snapshot, the output is created 0600 under a temporary name and appears under
its final name only once complete.

Exit status: 0 written; 1 the input cannot be read or is not zstd, or the
output cannot be written (nothing is left at its name); 2 usage error;
130 interrupted.
"""

from .._optional import zstandard
from ..capture.publish import CoreFile
from ..errors import CoreFormatError
from ..read.source import ZSTD_MAGIC
from . import common

PROG = "snapcore decompress"
INTERRUPTED = "interrupted; nothing was written"
PAGE = 4096
CHUNK = 1 << 20
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(CHUNK)


def build_parser():
    p = common.Parser(
        prog=PROG,
        description="Decompress a zstandard-compressed core "
        "(snapcore --compress zstd) into a sparse core file.",
        epilog="exit status: 0 written, 1 failed (nothing left at the output "
        "name), 2 usage error, 130 interrupted",
    )
    p.add_argument("core", metavar="CORE.zst", help="compressed core")
    p.add_argument(
        "-o", "--output", metavar="CORE", help="where to write (default: CORE.zst without .zst)"
    )
    p.add_argument("-f", "--force", action="store_true", help="replace CORE if it exists")
    return p


def write_sparse(read, out):
    """Copy a stream to out (a CoreFile), leaving all-zero pages as holes.
    Returns the number of bytes."""
    pos = 0
    pending = b""
    while True:
        chunk = read(CHUNK)
        if not chunk:
            break
        if pending:
            chunk, pending = pending + chunk, b""
        if len(chunk) % PAGE and len(chunk) > PAGE:
            cut = len(chunk) - len(chunk) % PAGE
            chunk, pending = chunk[:cut], chunk[cut:]
        if chunk != _ZERO_CHUNK[: len(chunk)]:
            view = memoryview(chunk)
            i = 0
            while i < len(chunk):
                if view[i : i + PAGE] == _ZERO_PAGE[: len(view[i : i + PAGE])]:
                    i += PAGE
                    continue
                j = i + PAGE
                while (
                    j < len(chunk) and view[j : j + PAGE] != _ZERO_PAGE[: len(view[j : j + PAGE])]
                ):
                    j += PAGE
                out.write_at(view[i:j], pos + i)
                i = j
        pos += len(chunk)
    if pending:
        if pending.strip(b"\0"):
            out.write_at(pending, pos)
        pos += len(pending)
    return pos


def decompress(src, dst, force=False):
    """Decompress src (zstd) to dst, sparse.  Returns the size written."""
    zstd = zstandard("decompressing a .zst core")
    with open(src, "rb") as f:
        head = f.read(18)
        if head[:4] != ZSTD_MAGIC:
            raise CoreFormatError(src, "not a zstandard-compressed file")
        try:
            expected = zstd.frame_content_size(head)
        except zstd.ZstdError:
            expected = -1
        f.seek(0)
        out = CoreFile(dst, force=force)
        try:
            reader = zstd.ZstdDecompressor().stream_reader(f, read_across_frames=True)

            def read(n):
                try:
                    return reader.read(n)
                except zstd.ZstdError as exc:
                    raise CoreFormatError(src, f"corrupt zstandard data ({exc})") from None

            size = write_sparse(read, out)
            # the decoder stops quietly at the end of a cut file; snapcore's
            # streams record their size in the frame header
            if expected is not None and expected >= 0 and size < expected:
                raise CoreFormatError(
                    src, f"truncated: it holds {size} of the {expected} bytes its header announces"
                )
            out.finish(size)
        except BaseException:
            out.abort()
            raise
    return size


def run(args, argv):
    dst = args.output
    if dst is None:
        if not args.core.endswith(".zst"):
            raise common.UsageError(f"{args.core} does not end in .zst: name the output with -o")
        dst = args.core[:-4]
    decompress(args.core, dst, force=args.force)
    return 0
