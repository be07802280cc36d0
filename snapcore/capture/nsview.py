"""The target's own view of pids and paths, for a process in another namespace.

The kernel writes a core from inside the dying process (the dumping task is
the target itself), so its notes hold the target's own view:

    NT_PRSTATUS, NT_PRPSINFO  pid, ppid, pgrp, sid: task_pid_vnr() and friends,
                              the ids in the target's own pid namespace (0 for a
                              parent, group or session leader outside it)
                              fs/binfmt_elf.c fill_prstatus(), fill_psinfo()
    NT_FILE                   file_path() = d_path() relative to current->fs->root,
                              the target's root; fs/binfmt_elf.c fill_files_note()

Read from elsewhere (the host), /proc answers for the reader: NSpid lists a
pid at every level from the reader's namespace down to the target's own, and
readlink of /proc/PID/map_files/* is d_path() relative to the *reader's*
root (fs/proc/base.c proc_map_files_get_link, do_proc_readlink):

    target chrooted to /srv/c            /srv/c/app/bin/app   (the host's path)
    target pivot_root'ed in its own      /app/bin/app         (the mount is out of
      mount namespace                                         the reader's reach:
                                                              d_path stops at the
                                                              namespace's root)
    the kernel's core, in both cases     /app/bin/app

So snapcore takes the pids from the last column of NSpid/NSpgid/NSsid and
reads the map_files links from a short-lived thread whose root is the
target's: unshare(CLONE_FS), then chroot(/proc/PID/root); d_path() then
stops where the kernel's dumper stops.  Without the right to chroot (no
CAP_SYS_CHROOT), the target's root as snapcore sees it is cut off the front
of each path instead.
"""

import os
import threading

from .. import _sys, procfs, procmaps
from ..errors import SnapcoreError


def same_root(pid):
    """True when pid's root directory is snapcore's own (the common case)."""
    try:
        theirs = os.stat(f"/proc/{pid}/root")
        ours = os.stat("/")
        link = os.readlink(f"/proc/{pid}/root")
    except OSError:
        return True  # cannot tell: read the links as they come
    return link == "/" and (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def file_names(pid, vmas):
    """{(start, end): the file's path as the target names it} for file-backed
    VMAs: the kernel's NT_FILE names, " (deleted)" kept.  Where map_files cannot
    be read, the maps name stands in (cut the same way)."""
    vmas = list(vmas)
    ranges = [(v.start, v.end) for v in vmas]
    if same_root(pid):
        found, prefix = {r: procmaps.map_files_link(pid, *r) for r in ranges}, ""
    else:
        try:
            prefix = os.readlink(f"/proc/{pid}/root").rstrip("/")
        except OSError:
            prefix = ""
        found = _in_target_root(pid, ranges)
        if found is None:  # no chroot for us: read as we see them, cut below
            found = {r: _cut(procmaps.map_files_link(pid, *r), prefix) for r in ranges}
    out = {}
    for v, r in zip(vmas, ranges):
        name = found.get(r)
        out[r] = name if name is not None else _cut(procmaps.unescape_maps_name(v.name), prefix)
    return out


def _cut(name, prefix):
    """name as seen from the target's root, given that root's path as we see it."""
    if name is not None and prefix and name.startswith(prefix + "/"):
        return name[len(prefix) :]
    return name


def _in_target_root(pid, ranges):
    """readlink of each map_files entry from a thread chrooted to pid's root;
    None when that is not allowed."""
    result = {}
    failed = []

    def work():
        try:
            links = os.open(f"/proc/{pid}/map_files", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            failed.append(exc)
            return
        try:
            root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                # only after this succeeds may this thread chroot: without it the
                # whole process would move
                _sys.unshare_fs()
                os.fchdir(root)
                os.chroot(".")
            finally:
                os.close(root)
            for start, end in ranges:
                try:
                    raw = os.readlink(f"{start:x}-{end:x}".encode(), dir_fd=links)
                except OSError:
                    result[(start, end)] = None
                    continue
                result[(start, end)] = raw.decode("utf-8", "surrogateescape")
        except OSError as exc:
            failed.append(exc)
        finally:
            os.close(links)

    # the thread's private root and cwd die with it
    t = threading.Thread(target=work, name="snapcore-target-root", daemon=True)
    t.start()
    t.join()
    return None if failed else result


def process_ids(pid, status):
    """(pid, ppid, pgrp, sid) as the kernel's dumper would write them (the
    target's own pid namespace), or None when pid is in snapcore's namespace."""
    own = status.own_ns_ids
    if own is None or len(status.nspid) < 2:
        return None
    ns_pid, pgrp, sid = own
    # the parent's id in the target's namespace: its NSpid reaches that deep
    # only if it lives there too (a child's namespace is its parent's or below)
    ns_ppid = 0
    try:
        parent = procfs.read_status(status.ppid) if status.ppid > 0 else None
    except SnapcoreError:
        parent = None
    if parent is not None and len(parent.nspid) >= len(status.nspid):
        ns_ppid = parent.nspid[len(status.nspid) - 1]
    return ns_pid, ns_ppid, pgrp, sid


def thread_ids(pid, tids):
    """{tid: the thread's id in its own pid namespace} (tids that vanished are left out)."""
    out = {}
    for tid in tids:
        try:
            st = procfs.read_status(pid, tid)
        except SnapcoreError:
            continue
        if st.nspid:
            out[tid] = st.nspid[-1]
    return out
