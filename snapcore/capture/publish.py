"""The core file on disk: private, never partial under its final name.

A core holds the target's secrets, so it is created mode 0600 and only given
its final name once complete:

* Where the filesystem supports it the data goes to an unnamed O_TMPFILE
  inode in the destination directory, linked to its name at the end
  (``linkat`` of /proc/self/fd/N).  If snapcore is killed, even by SIGKILL,
  the inode simply vanishes: nothing is ever left behind.
* Elsewhere a hidden ``.NAME.snapcore-XXXX.tmp`` file is created with
  O_EXCL|O_NOFOLLOW, removed on every path out that snapcore survives.

``link(2)`` refuses an existing destination, symlinks included, so nothing is
replaced or followed unless ``force``; with ``force`` the final ``rename(2)``
replaces the name itself (never a symlink's target), and only a regular file
or a symlink is ever replaced (a device, fifo or directory never is).
"""

import errno
import json
import os
import re
import socket
import stat
import time

from ..errors import OutputError, OutputExists


def pwrite_all(fd, data, offset):
    """pwrite every byte of data at offset (OSError on failure)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.EIO, "pwrite() wrote nothing")
        view = view[n:]
        offset += n


IOV_MAX = os.sysconf("SC_IOV_MAX")  # iovecs per writev()


def writev_all(fd, parts, offset=None):
    """Write the parts one after the other, up to IOV_MAX per system call:
    pwritev from offset, or writev (a pipe) when offset is None.  Returns the
    number of bytes; OSError on failure."""
    parts = [memoryview(p) for p in parts if len(p)]
    total = sum(len(p) for p in parts)
    i = 0
    while i < len(parts):
        batch = parts[i : i + IOV_MAX]
        if offset is None:
            n = os.writev(fd, batch)
        else:
            n = os.pwritev(fd, batch, offset)
            offset += n
        if n == 0:  # nothing written of a non-empty batch: never spin on it
            raise OSError(errno.EIO, "write() wrote nothing")
        while n:  # skip what was written; a short write resumes mid-part
            if n < len(parts[i]):
                parts[i] = parts[i][n:]
                break
            n -= len(parts[i])
            i += 1
    return total


class CoreSink:
    """Writes into an already open core file descriptor (what a job needs)."""

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path

    def write_at(self, data, offset):
        try:
            pwrite_all(self.fd, data, offset)
        except OSError as exc:
            raise self.write_error(exc) from exc

    def write_parts_at(self, parts, offset):
        """The parts one after the other from offset (few system calls); returns
        the number of bytes."""
        try:
            return writev_all(self.fd, parts, offset)
        except OSError as exc:
            raise self.write_error(exc) from exc

    def write_error(self, exc):
        return OutputError(self.path, f"writing {self.path} failed: {exc.strerror}", exc.errno)


class CoreFile(CoreSink):
    def __init__(self, path, force=False):
        self.path = os.fspath(path)
        self.force = force
        self.committed = False
        self.fd = -1
        self.tmp_path = None  # named temp file, when O_TMPFILE is unavailable
        directory = os.path.dirname(os.path.abspath(self.path))
        self._check_destination()
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise OutputError(
                    self.path, f"cannot create a file in {directory}: {exc.strerror}", exc.errno
                ) from exc
        if self.fd < 0:
            self.tmp_path = self._tmp_name()
            try:
                self.fd = os.open(
                    self.tmp_path,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:
                raise OutputError(
                    self.path, f"cannot create a file in {directory}: {exc.strerror}", exc.errno
                ) from exc

    def _tmp_name(self):
        """A hidden name beside the final one, for the file until it is published."""
        directory = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        return os.path.join(directory, f".{base}.snapcore-{os.urandom(4).hex()}.tmp")

    def _check_destination(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OutputError(
                self.path, f"cannot use {self.path}: {exc.strerror}", exc.errno
            ) from exc
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(self.path, f"{self.path} is a directory", errno.EISDIR)
        if not self.force:
            raise OutputExists(self.path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise OutputError(
                self.path,
                f"{self.path} exists and is not a regular file; refusing to replace it",
                errno.EEXIST,
            )

    def finish(self, size=None):
        """Set the final size (the tail may be a hole; None: keep the size written)
        and publish under the final name."""
        try:
            if size is not None:
                os.ftruncate(self.fd, size)
        except OSError as exc:
            raise self.write_error(exc) from exc
        try:
            if self.tmp_path is None:
                self._publish_tmpfile()
            else:
                self._publish_named()
        except FileExistsError:
            raise OutputExists(self.path) from None
        except OSError as exc:
            raise OutputError(
                self.path, f"cannot create {self.path}: {exc.strerror}", exc.errno
            ) from exc
        self.committed = True
        os.close(self.fd)
        self.fd = -1

    def _link_fd(self, dest):
        # linkat(AT_SYMLINK_FOLLOW) of the magic /proc/self/fd link names the
        # unnamed inode.  CPython calls plain link(2) (which does not follow)
        # unless a dir_fd is given, so give it one; the absolute path ignores it.
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{self.fd}", dest, src_dir_fd=root, follow_symlinks=True)
        finally:
            os.close(root)

    def _publish_tmpfile(self):
        if not self.force:
            self._link_fd(self.path)  # EEXIST if it appeared
            return
        tmp = self._tmp_name()
        self._link_fd(tmp)
        try:
            self._check_destination()
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise

    def _publish_named(self):
        if self.force:
            self._check_destination()
            os.replace(self.tmp_path, self.path)
            return
        try:
            os.link(self.tmp_path, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # filesystems without hard links: rename after a check (small race)
            if os.path.lexists(self.path):
                raise FileExistsError(errno.EEXIST, "exists", self.path) from None
            os.rename(self.tmp_path, self.path)
            return
        os.unlink(self.tmp_path)

    def abort(self):
        """Drop the unfinished file; safe to call more than once."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if not self.committed and self.tmp_path is not None:
            try:
                os.unlink(self.tmp_path)
            except OSError:
                pass


def sidecar_path(path, options):
    """The metadata sidecar's path for the output at path (None without metadata);
    OutputExists up front if that name is taken and --force is not given."""
    side = options.sidecar(path)
    if side is not None and not options.force and os.path.lexists(side):
        raise OutputExists(side)
    return side


class Outputs:
    """A core file and, when the request asks for one, its metadata sidecar.

    Both are created before anything is touched (so an existing name is refused
    up front) and get their names together in publish(): never one without
    the other, never a partial file under a final name.
    """

    def __init__(self, path, options):
        self.sidecar_path = sidecar_path(path, options)
        self.core = CoreFile(path, force=options.force)
        self.sidecar = None
        try:
            if self.sidecar_path is not None:
                self.sidecar = CoreFile(self.sidecar_path, force=options.force)
        except BaseException:
            self.core.abort()
            raise

    @property
    def path(self):
        return self.core.path

    def publish(self, file_size, record, snap=None):
        """Size the core, write the sidecar, link both into place (snap: unused
        here; bundling.BundleOutputs takes the same call)."""
        if self.sidecar is not None:
            self.sidecar.write_at(json.dumps(record, indent=2).encode() + b"\n", 0)
        self.core.finish(file_size)
        if self.sidecar is not None:
            try:
                self.sidecar.finish()
            except BaseException:
                try:
                    os.unlink(self.core.path)
                except OSError:
                    pass
                raise

    def abort(self):
        self.core.abort()
        if self.sidecar is not None:
            self.sidecar.abort()

    packed = False  # the file at path is an archive (bundling.BundleOutputs)

    def disk_usage(self):
        """(st_size, st_blocks * 512) of the published file."""
        try:
            st = os.stat(self.path)
        except OSError:
            return 0, 0
        return st.st_size, st.st_blocks * 512

    def describe(self, snap, record, t0):
        """Fill in what a Snapshot says of the published files (and the wall time)."""
        snap.path = self.path
        snap.metadata = record
        snap.metadata_path = self.sidecar_path
        snap.wall_time = time.monotonic() - t0
        size, snap.bytes_on_disk = self.disk_usage()
        if snap.compressed or self.packed:
            snap.file_size = size


# ---------------------------------------------------------------------------
# naming: -o accepts a core_pattern-like template or a directory

_SPEC = re.compile(r"%(.?)")


def expand_output(template, pid, comm="", now=None, host=None, suffix=""):
    """The core's path from ``-o``: None, a directory, or a template.

    None gives ``core.PID``; an existing directory (or a path ending in "/")
    gives ``DIR/core.PID``; in a template ``%p`` is the pid, ``%e`` the
    process name (comm, "/" made "!" as the kernel does), ``%t`` the time in
    seconds since the epoch, ``%h`` the host name and ``%%`` a "%".  suffix
    (".zst") is added to the default names, not to a path or template given.
    Raises ValueError on an unknown specifier.
    """
    default = f"core.{pid}{suffix}"
    if template is None or template == "":
        return default
    template = os.fspath(template)
    if template.endswith("/") or os.path.isdir(template):
        return os.path.join(template, default)
    values = {
        "p": lambda: str(pid),
        "e": lambda: (comm or "unknown").replace("/", "!"),
        "t": lambda: str(int(now if now is not None else time.time())),
        "h": lambda: (host or socket.gethostname()).replace("/", "!"),
        "%": lambda: "%",
    }

    def sub(m):
        spec = m.group(1)
        if spec not in values:
            shown = f"%{spec}" if spec else "a trailing %"
            raise ValueError(
                f"unknown specifier {shown} in the output name '{template}' (known: %p %e %t %h %%)"
            )
        return values[spec]()

    path = _SPEC.sub(sub, template)
    if os.path.isdir(path):
        return os.path.join(path, default)
    return path
