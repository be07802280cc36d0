"""The core file on disk: private, never partial under its final name.

A core holds the target's secrets, so it is created mode 0600 with O_EXCL
under a temporary name in the destination directory and only linked to its
final name once complete.  ``link(2)`` refuses an existing destination,
symlinks included, so nothing is replaced or followed unless ``force``; with
``force`` the final ``rename(2)`` replaces the name itself, never a symlink's
target.
"""
import errno
import os
import re
import secrets
import socket
import time

from .errors import OutputError, OutputExists


class CoreFile:
    def __init__(self, path, force=False):
        self.path = os.fspath(path)
        self.force = force
        directory = os.path.dirname(os.path.abspath(self.path))
        if not force and os.path.lexists(self.path):
            raise OutputExists(self.path)
        if os.path.isdir(self.path):
            raise OutputError(self.path, f"{self.path} is a directory", errno.EISDIR)
        base = os.path.basename(self.path)
        self.tmp_path = os.path.join(directory, f".{base}.snapcore-{secrets.token_hex(4)}.tmp")
        try:
            self.fd = os.open(self.tmp_path,
                              os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise OutputError(self.path, f"cannot create a file in {directory}: "
                              f"{exc.strerror}", exc.errno) from exc
        self.committed = False

    def write_at(self, data, offset):
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as exc:
                raise self.write_error(exc) from exc
            view = view[n:]
            offset += n

    def write_error(self, exc):
        return OutputError(self.path, f"writing {self.path} failed: {exc.strerror}", exc.errno)

    def finish(self, size=None):
        """Set the final size (the tail may be a hole; None: keep the size written)
        and publish under the final name."""
        try:
            if size is not None:
                os.ftruncate(self.fd, size)
            os.close(self.fd)
        except OSError as exc:
            raise self.write_error(exc) from exc
        self.fd = -1
        try:
            if self.force:
                os.replace(self.tmp_path, self.path)
            else:
                self._link_no_replace()
        except FileExistsError:
            raise OutputExists(self.path) from None
        except OSError as exc:
            raise OutputError(self.path, f"cannot create {self.path}: {exc.strerror}",
                              exc.errno) from exc
        self.committed = True

    def _link_no_replace(self):
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
        """Remove the temporary file; safe to call more than once."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if not self.committed:
            try:
                os.unlink(self.tmp_path)
            except OSError:
                pass


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
            raise ValueError(f"unknown specifier {shown} in the output name "
                             f"'{template}' (known: %p %e %t %h %%)")
        return values[spec]()

    path = _SPEC.sub(sub, template)
    if os.path.isdir(path):
        return os.path.join(path, default)
    return path
