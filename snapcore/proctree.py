"""Process trees from /proc: parents, descendants, and "is it still the same process".

A pid alone can be reused; (pid, start time) cannot, so every long-lived
reference to a process here is that pair.
"""

import os

from .procfs import read_stat


def list_pids():
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def parent_map():
    """{pid: ppid} of every process visible in /proc (those that vanish are skipped)."""
    out = {}
    for pid in list_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
        except OSError:
            continue
        rest = text[text.rindex(")") + 2 :].split()
        out[pid] = int(rest[1])
    return out


def descendants(pid, parents=None):
    """The descendants of pid, parents before their children (breadth first)."""
    parents = parent_map() if parents is None else parents
    children = {}
    for p, pp in parents.items():
        children.setdefault(pp, []).append(p)
    out, seen, queue = [], {pid}, [pid]
    while queue:
        nxt = []
        for p in queue:
            for c in sorted(children.get(p, ())):
                if c not in seen:
                    seen.add(c)
                    out.append(c)
                    nxt.append(c)
        queue = nxt
    return out


def is_descendant(pid, ancestor, parents=None):
    """True if ancestor is pid's parent, grandparent, ..."""
    parents = parent_map() if parents is None else parents
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def child_pids(pid):
    """Children of pid from /proc/PID/task/*/children (CONFIG_PROC_CHILDREN).

    Much cheaper than parent_map() when a process has few descendants.
    Returns None if the kernel does not provide the file.
    """
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread exited
            return None
        except OSError:
            continue
    return sorted(set(out))


def descendants_with_start(pid):
    """{pid: starttime} of every living (non-zombie) descendant of pid."""
    found = []
    queue = [pid]
    while queue:
        p = queue.pop()
        kids = child_pids(p)
        if kids is None:  # no children files: scan /proc
            found = descendants(pid)
            break
        found.extend(kids)
        queue.extend(kids)
    out = {}
    for p in found:
        try:
            st = read_stat(p)
        except Exception:
            continue
        if st.state not in ("Z", "X"):
            out[p] = st.starttime
    return out


def same_process_alive(pid, starttime):
    """True if pid still is the process that started at starttime, and not a zombie."""
    try:
        st = read_stat(pid)
    except Exception:
        return False
    return st.starttime == starttime and st.state not in ("Z", "X")
