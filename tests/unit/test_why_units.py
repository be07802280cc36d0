"""Units of `snapcore why`, each against an independent oracle where one exists:
CPython's DWARF (through gdb) for the structure layouts, CPython itself for
line numbers, the kernel for socket peers and system call numbers."""

import errno
import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import snapcore.cpython
from snapcore import _native
from snapcore.arch import I386, X86_64
from snapcore.arch.cpython import LAYOUTS
from snapcore.capture import kstate, sockdiag
from snapcore.read.threadstate import classify, timed

from support.procs import have
from support.strict import missing

# layout field -> the C expression gdb evaluates for it, per version
_COMMON = {
    "runtime_size": "sizeof(_PyRuntimeState)",
    "runtime_interpreters_head": "&((_PyRuntimeState *)0)->interpreters.head",
    "interp_size": "sizeof(PyInterpreterState)",
    "interp_next": "&((PyInterpreterState *)0)->next",
    "interp_id": "&((PyInterpreterState *)0)->id",
    "interp_threads_head": "&((PyInterpreterState *)0)->threads.head",
    "interp_builtins": "&((PyInterpreterState *)0)->builtins",
    "interp_sysdict": "&((PyInterpreterState *)0)->sysdict",
    "interp_gc_collecting": "&((PyInterpreterState *)0)->gc.collecting",
    "tstate_next": "&((PyThreadState *)0)->next",
    "tstate_interp": "&((PyThreadState *)0)->interp",
    "tstate_thread_id": "&((PyThreadState *)0)->thread_id",
    "tstate_native_thread_id": "&((PyThreadState *)0)->native_thread_id",
    "frame_size": "&((_PyInterpreterFrame *)0)->localsplus",
    "frame_previous": "&((_PyInterpreterFrame *)0)->previous",
    "frame_owner": "&((_PyInterpreterFrame *)0)->owner",
    "frame_stacktop": "&((_PyInterpreterFrame *)0)->stacktop",
    "code_size": "sizeof(PyCodeObject)",
    "code_nlocalsplus": "&((PyCodeObject *)0)->co_nlocalsplus",
    "code_stacksize": "&((PyCodeObject *)0)->co_stacksize",
    "code_firstlineno": "&((PyCodeObject *)0)->co_firstlineno",
    "code_localsplusnames": "&((PyCodeObject *)0)->co_localsplusnames",
    "code_filename": "&((PyCodeObject *)0)->co_filename",
    "code_name": "&((PyCodeObject *)0)->co_name",
    "code_qualname": "&((PyCodeObject *)0)->co_qualname",
    "code_linetable": "&((PyCodeObject *)0)->co_linetable",
    "code_adaptive": "&((PyCodeObject *)0)->co_code_adaptive",
    "ascii_size": "sizeof(PyASCIIObject)",
    "compact_size": "sizeof(PyCompactUnicodeObject)",
    "gil_size": "sizeof(struct _gil_runtime_state)",
    "gil_last_holder": "&((struct _gil_runtime_state *)0)->last_holder",
    "gil_locked": "&((struct _gil_runtime_state *)0)->locked",
    "str_length": "&((PyASCIIObject *)0)->length",
    "str_state": "&((PyASCIIObject *)0)->state",
    "bytes_data": "&((PyBytesObject *)0)->ob_sval",
    "tuple_items": "&((PyTupleObject *)0)->ob_item",
    "type_name": "&((PyTypeObject *)0)->tp_name",
    "cfunc_self": "&((PyCFunctionObject *)0)->m_self",
    "lock_lock": "&((lockobject *)0)->lock_lock",
    "rlock_owner": "&((rlockobject *)0)->rlock_owner",
    "rlock_count": "&((rlockobject *)0)->rlock_count",
    "lock_size": "sizeof(lockobject)",
    "rlock_size": "sizeof(rlockobject)",
}
_BY_VERSION = {
    (3, 11): {
        "runtime_gil": "&((_PyRuntimeState *)0)->ceval.gil",
        "runtime_tstate_current": "&((_PyRuntimeState *)0)->gilstate.tstate_current",
        "interp_modules": "&((PyInterpreterState *)0)->modules",
        "tstate_size": "sizeof(PyThreadState)",
        "tstate_cframe": "&((PyThreadState *)0)->cframe",
        "cframe_current_frame": "&((_PyCFrame *)0)->current_frame",
        "frame_code": "&((_PyInterpreterFrame *)0)->f_code",
        "frame_instr": "&((_PyInterpreterFrame *)0)->prev_instr",
    },
    (3, 12): {
        "interp_gil_ptr": "&((PyInterpreterState *)0)->ceval.gil",
        "interp_modules": "&((PyInterpreterState *)0)->imports.modules",
        "tstate_size": "sizeof(PyThreadState)",
        "tstate_cframe": "&((PyThreadState *)0)->cframe",
        "cframe_current_frame": "&((_PyCFrame *)0)->current_frame",
        "frame_code": "&((_PyInterpreterFrame *)0)->f_code",
        "frame_instr": "&((_PyInterpreterFrame *)0)->prev_instr",
        "frame_owner_cstack": "FRAME_OWNED_BY_CSTACK",
    },
    (3, 13): {
        "interp_gil_ptr": "&((PyInterpreterState *)0)->ceval.gil",
        "interp_modules": "&((PyInterpreterState *)0)->imports.modules",
        "tstate_size": "sizeof(_PyThreadStateImpl)",
        "tstate_current_frame": "&((PyThreadState *)0)->current_frame",
        "frame_code": "&((_PyInterpreterFrame *)0)->f_executable",
        "frame_instr": "&((_PyInterpreterFrame *)0)->instr_ptr",
        "frame_owner_cstack": "FRAME_OWNED_BY_CSTACK",
    },
}


def _libpython(version):
    v = f"{version[0]}.{version[1]}"
    found = glob.glob(f"/root/.pyenv/versions/{v}.*/lib/libpython{v}.so.1.0")
    return found[0] if found else None


@pytest.mark.parametrize("version", sorted(LAYOUTS), ids=lambda v: f"{v[0]}.{v[1]}")
def test_cpython_layouts_match_the_dwarf(version):
    lib = _libpython(version)
    if lib is None or not have("gdb"):
        missing(f"no libpython {version} with gdb here")
    exprs = dict(_COMMON, **_BY_VERSION[version])
    script = "\n".join(
        f'print("{k}", int(gdb.parse_and_eval("(long)({e})")))' for k, e in exprs.items()
    )
    p = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", f"python\n{script}\nend", lib],
        capture_output=True,
        text=True,
        timeout=120,
    )
    got = dict(line.split() for line in p.stdout.splitlines() if line.split()[0] in exprs)
    if len(got) < len(exprs):
        missing(f"gdb could not read {lib}'s DWARF: {p.stderr[-300:]}")
    lay = LAYOUTS[version]
    assert {k: getattr(lay, k) for k in exprs} == {k: int(v) for k, v in got.items()}


PROBE = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("objects", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
import dis, json as j


def sample(a, b):  # line numbers that jump about: comprehensions, try, a multi-line return
    x = a + 1
    if x > b:
        return [i * 2 for i in range(x)]
    try:
        y = {k: v for k, v in zip(a, b)}
    except TypeError:
        y = None
    return (
        x,
        y,
    )


bad = []
codes = [sample.__code__, dis.dis.__code__, j.dumps.__code__, j.JSONEncoder.iterencode.__code__]
codes += [c for c in sample.__code__.co_consts if hasattr(c, "co_lines")]
for code in codes:
    for start, end, line in code.co_lines():
        for off in range(start, end, 2):
            if m.addr2line(code.co_linetable, code.co_firstlineno, off) != line:
                bad.append([code.co_name, off])
print(json.dumps(bad))
"""


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_addr2line_agrees_with_cpython(version):
    """The reader's line tables against each supported CPython's own co_lines(), run
    by that CPython (whichever Python runs the tests)."""
    exe = glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python{version}")
    if not exe:
        missing(f"no CPython {version}")
    objects = os.path.join(os.path.dirname(snapcore.cpython.__file__), "objects.py")
    p = subprocess.run([exe[0], "-c", PROBE, objects], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_unix_peers_from_sock_diag():
    a, b = socket.socketpair()
    listener = socket.socket(socket.AF_UNIX)
    try:
        ia, ib = os.fstat(a.fileno()).st_ino, os.fstat(b.fileno()).st_ino
        il = os.fstat(listener.fileno()).st_ino
        peers = sockdiag.unix_peers([ia, ib, il])
        if not peers:
            missing("no sock_diag for AF_UNIX in this kernel")
        assert peers == {ia: ib, ib: ia}
    finally:
        for s in (a, b, listener):
            s.close()


def test_sock_diag_parser_stops_at_done_and_raises_errors():
    done = b"\x14\x00\x00\x00\x03\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    assert sockdiag.parse_messages(done) == ([], True)
    err = b"\x14\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xfe\xff\xff\xff"
    with pytest.raises(OSError):
        sockdiag.parse_messages(err)


def test_syscall_tables():
    for name in ("futex", "wait4", "read", "accept", "epoll_wait", "clock_nanosleep"):
        assert X86_64.syscall_name(X86_64.syscall_names.index(name)) == name
    assert (X86_64.syscall_name(202), X86_64.syscall_name(61), X86_64.syscall_name(0)) == (
        "futex",
        "wait4",
        "read",
    )
    assert (I386.syscall_name(240), I386.syscall_name(3), I386.syscall_name(7)) == (
        "futex",
        "read",
        "waitpid",
    )
    assert X86_64.syscall_name(-1) is None and X86_64.syscall_name(10**6) is None
    # a thread stopped in user code: orig_rax -1
    assert X86_64.syscall_of({"orig_rax": 2**64 - 1, "rdi": 5}) == (None, [5, 0, 0, 0, 0, 0])


def test_syscall_numbers_as_the_kernel_reports_them():
    """The number /proc reports for this thread's read() is named "read"."""
    r, w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-c", "import os; os.read(0, 1)"], stdin=r)
        try:
            deadline = 200
            while deadline:
                with open(f"/proc/{child.pid}/syscall") as f:
                    first = f.read().split()[0]
                if first.isdigit() and X86_64.syscall_name(int(first)) == "read":
                    break
                deadline -= 1
                subprocess.run(["sleep", "0.02"])
            assert deadline, "the child never sat in read()"
        finally:
            child.kill()
            child.wait(timeout=10)
    finally:
        os.close(r)
        os.close(w)


def _call(name, *args):
    args = list(args) + [0] * (6 - len(args))
    return {"name": name, "args": args}


def test_timeouts_and_classes():
    assert timed(_call("futex", 0x1000, 0x80, 2, 0)) is False
    assert timed(_call("futex", 0x1000, 0x89, 0, 0x7FF0)) is True
    assert timed(_call("poll", 0, 1, 2**32 - 1)) is False  # -1: for good
    assert timed(_call("poll", 0, 1, 100)) is True
    assert timed(_call("epoll_wait", 3, 0, 1, 2**32 - 1)) is False
    assert timed(_call("clock_nanosleep")) is True
    assert timed(_call("read")) is False
    assert timed(_call("ioctl")) is None
    assert classify({"state": "R"}) == ("on-cpu", None)
    # runnable just before the freeze, in a futex wait at it (the GIL's timed wait)
    assert classify({"state": "R", "syscall": _call("futex", 1, 0x89, 0, 1)}) == (
        "sleeping",
        True,
    )
    assert classify({"state": "R", "syscall": _call("futex", 1, 0x81)}) == ("on-cpu", None)
    assert classify({"state": "D", "syscall": _call("read")}) == ("uninterruptible", False)
    assert classify({"state": "t", "tracer": 42}) == ("traced", None)
    assert classify({"state": "T"}) == ("stopped", None)
    assert classify({"state": "?", "syscall": None}) == ("user-code", None)
    assert classify({"state": "?", "syscall": _call("wait4")}) == ("in-syscall", False)


def test_kernel_stack_lines():
    text = "[<0>] futex_wait_queue+0x60/0x90\n[<0>] do_syscall_64+0x5b/0x110\n"
    assert kstate.parse_kernel_stack(text) == [
        "futex_wait_queue+0x60/0x90",
        "do_syscall_64+0x5b/0x110",
    ]
    assert kstate.parse_kernel_stack("") == []


def test_sample_of_all_threads_in_one_call_agrees_with_one_by_one(monkeypatch):
    """sample_threads() reads every thread's files in one C call; what it makes of
    them is what sample_thread() makes of each thread read alone, and a file too
    long for the C call's room is read on its own."""
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 10
        tids = [w.native_id for w in workers]
        while any(kstate.sample_thread(os.getpid(), t)["state"] != "S" for t in tids):
            assert time.monotonic() < deadline, "the workers did not block"
            time.sleep(0.01)
        pid = os.getpid()
        batch = kstate.sample_threads(pid)
        assert set(tids) <= set(batch) and pid in batch
        for t in tids:  # blocked: nothing of theirs changes between the two reads
            assert batch[t] == kstate.sample_thread(pid, t)
            assert batch[t]["wchan"] and batch[t]["stack"] and batch[t]["proc_syscall"]
        got = _native.read_task_files(pid, tids[:1], ("status", "no-such-file"), max_file=64)
        assert got[tids[0]] == [-errno.EFBIG, -errno.ENOENT]
        monkeypatch.setattr(kstate, "_MAX_FILE", 64)  # status, stat, stack: too long
        small = kstate.sample_threads(pid)
        for t in tids:
            assert small[t] == batch[t]
    finally:
        stop.set()
        for w in workers:
            w.join(10)


def test_sample_of_this_thread():
    s = kstate.sample_thread(os.getpid(), os.getpid())
    assert s["state"] == "R" and s["tracer"] == 0 and s["held_by_snapcore"] is False
    assert s["sigblk"].startswith("0x") and s["cpu_ns"] > 0
    proc = kstate.sample_process(os.getpid())
    assert proc["fds"]["0"]["target"]
    r, w = os.pipe()
    try:
        proc = kstate.sample_process(os.getpid())
        assert proc["fds"][str(r)]["mode"] == "r" and proc["fds"][str(w)]["mode"] == "w"
        assert proc["fds"][str(r)]["target"] == proc["fds"][str(w)]["target"]
    finally:
        os.close(r)
        os.close(w)
