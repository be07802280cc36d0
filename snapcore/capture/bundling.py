"""--bundle, the capture side: the bytes that were running, and the archive
published where the core would have been.

    FileSet.add_process(pid, ranges)
        the executable and every file with a GNU build-id the process maps,
        each opened once (per inode, across a tree) on the bytes that ran:
          1. /proc/PID/map_files/START-END: the mapped inode itself, deleted or
             replaced since or not; taken when its inode is the VMA's (or its
             build-id is the one in the process's memory)
          2. /proc/PID/root/PATH: the path under the target's own root, taken on
             the same terms; never the host's file of the same name
        A file that cannot be had this way is listed in the manifest with why.
    BundleOutputs   snapshot()'s outputs with --bundle: the core goes to an
                    unnamed temporary file beside PATH, PATH gets the archive
                    (0600, linked into place when complete), PATH.json the record
    TreeBundle      one archive for a whole tree: OUTDIR/bundle.tar.zst, with
                    every core, the tree's manifest and the files of all of them
                    (a library the processes share is stored once)

The files are opened after the target was resumed (the core is already
written): the inode checks above make sure what is stored is what was mapped
when the core was taken, or it is reported as left out.
"""

import json
import os
import stat
import tempfile

from ..bundle import layout
from ..bundle.pack import CoreSource, MappedFile, plan_files, write_bundle
from ..elf.buildid import build_id, file_build_id
from ..errors import OutputError
from .plan import read_memory
from .publish import CoreFile, CoreSink, Outputs, sidecar_path

DELETED = " (deleted)"


def _open_regular(path):
    """(fd, fstat) of a regular file, or (-1, None); devices are never opened."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return -1, None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return -1, None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return -1, None
    return fd, st


def _key(st):
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)


class FileSet:
    """The files of one process or of a tree, each opened once."""

    def __init__(self):
        # ((major, minor, inode), path) -> MappedFile, or None: not wanted.  The path is
        # part of the key: one inode under two names (a bind mount in a container) is
        # two entries, one stored, the other its same_as, so both names resolve
        self._by_inode = {}
        self.executables = {}  # pid -> the target's path of its executable

    def add_process(self, pid, ranges):
        """Open pid's files; returns the target paths of those the manifest describes."""
        try:
            exe = _key(os.stat(f"/proc/{pid}/exe"))
        except OSError:
            exe = None
        groups = {}
        for r in ranges:
            groups.setdefault(r.key, []).append(r)
        used = []
        for key, rs in groups.items():
            name = rs[0].name
            deleted = name.endswith(DELETED)
            path = name[: -len(DELETED)] if deleted else name
            if not path.startswith("/"):
                continue
            if (key, path) not in self._by_inode:
                self._by_inode[key, path] = self._open(pid, key, rs, path, deleted, key == exe)
            f = self._by_inode[key, path]
            if f is None:
                continue
            if pid not in f.pids:
                f.pids.append(pid)
            if key == exe:
                f.executable = True
                self.executables[pid] = f.path
            used.append(f.path)
        return used

    def _open(self, pid, key, ranges, path, deleted, is_exe):
        base = next((r.start for r in ranges if r.offset == 0), None)
        memory_id = []  # computed once, when needed

        def in_memory():
            if not memory_id:
                memory_id.append(
                    build_id(lambda off, n: read_memory(pid, base + off, n), mapped=True)
                    if base is not None
                    else None
                )
            return memory_id[0]

        candidates = [f"/proc/{pid}/map_files/{r.start:x}-{r.end:x}" for r in ranges[:1]]
        try:
            if not stat.S_ISREG(os.stat(candidates[0]).st_mode):
                return None  # a device, never read (nor its memory)
        except OSError:
            pass  # map_files closed to us: the root path may do
        if not deleted:
            candidates.append(f"/proc/{pid}/root{path}")
        why = "not readable (no access to /proc/PID/map_files, nor under /proc/PID/root)"
        for source in candidates:
            fd, st = _open_regular(source)
            if fd < 0:
                continue
            file_id = file_build_id(fd)
            if _key(st) == key or (file_id is not None and file_id == in_memory()):
                if file_id is None and not is_exe:
                    os.close(fd)
                    return None  # not an ELF file with a build-id: not wanted
                return MappedFile(path, fd, st.st_size, file_id, source, is_exe, deleted, [pid])
            os.close(fd)
            why = "replaced since it was mapped (the file under its name is another)"
        if in_memory() is None and not is_exe:
            return None
        return MappedFile(path, -1, 0, in_memory(), None, is_exe, deleted, [pid], left_out=why)

    def close(self):
        for f in self.files_opened():
            os.close(f.fd)
            f.fd = -1

    def files_opened(self):
        return [f for f in self._by_inode.values() if f is not None and f.fd >= 0]

    def all(self):
        return [f for f in self._by_inode.values() if f is not None]


class ScratchFile(CoreSink):
    """An unnamed temporary file beside path (O_TMPFILE, else unlinked at once)."""

    def __init__(self, path):
        self.path = f"{path} (its core)"
        directory = os.path.dirname(os.path.abspath(path))
        try:
            self.fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:
            try:
                fd, name = tempfile.mkstemp(prefix=".snapcore-", dir=directory)
                os.unlink(name)
            except OSError as exc:
                raise OutputError(
                    path, f"cannot create a file in {directory}: {exc.strerror}", exc.errno
                ) from exc
            self.fd = fd

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _ns_pid(record):
    ns = (record or {}).get("ns_pid") or []
    return ns[-1] if ns else None


class BundleOutputs(Outputs):
    """publish.Outputs for --bundle: the same interface, PATH gets the archive."""

    packed = True

    def __init__(self, path, options):
        self.options = options
        self.summary = None
        self.sidecar_path = sidecar_path(path, options)
        self.archive = CoreFile(path, force=options.force)
        self.core = None
        self.sidecar = None
        try:
            self.core = ScratchFile(path)
            if self.sidecar_path is not None:
                self.sidecar = CoreFile(self.sidecar_path, force=options.force)
        except BaseException:
            self.abort()
            raise

    @property
    def path(self):
        return self.archive.path

    def publish(self, file_size, record, snap=None):
        """The archive (core, files, record, manifest) linked into place; the sidecar."""
        try:
            size = file_size if file_size is not None else os.fstat(self.core.fd).st_size
            os.ftruncate(self.core.fd, size)
        except OSError as exc:
            raise self.core.write_error(exc) from exc
        files = FileSet()
        try:
            used = files.add_process(snap.pid, snap.files)
            core = CoreSource(
                pid=snap.pid,
                fd=self.core.fd,
                size=size,
                record=record,
                comm=record.get("comm"),
                ns_pid=_ns_pid(record),
                executable=files.executables.get(snap.pid),
                root=record.get("root"),
                files=used,
            )
            self.summary = _write(
                self.archive,
                [core],
                files.all(),
                root_pid=snap.pid,
                max_size=self.options.bundle_max_size,
            )
        finally:
            files.close()
        if self.sidecar is not None:
            self.sidecar.write_at(_record_bytes(record), 0)
        self.archive.finish()
        if self.sidecar is not None:
            try:
                self.sidecar.finish()
            except BaseException:
                try:
                    os.unlink(self.archive.path)
                except OSError:
                    pass
                raise
        self.core.close()

    def abort(self):
        self.archive.abort()
        if self.core is not None:
            self.core.close()
        if self.sidecar is not None:
            self.sidecar.abort()


def _record_bytes(record):
    return json.dumps(record, indent=2).encode() + b"\n"


def _write(out, cores, files, **kw):
    """write_bundle into a CoreFile, its errors made OutputErrors; the summary."""
    try:
        summary = write_bundle(out.fd, cores, files, **kw)
    except OSError as exc:
        raise out.write_error(exc) from exc
    summary.pop("manifest", None)
    return summary


class TreeBundle:
    """OUTDIR/bundle.tar.zst of a tree: made after every core was published."""

    def __init__(self, outdir, options):
        self.options = options
        self.path = os.path.join(outdir, layout.TREE_ARCHIVE)
        self.out = CoreFile(self.path, force=options.force)
        self.files = FileSet()
        self.cores = []  # [(ProcessResult, [paths])]
        self.summary = None

    def collect(self, processes):
        """Open every process's files and decide the members; each ok
        ProcessResult learns the members its core and files are in."""
        for p in processes:
            if not p.ok or p.snapshot is None:
                continue
            used = self.files.add_process(p.pid, p.snapshot.files)
            self.cores.append((p, used))
        plan_files(self.files.all(), self.options.bundle_max_size)
        for p, _ in self.cores:
            members = [layout.core_member(p.pid), layout.metadata_member(p.pid)]
            members += sorted({f.member for f in self.files.all() if p.pid in f.pids and f.member})
            p.bundle_members = members

    def write(self, processes, tree_manifest):
        """The archive; ProcessResult.bundle_members say which members each uses."""
        sources, fds = [], []
        try:
            for p, used in self.cores:
                fd = os.open(p.core, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                fds.append(fd)
                record = p.snapshot.metadata or {}
                sources.append(
                    CoreSource(
                        pid=p.pid,
                        fd=fd,
                        size=os.fstat(fd).st_size,
                        record=record,
                        comm=p.comm,
                        ns_pid=_ns_pid(record),
                        executable=self.files.executables.get(p.pid),
                        root=record.get("root"),
                        files=used,
                    )
                )
            root = processes[0].pid if processes else None
            self.summary = _write(
                self.out,
                sources,
                self.files.all(),
                root_pid=root,
                tree=True,
                tree_manifest=tree_manifest,
                max_size=self.options.bundle_max_size,
                planned=True,
            )
        finally:
            for fd in fds:
                os.close(fd)
        self.out.finish()

    def write_tree(self, result, manifest_bytes):
        """collect(), the tree's manifest (manifest_bytes(result)), write(); the
        manifest's bytes, which the caller publishes beside the archive."""
        try:
            self.collect(result.processes)
            result.bundle = {"path": self.path}
            data = manifest_bytes(result)
            self.write(result.processes, data)
        finally:
            self.files.close()
        result.bundle.update(self.summary)
        return data

    def abort(self):
        """Drop the archive (also once published: its tree failed)."""
        self.files.close()
        if self.out.committed:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.out.abort()
