"""The SNAPCORE note and the --metadata sidecar: what a snapshot was and how it went.

The note is the last record of the core's PT_NOTE, after the kernel's notes:

    owner "SNAPCORE", type NT_SNAPCORE_METADATA (0x4d455441, "META"),
    desc = one UTF-8 JSON object, padded with spaces to a reserved size

Readers that do not know the owner skip it (gdb, lldb, elfutils, pystack and
drgn read only "CORE"/"LINUX"/"GNU" notes).  The note is written with the
header, before the memory is copied; the facts known only afterwards (pause
and wall time, unreadable ranges) are filled in by rewriting the note in place
once the copy is done, which is why its size is reserved.  A compressed core
is a stream that cannot be rewritten: its note keeps "final": false, and the
sidecar has the whole record.

Keys of the JSON object (format 1); every key is always present:

    format          1
    snapcore        snapcore version
    final           true once the post-copy keys hold their values
    time            when the snapshot began, ISO 8601 UTC (ms);  time_unix: whole seconds
    host            node name
    mode            "normal", or "all", "mini", "max-size" joined by "+" ("mini+max-size")
    reason          free text given by the user (--reason), or null
    trigger         what started the snapshot: "cli", "api", "self", "tree", "run", "pytest"
    live            true when memory was copied from a live (forked) image
    live_fallback   why live mode was asked for but not used, or null
    compress        "zstd" when the core is a zstandard stream, else null
    bundle          true when the core was taken for a bundle (--bundle)
    stop_timeout    seconds the freeze was allowed to take
    snapcore_argv   snapcore's own command line (null through the API)
    pid, comm, cmdline (list), cwd, exe, uid, gid
    limits          {name: [soft, hard]} from /proc/PID/limits ("unlimited" kept)
    cgroup          lines of /proc/PID/cgroup
    coredump_filter the mask applied (hex string); filter_source "target" | "option"
    threads         [{tid, ns_tid, name, state, snapcore, kernel, python}] (state:
                    /proc letter before the freeze; ns_tid: the id the core's notes
                    carry, see namespaces; snapcore: true for a thread of snapcore's
                    own caller busy taking this snapshot); kernel: the kernel's view
                    (capture/kstate.py, capture/waits.py): state, wchan, stack,
                    sigblk, sigpnd, tracer, context switches, utime, stime, cpu_ns,
                    held_by_snapcore, syscall {nr, name, args, sp, pc} | null, and
                    futex {addr, words_at, words} / pollfds / selectfds;
                    python (CPython 3.11-3.13, else null): ident, holds_gil,
                    frames [{name, file, line}] innermost first, locks
    kernel          the process's fds {fd: {target, mode}}, fds_omitted, epoll
                    {fd: [watched fds]}, children, unix_peers {inode: peer inode}
    python          the interpreter: version, runtime, gil {address, size, locked,
                    holder}, errors; null for a process without CPython
    root            the target's root directory as snapcore saw it (/proc/PID/root:
                    "/" too for the root of a mount namespace snapcore cannot reach)
    ns_pid          [the pid in snapcore's pid namespace, ..., in the target's own]
                    (NSpid); one entry when the target is in snapcore's namespace
    namespaces      {"pid", "mnt", "user", "net", ...: "pid:[4026531836]" ...} the
                    target's, and "shared": the names of those it shares with snapcore.
                    A core of a process in another pid namespace carries its own pids
                    (the last of ns_pid, the threads' ns_tid), as the kernel's does
    max_size        --max-size bytes or null
    truncated       true when --max-size dropped memory
    dropped         [{start, end, bytes, why}] dumped bytes left out by --mini/--max-size
    pause_seconds   how long the target was stopped (null until final)
    wall_seconds    the whole snapshot (null until final)
    unreadable      [{start, len, errno}] ranges no reader could fetch (holes)
    unreadable_omitted   how many more were not listed (0)
"""

import datetime
import json
import os
import re
import socket

from ._version import __version__
from .procfs import parse_cmdline

SNAPCORE_OWNER = "SNAPCORE"
NT_SNAPCORE_METADATA = 0x4D455441
FORMAT = 1
RESERVE_EXTRA = 2048  # room left in the note for the post-copy keys
RESERVE_UNIT = 4096  # the reserved size is a multiple of this, so that cores that
# differ only in short values (compressed or not) have the
# same layout


def _read(path, binary=False):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if binary else data.decode("utf-8", "surrogateescape")


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def parse_limits(text):
    """/proc/PID/limits -> {"max_core_file_size": [soft, hard], ...}."""
    out = {}
    if not text:
        return out
    for line in text.splitlines()[1:]:
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) < 3:
            continue
        key = re.sub(r"[^a-z0-9]+", "_", parts[0].lower()).strip("_")
        out[key] = [parts[1], parts[2]]
    return out


NAMESPACES = ("pid", "mnt", "user", "net", "ipc", "uts", "cgroup", "time")


def namespace_facts(pid):
    """{root, ns_pid, namespaces} of the process (see the record's keys)."""
    status = _read(f"/proc/{pid}/status") or ""
    m = re.search(r"^NSpid:\s*(.*)$", status, re.M)
    ns_pid = [int(x) for x in m.group(1).split()] if m else [pid]
    spaces, shared = {}, []
    for name in NAMESPACES:
        theirs = _readlink(f"/proc/{pid}/ns/{name}")
        if theirs is None:
            continue
        spaces[name] = theirs
        if theirs == _readlink(f"/proc/self/ns/{name}"):
            shared.append(name)
    spaces["shared"] = shared
    return {"root": _readlink(f"/proc/{pid}/root"), "ns_pid": ns_pid, "namespaces": spaces}


def process_facts(pid):
    """What /proc says about the process, read before the freeze (no pause cost)."""
    cmdline = parse_cmdline(_read(f"/proc/{pid}/cmdline", binary=True) or b"")
    cgroup = _read(f"/proc/{pid}/cgroup")
    comm = _read(f"/proc/{pid}/comm")
    return {
        "pid": pid,
        "comm": comm.rstrip("\n") if comm is not None else None,
        "cmdline": cmdline,
        "cwd": _readlink(f"/proc/{pid}/cwd"),
        "exe": _readlink(f"/proc/{pid}/exe"),
        "limits": parse_limits(_read(f"/proc/{pid}/limits")),
        "cgroup": cgroup.splitlines() if cgroup else [],
        **namespace_facts(pid),
    }


def new_record(*, facts, uid, gid, options, filt, threads, selection, started):
    """The pre-copy record (a dict in the documented key order)."""
    when = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
    rec = {
        "format": FORMAT,
        "snapcore": __version__,
        "final": False,
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time_unix": int(started),
        "host": socket.gethostname(),
        "mode": options.mode,
        "reason": options.reason,
        "trigger": options.trigger,
        "snapcore_argv": list(options.argv) if options.argv is not None else None,
        "live": options.live,
        "live_fallback": None,
        "compress": options.compress,
        "bundle": options.bundle,
        "stop_timeout": options.stop_timeout,
    }
    rec.update(facts)
    rec.update(
        {
            "uid": uid,
            "gid": gid,
            "coredump_filter": f"{filt:#x}",
            "filter_source": "option" if options.coredump_filter is not None else "target",
            "threads": threads,
            "max_size": selection.max_size,
            "truncated": selection.truncated,
            "dropped": [d.to_json() for d in selection.dropped],
            "pause_seconds": None,
            "wall_seconds": None,
            "unreadable": [],
            "unreadable_omitted": 0,
        }
    )
    return rec


def finalize(rec, *, pause, wall, unreadable, unreadable_omitted=0, live=None, live_fallback=None):
    rec = dict(rec)
    if live is not None:
        rec["live"] = live
        rec["live_fallback"] = live_fallback
    rec.update(
        {
            "final": True,
            "pause_seconds": round(pause, 6),
            "wall_seconds": round(wall, 6),
            "unreadable": [{"start": a, "len": n, "errno": e} for a, n, e in unreadable],
            "unreadable_omitted": unreadable_omitted,
        }
    )
    return rec


def encode(rec):
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=True).encode()


def note_desc(rec, size=None):
    """The note's desc: JSON padded with spaces to size (default: reserve room)."""
    data = encode(rec)
    if size is None:
        size = -(-(len(data) + RESERVE_EXTRA) // RESERVE_UNIT) * RESERVE_UNIT
    if len(data) > size:
        raise ValueError("metadata does not fit the reserved note")
    return data + b" " * (size - len(data))


def fit_final(rec, size, **final):
    """note_desc of the final record, listing only as many unreadable ranges as fit."""
    unreadable = list(final.pop("unreadable"))
    omitted = final.pop("unreadable_omitted", 0)
    while True:
        full = finalize(rec, unreadable=unreadable, unreadable_omitted=omitted, **final)
        data = encode(full)
        if len(data) <= size:
            return data + b" " * (size - len(data))
        if not unreadable:
            return None
        cut = max(1, len(unreadable) // 4)
        unreadable = unreadable[:-cut]
        omitted += cut


def parse_note(desc):
    """The record from a SNAPCORE note's desc, or None if it is not valid JSON."""
    try:
        value = json.loads(bytes(desc).decode("utf-8").strip().rstrip("\0"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
