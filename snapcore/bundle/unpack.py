"""Opening a bundle: unpacked once into a cache, checked, and only then used.

    open_bundle(path, pid=None) -> (core_path, sysroot, manifest)

    CACHE/<sha256 of the bundle, 32 hex digits>/   CACHE: $XDG_CACHE_HOME/snapcore/bundles
        core.PID, core.PID.json, sysroot/..., alt/..., bundle.json, manifest.json
        views/PID/                      a sysroot of hard links, for a process of a
                                        tree whose files clash with another's

Unpacking happens in a private temporary directory beside the cache entry,
which gets its name (rename(2)) only once everything checked out:

  * the file is one zstandard frame, complete (a truncated bundle is refused);
  * every tar member is a regular file (or a directory under sysroot/ or
    alt/) with a name layout.check_member_name() accepts: no absolute paths,
    no "..", no links of any kind, so nothing can land outside the directory;
  * bundle.json lists every member with its size and sha256, and they match.

Anything else raises BundleFormatError (one line) and the temporary
directory is removed: a bad bundle leaves nothing behind.
"""

import hashlib
import json
import os
import shutil
import tarfile
import tempfile

from .._optional import zstandard
from ..errors import BundleFormatError
from . import layout

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20
# compressed bytes fed at a time: a zstd block of zeros takes 4 bytes for 128 KiB,
# so this bounds what one feed can unfold to (64 MiB)
FEED = 2048
SPACE_MARGIN = 64 << 20  # keep this much of the cache's disk free


def cache_root(cache=None):
    if cache is not None:
        return os.fspath(cache)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "snapcore", "bundles")


def is_bundle(path):
    """True if path is to be opened as a bundle: a zstandard stream that is not
    a compressed core (whatever else it holds, open_bundle says what is wrong)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if head[:4] != ZSTD_MAGIC:
        return False
    try:
        out = zstandard().ZstdDecompressor().decompressobj().decompress(head)
    except Exception:
        return True
    return out[:4] != b"\x7fELF"


class _Frame:
    """A file object over one zstandard frame: read() gives the decompressed
    bytes; check_complete() says whether the frame ended where it should."""

    def __init__(self, raw, path):
        self.path = path
        self.raw = raw
        head = raw.read(4)
        if head != ZSTD_MAGIC:
            raise BundleFormatError(
                path, "not a snapcore bundle (a bundle is a zstandard-compressed tar, .tar.zst)"
            )
        self.zstd = zstandard("opening bundles")
        self.dobj = self.zstd.ZstdDecompressor().decompressobj()
        self.buf = bytearray(self._feed(head))
        self.ended = False

    def _feed(self, data):
        try:
            return self.dobj.decompress(data)
        except self.zstd.ZstdError as exc:
            raise BundleFormatError(self.path, f"corrupt zstandard data ({exc})") from None

    def read(self, n=-1):
        while (n < 0 or len(self.buf) < n) and not self.ended:
            if self.dobj.eof:
                self.ended = True
                break
            chunk = self.raw.read(FEED)
            if not chunk:
                self.ended = True
                break
            self.buf += self._feed(chunk)
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def check_complete(self):
        while self.read(CHUNK):
            pass
        if not self.dobj.eof:
            raise BundleFormatError(self.path, "truncated (the zstandard stream ends early)")


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                return digest.hexdigest()
            digest.update(data)


def open_bundle(path, pid=None, cache=None):
    """Unpack the bundle at path into the cache (once) and check it.

    Returns (core_path, sysroot, manifest): the core of pid (default: the
    process the bundle was taken of, a tree's root), the directory to use as
    gdb's sysroot for it, and bundle.json as a dict (layout.py).  Raises
    BundleFormatError (nothing left behind), OSError, MissingDependency.
    """
    dest, manifest = unpacked(path, cache)
    core_path, sysroot = _opened(dest, core_entry(manifest, pid, os.fspath(path)))
    return core_path, sysroot, manifest


def open_cores(path, cache=None):
    """[(core entry, core path, sysroot)] of every core of the bundle (a tree's too)."""
    dest, manifest = unpacked(path, cache)
    return [(c, *_opened(dest, c)) for c in manifest.get("cores") or []]


def unpacked(path, cache=None):
    """(directory, bundle.json as a dict) of the bundle at path, unpacked and checked."""
    path = os.fspath(path)
    digest = _sha256_file(path)[:32]  # 128 bits name a bundle well enough
    root = cache_root(cache)
    os.makedirs(root, mode=0o700, exist_ok=True)
    dest = os.path.join(root, digest)
    if not os.path.isfile(os.path.join(dest, layout.MANIFEST)):
        tmp = tempfile.mkdtemp(prefix=f".{digest[:16]}.", suffix=".tmp", dir=root)
        try:
            _unpack(path, tmp)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not os.path.isfile(os.path.join(dest, layout.MANIFEST)):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # unpacked meanwhile by another
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    with open(os.path.join(dest, layout.MANIFEST)) as f:
        return dest, json.load(f)


def _opened(dest, core):
    """(core path, sysroot) of one core entry of an unpacked bundle."""
    view = os.path.join(dest, "views", str(core["pid"]))
    sysroot = view if os.path.isdir(view) else os.path.join(dest, layout.SYSROOT)
    return os.path.join(dest, core["member"]), sysroot


def core_entry(manifest, pid=None, path="bundle"):
    """The manifest's entry of pid's core (default: the root process's, or the first)."""
    cores = manifest.get("cores") or []
    if not cores:
        raise BundleFormatError(path, "the bundle holds no core")
    if pid is None:
        pid = manifest.get("root_pid")
        return next((c for c in cores if c["pid"] == pid), cores[0])
    # a host pid first: pids of different namespaces may repeat
    for key in ("pid", "ns_pid"):
        for c in cores:
            if c.get(key) == pid:
                return c
    have = ", ".join(str(c["pid"]) for c in cores)
    raise BundleFormatError(path, f"no core of pid {pid} in the bundle (it has {have})")


def executable(manifest, core, sysroot):
    """The path of core's executable under sysroot, or None if it is not in the bundle."""
    exe = core.get("executable")
    if not exe:
        return None
    try:
        candidate = os.path.join(sysroot, layout.sysroot_member(exe)[len(layout.SYSROOT) + 1 :])
    except ValueError:
        return None
    return candidate if os.path.isfile(candidate) else None


# ---------------------------------------------------------------------------


def _unpack(path, dest):
    with open(path, "rb") as raw:
        frame = _Frame(raw, path)
        try:
            archive = tarfile.open(fileobj=frame, mode="r|", errors="surrogateescape")
        except tarfile.TarError:
            frame.check_complete()  # truncated, rather than not a tar at all?
            raise BundleFormatError(path, "not a snapcore bundle (no tar archive inside)") from None
        written = {}
        try:
            for info in archive:
                _member(path, archive, info, dest, written)
        except tarfile.TarError as exc:
            raise BundleFormatError(path, f"truncated or damaged ({exc})") from None
        except OSError as exc:
            where = f"{os.path.relpath(exc.filename, dest)}: " if exc.filename else ""
            raise BundleFormatError(path, f"cannot unpack {where}{exc.strerror}") from None
        frame.check_complete()
    _check(path, dest, written)


def _member(path, archive, info, dest, written):
    name = info.name
    if info.isdir() and layout.is_directory_name(name):
        os.makedirs(os.path.join(dest, name.rstrip("/")), mode=0o700, exist_ok=True)
        return
    why = layout.check_member_name(name)
    if why is not None:
        raise BundleFormatError(path, f"member {name!r} is {why}; refusing to unpack")
    if not info.isreg():
        kind = "a link" if info.issym() or info.islnk() else "not a regular file"
        raise BundleFormatError(path, f"member {name!r} is {kind}; refusing to unpack")
    if name in written:
        raise BundleFormatError(path, f"member {name!r} appears twice")
    target = os.path.join(dest, name)
    free = shutil.disk_usage(dest).free
    if info.size > free - SPACE_MARGIN:
        raise BundleFormatError(path, f"member {name!r} ({info.size} bytes) does not fit the disk")
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    digest = hashlib.sha256()
    size = 0
    try:
        src = archive.extractfile(info)
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            digest.update(data)
            size += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    written[name] = {"size": size, "sha256": digest.hexdigest()}


def _check(path, dest, written):
    """bundle.json against what was unpacked; then the aliases and per-process views."""
    if layout.MANIFEST not in written:
        raise BundleFormatError(path, f"truncated or not a snapcore bundle (no {layout.MANIFEST})")
    try:
        with open(os.path.join(dest, layout.MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("schema") != layout.SCHEMA:
            raise BundleFormatError(
                path,
                f"unknown bundle schema {manifest.get('schema')!r} (snapcore knows "
                f"{layout.SCHEMA})",
            )
        listed = manifest["members"]
        cores, files = manifest["cores"], manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleFormatError(path, f"its {layout.MANIFEST} is not valid ({exc})") from None
    for name, got in written.items():
        if name == layout.MANIFEST:
            continue
        want = listed.get(name) if isinstance(listed, dict) else None
        if want is None:
            raise BundleFormatError(path, f"member {name!r} is not in its manifest")
        if want.get("sha256") != got["sha256"] or want.get("size") != got["size"]:
            raise BundleFormatError(
                path, f"member {name!r}: its sha256 differs from the manifest (altered or damaged)"
            )
    for name in listed:
        if name not in written:
            raise BundleFormatError(path, f"member {name!r} of its manifest is missing")
    for c in cores:
        if c.get("member") not in written:
            raise BundleFormatError(path, f"the core of pid {c.get('pid')} is missing")
    _links(path, dest, files, cores, written)


def _links(path, dest, files, cores, written):
    """Hard links inside dest: a path whose bytes another path's member holds (same
    build-id), and views/PID for processes that use files stored under alt/."""
    mine = {}  # pid -> [(path, member)]
    try:
        for f in files:
            member = f.get("member")
            if member is None:
                continue
            if member not in written:
                raise BundleFormatError(path, f"member {member!r} of its manifest is missing")
            try:
                home = layout.sysroot_member(f["path"])
            except (ValueError, KeyError, TypeError):
                raise BundleFormatError(path, f"a file entry has an unusable path: {f!r}") from None
            for pid in f.get("pids") or []:
                mine.setdefault(pid, []).append((home, member))
            if home != member and home not in written and not member.startswith(layout.ALT + "/"):
                _link(dest, member, home)
                written[home] = written[member]
        for c in cores:
            used = mine.get(c.get("pid"), [])
            if not any(m.startswith(layout.ALT + "/") for _, m in used):
                continue
            view = os.path.join("views", str(int(c["pid"])))
            for home, member in used:
                _link(dest, member, os.path.join(view, home[len(layout.SYSROOT) + 1 :]))
    except OSError as exc:
        raise BundleFormatError(path, f"cannot lay out its files ({exc.strerror})") from None


def _link(dest, member, name):
    target = os.path.join(dest, name)
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    os.link(os.path.join(dest, member), target, follow_symlinks=False)
