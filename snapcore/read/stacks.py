"""Short stack summaries of cores, from pystack (Python processes) or the first
native unwinder that works (unwind.py: eu-stack, drgn, gdb).

Used by `snapcore run` and the pytest plugin to say where each process of a
hung tree was.  Nothing here is required: without the tools, no summary.

    summarize(core, exe, python) -> ("pystack", ["thread 123: inner (f.py:3) <- outer (f.py:9)"])
"""

import os
import re
import shlex
import shutil
import sys

from . import unwind

MAX_FRAMES = 4

_PYSTACK_THREAD = re.compile(r"^Traceback for thread (\d+)")
_PYSTACK_FRAME = re.compile(r'^\s+\(Python\) File "([^"]*)", line (\d+), in (.+)$')


def shown_cmdline(argv, limit=80):
    """argv as a shell would take it, on one line, cut to limit characters."""
    text = " ".join(shlex.quote(a) for a in argv).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pystack_path():
    """pystack next to this interpreter (a venv's bin) or on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "pystack")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("pystack")


def python_stacks(core, exe=None):
    """{tid: [(func, file, line) innermost first]} from pystack, or None."""
    tool = pystack_path()
    if not tool:
        return None
    argv = [tool, "core", core] + ([exe] if exe else [])
    out = unwind.run_tool(argv)
    if out is None:
        return None
    stacks, cur = {}, None
    for line in out.splitlines():
        m = _PYSTACK_THREAD.match(line)
        if m:
            cur = stacks.setdefault(int(m.group(1)), [])
            continue
        m = _PYSTACK_FRAME.match(line)
        if m and cur is not None:
            cur.append((m.group(3), m.group(1), int(m.group(2))))
    for tid in stacks:
        stacks[tid].reverse()  # pystack prints the outermost first
    return stacks or None


def _frame(func, where, line):
    if line is not None:
        return f"{func} ({os.path.basename(where)}:{line})"
    return f"{func} ({where})" if where and func == "??" else func


# the standard library and installed packages: collapsed in summaries
_SNAPCORE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY = re.compile(r"/lib/python\d\.\d+/|/site-packages/|/dist-packages/|^<frozen ")


def _pick(frames, max_frames):
    """The innermost frame, then the innermost frames of the program's own code.

    A hung test sits in subprocess.py or threading.py; what matters is the
    test function that called it, several library frames further out.
    """
    if not frames:
        return []
    picked = [frames[0]]
    own = [
        f
        for f in frames[1:]
        if f[2] is None or not (_LIBRARY.search(f[1]) or f[1].startswith(_SNAPCORE))
    ]
    if not own:
        own = frames[1:]
    for f in own[: max_frames - 1]:
        if frames.index(f) > frames.index(picked[-1]) + 1:
            picked.append(None)  # frames left out
        picked.append(f)
    if frames.index(picked[-1]) < len(frames) - 1:
        picked.append(None)
    return picked


def summarize(core, exe=None, python=False, max_frames=MAX_FRAMES):
    """(tool, ["thread TID: innermost <- caller <- ...", ...]); (None, []) without tools.

    Frames run from the innermost out; "..." stands for frames left out
    (library frames of a Python stack, or frames past max_frames).
    """
    stacks = python_stacks(core, exe) if python else None
    source = "pystack"
    if not stacks:
        source, names = unwind.native_stacks(core, exe)
        stacks = {tid: [(n, "", None) for n in frames] for tid, frames in names.items()}
    if not stacks:
        return None, []
    lines = []
    for tid in sorted(stacks):
        frames = stacks[tid]
        if not frames:
            continue
        if source == "pystack":
            picked = _pick(frames, max_frames)
        else:
            picked = frames[:max_frames] + ([None] if len(frames) > max_frames else [])
        lines.append(
            f"thread {tid}: " + " <- ".join("..." if f is None else _frame(*f) for f in picked)
        )
    return source, lines


def summarize_tree(tree_processes, max_processes=16):
    """{pid: (tool, [lines])} for the processes of a tree snapshot that have a core."""
    out = {}
    for p in tree_processes[:max_processes]:
        if p.core:
            out[p.pid] = summarize(p.core, p.exe, p.python)
    return out
