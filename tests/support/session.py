"""Kernel settings the suite needs, held for as long as some session needs them.

The kernel differential and the tests that read the kernel's own core need
``kernel.core_pattern`` = ``core`` (the core lands in the process's cwd) and
``kernel.core_sort_vma`` = 0; the PN_XNUM and hugetlb tests need
``vm.max_map_count`` and ``vm.nr_hugepages`` raised.  These are machine-wide,
and several pytest processes may want them at once: xdist workers, the
sessions of ``make mutants``, other checkouts on the same machine.  So every
change goes through one lock file and a list of holders (pid and start time,
so a holder that died without letting go is noticed): a setting is changed
by the first holder that needs it, and put back as it was found when the last
holder lets go.  Only root can change them; without root nothing is touched
and the tests that need a setting say so (support/strict.py).
"""

import fcntl
import json
import os

STATE_DIR = "/run/snapcore-tests" if os.path.isdir("/run") else "/tmp/snapcore-tests"
LOCK = os.path.join(STATE_DIR, "sysctl.lock")
STATE = os.path.join(STATE_DIR, "sysctl.json")

# what the suite needs for a whole session: name -> ("eq" | "min", value)
SESSION_SETTINGS = {
    "kernel.core_pattern": ("eq", "core"),
    "kernel.core_sort_vma": ("eq", "0"),
}


def _path(name):
    return "/proc/sys/" + name.replace(".", "/")


def read_sysctl(name):
    try:
        with open(_path(name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write(name, value):
    with open(_path(name), "w") as f:
        f.write(str(value))


def _start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _me():
    return [os.getpid(), _start_time(os.getpid())]


class _State:
    """The lock held, the state file read; written back on exit."""

    def __enter__(self):
        os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
        self._lock = open(LOCK, "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            with open(STATE) as f:
                self.data = json.load(f)
        except (FileNotFoundError, ValueError):
            self.data = {}
        self.data.setdefault("saved", {})
        self.data.setdefault("holders", [])
        # holders that died without letting go
        live = []
        for h in self.data["holders"]:
            if _start_time(h["pid"]) == h["start"]:
                live.append(h)
        self.data["holders"] = live
        return self

    def restore_unheld(self):
        held = {n for h in self.data["holders"] for n in h["names"]}
        for name, value in list(self.data["saved"].items()):
            if name not in held:
                try:
                    _write(name, value)
                except OSError:
                    pass
                del self.data["saved"][name]

    def __exit__(self, *exc):
        tmp = STATE + f".{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, STATE)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


def hold(settings, tag):
    """Apply settings ({name: ("eq"|"min", value)}) for this process, as ``tag``.

    Returns {name: value now}.  Without root, or for a setting this kernel
    lacks, nothing changes and the current value is returned.
    """
    if os.geteuid() != 0:
        return {name: read_sysctl(name) for name in settings}
    pid, start = _me()
    with _State() as st:
        st.restore_unheld()
        names = []
        for name, (mode, value) in settings.items():
            cur = read_sysctl(name)
            if cur is None:
                continue
            if (cur != str(value)) if mode == "eq" else (int(cur) < int(value)):
                st.data["saved"].setdefault(name, cur)
                try:
                    _write(name, value)
                except OSError:
                    continue
            names.append(name)
        st.data["holders"].append({"pid": pid, "start": start, "tag": tag, "names": names})
    return {name: read_sysctl(name) for name in settings}


def release(tag):
    """Let go of what ``hold(..., tag)`` took; the last holder puts values back."""
    if os.geteuid() != 0:
        return
    pid, start = _me()
    with _State() as st:
        st.data["holders"] = [
            h
            for h in st.data["holders"]
            if not (h["pid"] == pid and h["start"] == start and h["tag"] == tag)
        ]
        st.restore_unheld()
