"""The kernel's view of a process, sampled from /proc just before the freeze.

Once a thread is in a ptrace stop its state reads "t" and its wchan is
ptrace_stop, so what the kernel says about each thread is read before the
freeze; the frozen registers (waits.py) then say which system call each
thread was in at the instant of the core.

    sample_threads(pid) -> {tid: {state, name, held_by_snapcore, wchan, stack,
                                  sigblk, sigpnd, tracer, voluntary_ctxt_switches,
                                  nonvoluntary_ctxt_switches, utime, stime, cpu_ns,
                                  proc_syscall}}
    sample_process(pid) -> {fds, fds_omitted, children, epoll, unix_peers}

fds:      {fd: {"target": readlink of /proc/PID/fd/N, "mode": "r"|"w"|"rw"}}
          (mode for pipes, FIFOs and sockets, from fdinfo's flags)
epoll:    {epoll fd: [the fds it watches]} (fdinfo "tfd:" lines)
children: pids of the process's children (/proc/PID/task/*/children)
unix_peers: {socket inode: inode of the other end} (sockdiag.py)

A thread snapcore's helper already holds in its wait (helper.py "hold": a
caller's threads blocked in wait4/waitid) reads "t", traced by snapcore: it
is recorded as sleeping ("S"), with held_by_snapcore true.

Every value is read the way psutil reads it: a file that vanished or cannot
be read leaves its key null; nothing here raises for a process that exits.
"""

import errno
import os
import re
import stat

from .. import _native, procfs
from ..arch.base import CLK_TCK
from . import sockdiag

MAX_FDS = 1024  # fds listed per process (the record stays small)
MAX_STACK_LINES = 64
_FLAGS = re.compile(r"^flags:\s+([0-7]+)", re.M)
_TFD = re.compile(r"^tfd:\s+(\d+)", re.M)
_INODE = re.compile(r"^(?:socket|pipe):\[(\d+)\]$")


def _read(path):
    """The text of a small /proc file, or None."""
    try:
        return procfs.read_path(path).decode("utf-8", "surrogateescape")
    except OSError:
        return None


def parse_kernel_stack(text):
    """/proc/PID/task/TID/stack -> ["do_futex_wait+0x1a/0x30", ...]."""
    out = []
    for line in (text or "").splitlines()[:MAX_STACK_LINES]:
        line = line.strip()
        if line.startswith("[<"):
            line = line.split("] ", 1)[-1]
        if line:
            out.append(line)
    return out


def parse_syscall(text):
    """/proc/PID/task/TID/syscall -> [nr, arg0..arg5, sp, pc]; [-1, sp, pc] when
    blocked outside a system call; None when running."""
    parts = (text or "").split()
    if not parts or not parts[0].lstrip("-").isdigit():
        return None
    try:
        return [int(parts[0])] + [int(x, 16) for x in parts[1:]]
    except ValueError:
        return None


# the files of /proc/PID/task/TID/ a sample reads, in one C call for all threads
_FILES = ("stat", "status", "wchan", "schedstat", "stack", "syscall")
_MAX_FILE = 16 << 10  # the room each gets in the C call: a longer one is read on its own


def sample_thread(pid, tid):
    """One thread's kernel state (see the module docstring), or None if it is gone."""
    base = f"/proc/{pid}/task/{tid}/"
    return _thread_sample(pid, {name: _read(base + name) for name in _FILES})


def _status_field(text, key):
    """The value of status's line "key:", or None."""
    at = text.find(f"\n{key}:")
    if at < 0:
        return None
    at += len(key) + 2
    end = text.find("\n", at)
    return text[at : end if end >= 0 else len(text)].strip()


def _int(text):
    return int(text) if text is not None and text.isdigit() else None


def _thread_sample(pid, texts):
    """sample_thread() from the texts of its _FILES (None where unreadable)."""
    stat = texts["stat"]
    if not stat:
        return None
    try:
        st = procfs.parse_stat(stat)
    except (ValueError, IndexError):
        return None
    status = texts["status"] or ""
    wchan = texts["wchan"]
    schedstat = (texts["schedstat"] or "").split()
    stack = texts["stack"]
    proc_syscall = parse_syscall(texts["syscall"])
    tracer = _int(_status_field(status, "TracerPid"))
    state, held = st.state, None
    if state == "t" and tracer and procfs.is_own_thread(tracer):
        # held by snapcore itself (helper.py holds a caller's threads blocked in
        # wait4/waitid before the freeze): it sleeps in that wait
        state, held, tracer = "S", "t", 0
    if held is not None:
        wchan = stack = None  # they would show snapcore's hold, not the thread's wait
    return {
        "state": state,
        "held_by_snapcore": held is not None,
        "name": st.comm,
        "wchan": wchan if wchan not in (None, "", "0") else None,
        "stack": parse_kernel_stack(stack) if stack is not None else None,
        "sigblk": _hex(_status_field(status, "SigBlk")),
        "sigpnd": _hex(_status_field(status, "SigPnd")),
        "tracer": tracer,
        "voluntary_ctxt_switches": _int(_status_field(status, "voluntary_ctxt_switches")),
        "nonvoluntary_ctxt_switches": _int(_status_field(status, "nonvoluntary_ctxt_switches")),
        "utime": round(st.utime / CLK_TCK, 3),
        "stime": round(st.stime / CLK_TCK, 3),
        "cpu_ns": int(schedstat[0]) if schedstat and schedstat[0].isdigit() else None,
        "proc_syscall": proc_syscall,
    }


def _hex(text):
    try:
        return f"{int(text, 16):#x}"
    except (TypeError, ValueError):
        return None


def _task_files(pid, names):
    """{tid: [text or None, for each of names]} for every thread of pid: one C
    call per MiB of text (1000 threads' six files: 26 ms, against 33 ms of
    os.open/os.read/os.close); a file longer than the C call's room is read here."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit()]
    except OSError:
        return {}
    out = _native.read_task_files(pid, tids, names, max_file=_MAX_FILE)
    for tid, files in out.items():
        for i, got in enumerate(files):
            if isinstance(got, int):
                files[i] = (
                    _read(f"/proc/{pid}/task/{tid}/{names[i]}") if got == -errno.EFBIG else None
                )
            else:
                files[i] = got.decode("utf-8", "surrogateescape")
    return out


def sample_threads(pid):
    """{tid: sample_thread()} of every thread of pid, read before the freeze."""
    out = {}
    for tid, files in _task_files(pid, _FILES).items():
        s = _thread_sample(pid, dict(zip(_FILES, files)))
        if s is not None:
            out[tid] = s
    return out


def _mode(flags_text):
    m = _FLAGS.search(flags_text or "")
    if not m:
        return None
    return {0: "r", 1: "w", 2: "rw"}.get(int(m.group(1), 8) & 3)


def sample_fds(pid):
    """(fds, epoll, omitted) of pid: see the module docstring."""
    fds, epoll = {}, {}
    try:
        names = sorted((n for n in os.listdir(f"/proc/{pid}/fd") if n.isdigit()), key=int)
    except OSError:
        return None, {}, 0
    for n in names[:MAX_FDS]:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        entry = {"target": target}
        if target.startswith(("pipe:", "socket:", "anon_inode:[eventpoll]")) or (
            target.startswith("/") and _is_fifo(pid, n)
        ):
            info = _read(f"/proc/{pid}/fdinfo/{n}")
            if not target.startswith("anon_inode:"):
                entry["mode"] = _mode(info)
            else:
                epoll[n] = [int(x) for x in _TFD.findall(info or "")]
        fds[n] = entry
    return fds, epoll, max(0, len(names) - MAX_FDS)


def _is_fifo(pid, n):
    try:
        return stat.S_ISFIFO(os.stat(f"/proc/{pid}/fd/{n}").st_mode)
    except OSError:
        return False


def children_of(pid):
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        text = _read(f"/proc/{pid}/task/{t}/children")
        if text:
            out += [int(c) for c in text.split()]
    return sorted(set(out))


def sample_process(pid):
    """What the wait-for graph needs and a core cannot hold: fds, epoll sets,
    children and Unix socket peers (see the module docstring)."""
    fds, epoll, omitted = sample_fds(pid)
    inodes = []
    for entry in (fds or {}).values():
        m = _INODE.match(entry["target"])
        if m and entry["target"].startswith("socket:"):
            inodes.append(int(m.group(1)))
    peers = sockdiag.unix_peers(inodes)
    return {
        "fds": fds,
        "fds_omitted": omitted,
        "epoll": epoll,
        "children": children_of(pid),
        "unix_peers": {str(k): v for k, v in peers.items()},
    }
