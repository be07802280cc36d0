"""Writing a bundle: cores and the files they map, into one .tar.zst (layout.py).

    plan_files(files, max_size)     which bytes are stored, once each, and where:
                                    one copy per build-id; the executable first,
                                    then the smallest files, within max_size
    write_bundle(fd, cores, files)  streams every member through one zstandard
                                    frame into fd: tar header, bytes (sha256
                                    taken on the way), padding; bundle.json last

Nothing here opens a process's files or names the output: the caller
(capture/bundling.py) opens the running bytes and owns the file written to,
so a bundle is published like a core (0600, never partial under its name).
The cores inside are plain: the archive is compressed as a whole, and gdb
reads a plain core in place.
"""

import datetime
import hashlib
import json
import os
import socket
import tarfile
import time
from dataclasses import dataclass, field

from .._optional import zstandard
from .._version import __version__
from ..units import human
from . import layout

CHUNK = 1 << 20
LEVEL = 3
BLOCK = tarfile.BLOCKSIZE


@dataclass
class MappedFile:
    """A file a process maps, as the capture side found it."""

    path: str  # the target's path (its NT_FILE name, " (deleted)" cut)
    fd: int  # open on the bytes that were running; -1 when they could not be read
    size: int
    build_id: str  # hex, or None
    source: str  # where the bytes were read from, or None
    executable: bool = False  # a process's executable
    deleted: bool = False  # unlinked (or replaced) since it was mapped
    pids: list = field(default_factory=list)
    left_out: str = None  # why the bytes are not stored
    member: str = None  # set by plan_files
    same_as: str = None
    sha256: str = None

    def manifest_entry(self):
        return {
            "path": self.path,
            "build_id": self.build_id,
            "size": self.size,
            "sha256": self.sha256,
            "member": self.member,
            "same_as": self.same_as,
            "source": self.source,
            "executable": self.executable,
            "deleted": self.deleted,
            "pids": sorted(self.pids),
            "left_out": self.left_out,
        }


@dataclass
class CoreSource:
    """A core to put in the bundle, with what the manifest says of its process."""

    pid: int
    fd: int  # the plain core
    size: int
    record: dict  # its final metadata record
    comm: str = None
    ns_pid: int = None
    executable: str = None  # the target's path of its executable
    root: str = None
    files: list = field(default_factory=list)  # target paths of the files it maps
    read: object = None  # read(offset, n) -> bytes, instead of pread on fd


def plan_files(files, max_size=None):
    """Decide, in place, which files are stored and under which member.

    Files with the same build-id are stored once (the others get same_as).  With
    max_size, executables go first, then the smallest files, while the stored
    bytes stay within max_size; the rest are left out, and say so.  Returns the
    bytes to store.
    """
    stored, seen, aliases = [], {}, []
    for f in files:
        if f.left_out is not None or f.fd < 0:
            f.left_out = f.left_out or "not readable"
            continue
        key = f.build_id
        if key is not None and key in seen:
            f.same_as = seen[key].path
            aliases.append((f, seen[key]))
            continue
        if key is not None:
            seen[key] = f
        stored.append(f)
    total = 0
    for f in sorted(stored, key=lambda f: (not f.executable, f.size)):
        if max_size is not None and total + f.size > max_size:
            f.left_out = f"over --bundle-max-size ({human(max_size)})"
            continue
        total += f.size
    taken = set()
    for n, f in enumerate(stored):
        if f.left_out is not None:
            continue
        try:
            member = layout.sysroot_member(f.path)
            if member in taken:
                member = layout.alt_member(f.build_id or f"{n:02x}", f.path)
        except ValueError:
            f.left_out = "a path that cannot be stored"
            total -= f.size
            continue
        taken.add(member)
        f.member = member
    for f, first in aliases:
        f.member, f.left_out = first.member, first.left_out
    return total


class TarZstWriter:
    """A pax tar stream of regular files, through one zstandard frame, into fd."""

    def __init__(self, fd, level=LEVEL):
        zstd = zstandard("bundles (--bundle)")
        self._raw = open(fd, "wb", buffering=CHUNK, closefd=False)
        cctx = zstd.ZstdCompressor(level=level, write_checksum=True)
        self._out = cctx.stream_writer(self._raw, closefd=False)
        self.members = {}  # name -> {size, sha256}
        self.mtime = int(time.time())

    def add(self, name, read, size, mode=0o600):
        """Stream a member of size bytes from read(offset, n); returns its sha256.

        A source that gives fewer bytes than it promised (a file cut short
        while it was read) is padded with zeros, and the sha256 is of what was
        written.
        """
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime = self.mtime
        info.type = tarfile.REGTYPE
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        digest = hashlib.sha256()
        done = 0
        while done < size:
            data = read(done, min(CHUNK, size - done))
            if not data:
                data = bytes(min(CHUNK, size - done))
            digest.update(data)
            self._out.write(data)
            done += len(data)
        if size % BLOCK:
            self._out.write(bytes(BLOCK - size % BLOCK))
        sha = digest.hexdigest()
        self.members[name] = {"size": size, "sha256": sha}
        return sha

    def add_bytes(self, name, data):
        return self.add(name, lambda off, n: data[off : off + n], len(data))

    def close(self):
        """End the archive and the frame."""
        self._out.write(bytes(2 * BLOCK))
        self._out.close()  # ends the frame
        self._raw.flush()
        self._raw.close()


def _pread(fd):
    return lambda off, n: os.pread(fd, n, off)


def _json(value):
    return (json.dumps(value, indent=2) + "\n").encode()


def write_bundle(
    fd, cores, files, *, root_pid, tree=False, tree_manifest=None, max_size=None, planned=False
):
    """Write the bundle into fd; returns a summary (what Snapshot.bundle holds).

    cores: [CoreSource]; files: [MappedFile], planned here (plan_files) unless
    planned; tree_manifest: the bytes of a tree's manifest.json.  The fds are
    the caller's to close.
    """
    t0 = time.monotonic()
    if not planned:
        plan_files(files, max_size)
    stored = sum(f.size for f in files if f.member is not None and f.same_as is None)
    out = TarZstWriter(fd)
    core_entries = []
    for c in cores:
        member = layout.core_member(c.pid)
        out.add(member, c.read or _pread(c.fd), c.size)
        meta = layout.metadata_member(c.pid)
        out.add_bytes(meta, _json(c.record))
        core_entries.append(
            {
                "pid": c.pid,
                "ns_pid": c.ns_pid,
                "comm": c.comm,
                "member": member,
                "metadata": meta,
                "executable": c.executable,
                "root": c.root,
                "files": list(c.files),
            }
        )
    if tree_manifest is not None:
        out.add_bytes(layout.TREE_MANIFEST, tree_manifest)
    for f in files:
        if f.member is not None and f.same_as is None:
            f.sha256 = out.add(f.member, _pread(f.fd), f.size)
    for f in files:
        if f.same_as is not None and f.member is not None:
            f.sha256 = out.members[f.member]["sha256"]
    left_out = [f for f in files if f.left_out is not None]
    manifest = {
        "schema": layout.SCHEMA,
        "snapcore": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "host": socket.gethostname(),
        "root_pid": root_pid,
        "tree": tree,
        "cores": core_entries,
        "files": [f.manifest_entry() for f in files],
        "binaries": {"stored": stored, "max_size": max_size, "left_out": len(left_out)},
        "members": dict(out.members),
    }
    out.add_bytes(layout.MANIFEST, _json(manifest))
    out.close()
    return {
        "files": sum(1 for f in files if f.member is not None and f.same_as is None),
        "binaries_bytes": stored,
        "left_out": [{"path": f.path, "size": f.size, "why": f.left_out} for f in left_out],
        "seconds": time.monotonic() - t0,
        "manifest": manifest,
    }
