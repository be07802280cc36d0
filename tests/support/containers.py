"""Containers made by the tests: new pid and mount namespaces and a root of their own.

No container runtime: ``unshare --pid --mount --fork --kill-child`` makes the
namespaces, tests/targets/nsenter makes a directory the root (pivot_root, or
chroot with chroot=True) and runs the command as the namespace's pid 2.

    root = make_root(tmp_path / "root")      nsapp at /app/bin/nsapp, its library
                                             at /opt/nspriv/lib/libnspriv.so, and
                                             the libc and loader it needs
    c = Container(spawn, root)               c.target: the helpers.Target (stdio of
                                             nsapp), c.pid: nsapp's pid on the host

The paths inside (/app, /opt/nspriv) exist nowhere on the host.  Killing
unshare kills the whole namespace (--kill-child), and Container.close reaps.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from .strict import missing
from .targets import read_nr, target_path, wait_blocked

APP = "/app/bin/nsapp"
LIB = "/opt/nspriv/lib/libnspriv.so"


def require_namespaces():
    if os.geteuid() != 0:
        missing("making pid and mount namespaces and a root needs root")
    if shutil.which("unshare") is None:
        missing("unshare (util-linux) is not installed")
    for name in ("nsapp", "nsenter"):
        if not os.path.exists(target_path(name)):
            missing(f"{name} was not built (tests/targets/Makefile)")


def _needed(exe):
    """{path the loader asks for: host file} of exe's libraries (ldd) and its loader."""
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (/\S+) \(", line)
        if m:
            found[m.group(2)] = m.group(2)
            continue
        m = re.match(r"\s*(/\S+) \(", line)
        if m:
            found[m.group(1)] = m.group(1)
    return found


def make_root(root, lib=None):
    """A root directory for nsapp; lib: the build of libnspriv.so to install."""
    lib = lib or target_path("nspriv/libnspriv.so")
    files = {APP: target_path("nsapp"), LIB: lib}
    files.update(_needed(target_path("nsapp")))
    for inside, host in files.items():
        dest = os.path.join(root, inside.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(host, dest)  # follows symlinks: the real bytes under the asked name
    return str(root)


def descendant(pid, comm, timeout=10.0):
    """The host pid of the descendant of pid named comm."""
    deadline = time.monotonic() + timeout
    while True:
        kids = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append((int(d), name))
        todo = [pid]
        while todo:
            p = todo.pop()
            for k, name in kids.get(p, []):
                if name == comm:
                    return k
                todo.append(k)
        if time.monotonic() > deadline:
            raise AssertionError(f"no process {comm!r} under {pid}")
        time.sleep(0.02)


class Container:
    """nsapp in new pid and mount namespaces, with root as its root directory."""

    def __init__(self, spawn, root, chroot=False, preexec_fn=None):
        env = dict(os.environ)
        if chroot:
            env["NSENTER_CHROOT"] = "1"
        argv = [
            "unshare",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            target_path("nsenter"),
            str(root),
            APP,
        ]
        self.target = spawn(argv, env=env, cwd=str(root), preexec_fn=preexec_fn)
        self.pid = descendant(self.target.pid, "nsapp")
        self.init = descendant(self.target.pid, "nsenter")
        # nsapp's main thread waiting in read(2) for a command: a snapshot then meets it
        # where its backtrace is known, not on its way back from printing READY (which
        # a busy machine can make last past the snapshot's start)
        wait_blocked(self.pid, self.pid, (read_nr("nsapp"),))

    @property
    def ns_tids(self):
        """nsapp's thread ids in its own namespace (its READY line)."""
        return self.target.info["tids"]

    def host_tids(self):
        return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))

    def ticks(self):
        return self.target.ping()

    def close(self):
        for p in (self.pid, self.init):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.target.close()
