"""snapcore why: verdicts on real hung processes (tests/targets/hang.c, pyhang.py).

Each test starts real processes that hang in a known way, waits (bounded)
until their threads sit in the expected system calls, asks `snapcore why`
through the command line, and checks the verdict against what the target
printed (its tids, its lock addresses).  Every target is killed and reaped
by the spawn fixture; every test checks the target still hangs as before:
alive, not stopped, not traced.  Readers other than snapcore are the oracles
where one exists: pystack for Python stacks, gcore and the kernel for cores
without snapcore's note.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support.hangs import (
    PYHANG,
    X86_64_ACCEPT,
    X86_64_CLOCK_NANOSLEEP,
    X86_64_FUTEX,
    X86_64_READ,
    X86_64_WAIT4,
    assert_hangs_on,
    kill_quietly,
    note_frames,
    pystack_frames,
    pythons,
    shown,
    thread_of,
    wait_in,
    why_json,
)
from support.oracles import kernel_core_path, raw_notes
from support.procs import (
    assert_runs_on,
    assert_untraced,
    run,
    snapcore_cli,
    task_states,
    wait_all_stopped,
)
from support.strict import missing, need_tool
from support.targets import target_path

PYTHONS = pythons()
KEYS = {"verdict", "summary", "deadlocks", "groups", "processes"}


def spawn_hang(spawn, mode, *args, syscalls=(X86_64_FUTEX,), **kw):
    t = spawn("hang", mode, *args, **kw)
    wait_in(t.pid, t.info["tids"], syscalls)
    return t


def spawn_py(spawn, mode, version="3.11", syscalls=(X86_64_FUTEX,), main=(X86_64_READ,)):
    if version not in PYTHONS:
        missing(f"no CPython {version} here")
    t = spawn([PYTHONS[version], PYHANG, mode])
    wait_in(t.pid, t.info["tids"], syscalls)
    wait_in(t.pid, [t.pid], main)
    return t


def assert_cycle(result, tids, kind, addresses):
    assert result["verdict"] == "deadlock", shown(result)
    [cycle] = result["deadlocks"]
    assert sorted(n["tid"] for n in cycle) == sorted(tids), shown(result)
    assert {n["waits_for"]["kind"] for n in cycle} == {kind}, shown(result)
    assert sorted(n["waits_for"]["address"] for n in cycle) == sorted(addresses)
    # each waits for the other: the owner of one's lock is the other thread
    for n in cycle:
        other = [t for t in tids if t != n["tid"]][0]
        assert n["waits_for"]["owner"] == {"pid": n["pid"], "tid": other}, shown(result)


def test_c_mutex_deadlock(spawn):
    t = spawn_hang(spawn, "mutex")
    result = why_json(t.pid)
    assert set(result) >= KEYS
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    assert result["summary"].startswith("deadlock: ")
    # thread 1 holds A and waits for B: its edge names B's address and thread 2
    one, two = t.info["tids"]
    a, b = t.info["mutexes"]
    _, th = thread_of(result, one)
    assert th["waits_for"]["address"] == b and th["waits_for"]["owner"]["tid"] == two
    assert th["kernel"]["syscall"]["name"] == "futex" and th["kernel"]["state"] == "S"
    assert th["class"] == "sleeping" and th["timeout"] is False
    assert "lock_ab" in th["stack"]  # native unwinding reached the thread function
    assert_hangs_on(t, t.info["tids"])


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_python_rlock_deadlock(spawn, version):
    t = spawn_py(spawn, "rlock", version)
    result = why_json(t.pid)
    assert_cycle(result, t.info["tids"], "rlock", t.info["locks"])
    p, _ = thread_of(result, t.info["tids"][0])
    assert p["python"]["version"] == version and p["python"]["source"] == "note"
    for tid, func in zip(t.info["tids"], ("rlock_ab", "rlock_ba")):
        _, th = thread_of(result, tid)
        assert th["python_stack"][0].startswith(f"{func} ({PYHANG}:"), th["python_stack"]
    # the main thread reads stdin, a pipe held outside the snapshot: not part of it
    _, main = thread_of(result, t.pid)
    assert main["waits_for"]["kind"] == "pipe" and main["waits_for"]["owner"] is None
    assert_hangs_on(t, t.info["tids"])


def test_python_lock_held_by_a_sleeper_is_blocked(spawn):
    t = spawn_py(spawn, "lock", syscalls=(X86_64_FUTEX, X86_64_CLOCK_NANOSLEEP))
    holder, waiter = t.info["tids"]
    wait_in(t.pid, [holder], (X86_64_CLOCK_NANOSLEEP,))
    result = why_json(t.pid)
    assert result["verdict"] == "blocked", shown(result)
    _, th = thread_of(result, waiter)
    edge = th["waits_for"]
    assert edge["kind"] == "lock" and edge["address"] == t.info["locks"][0]
    assert edge["owner"] is None  # a plain Lock records no owner: none is invented
    assert [c["tid"] for c in edge["candidates"]] == [holder]
    assert "holder (pyhang.py:" in edge["candidates"][0]["why"]
    # the chain: the waiter, the lock, then the candidate holder and what it does
    assert f"thread {waiter}" in result["summary"]
    assert f"thread {holder}" in result["summary"] and "clock_nanosleep" in result["summary"]
    assert result["deadlocks"] == []
    assert_hangs_on(t, t.info["tids"])


def test_parent_waiting_for_a_child_that_reads_its_pipe(spawn):
    t = spawn("hang", "waitpipe")
    child = t.info["child"]
    try:
        wait_in(t.pid, [t.pid], (X86_64_WAIT4,))
        wait_in(child, [child], (X86_64_READ,))
        result = why_json(t.pid, "--tree")
        assert result["verdict"] == "deadlock", shown(result)
        [cycle] = result["deadlocks"]
        by_pid = {n["pid"]: n["waits_for"] for n in cycle}
        assert sorted(by_pid) == sorted([t.pid, child])
        assert by_pid[t.pid]["kind"] == "child"
        assert by_pid[t.pid]["owner"] == {"pid": child, "tid": None}
        assert by_pid[child]["kind"] == "pipe"
        assert by_pid[child]["owner"] == {"pid": t.pid, "tid": None}
        assert by_pid[child]["target"].startswith("pipe:[")
        assert_hangs_on(t, [t.pid])
        with open(f"/proc/{child}/status") as f:
            status = f.read()
        assert "TracerPid:\t0\n" in status and "State:\tS" in status
    finally:
        kill_quietly(child)


def test_64_workers_in_the_same_wait_are_one_group(spawn):
    t = spawn_hang(spawn, "workers", "64")
    result = why_json(t.pid)
    [group] = [g for g in result["groups"] if g["count"] == 64]
    assert sorted(tid for _, tid in group["threads"]) == sorted(t.info["tids"])
    assert "worker_wait" in group["stack"]
    assert len(result["groups"]) == 2  # the workers, and the main thread in pause()
    assert result["verdict"] == "idle", shown(result)  # a condition nobody signals
    assert_hangs_on(t, t.info["tids"])


def test_spinning_process_is_busy(spawn):
    t = spawn("hang", "spin")
    result = why_json(t.pid)
    assert result["verdict"] == "busy", shown(result)
    _, th = thread_of(result, t.pid)
    assert th["class"] == "on-cpu" and th["kernel"]["state"] == "R"
    assert_hangs_on(t)


def test_idle_server_in_accept(spawn):
    t = spawn_hang(spawn, "accept", syscalls=(X86_64_ACCEPT,))
    result = why_json(t.pid)
    assert result["verdict"] == "idle", shown(result)
    _, th = thread_of(result, t.pid)
    assert th["waits_for"]["kind"] == "accept" and th["waits_for"]["fd"] == t.info["fd"]
    assert_hangs_on(t)


def test_rwlock_writer_and_mutex_deadlock(spawn):
    t = spawn_hang(spawn, "rwlock")
    main, writer = t.info["tids"]
    result = why_json(t.pid)
    assert result["verdict"] == "deadlock", shown(result)
    [cycle] = result["deadlocks"]
    edges = {n["tid"]: n["waits_for"] for n in cycle}
    assert edges[main]["kind"] == "rwlock" and edges[main]["address"] == t.info["rwlock"]
    assert edges[main]["owner"]["tid"] == writer
    assert edges[writer]["kind"] == "mutex" and edges[writer]["address"] == t.info["mutex"]
    assert edges[writer]["owner"]["tid"] == main
    assert_hangs_on(t, t.info["tids"])


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_mini_python_cores_read_by_pystack(spawn, tmp_path, version):
    """pystack reads --mini cores; the stacks in the note are pystack's own."""
    t = spawn_py(spawn, "rlock", version)
    mini, full = tmp_path / "mini.core", tmp_path / "full.core"
    for path, extra in ((mini, ["--mini"]), (full, [])):
        p = snapcore_cli(t.pid, "-o", path, "-q", *extra)
        assert p.returncode == 0, p.stderr
    r = run([os.path.join(os.path.dirname(sys.executable), "pystack"), "core", str(mini)])
    assert r.returncode == 0, r.stdout + r.stderr
    for func in ("rlock_ab", "rlock_ba", "main"):
        assert f"in {func}" in r.stdout, r.stdout
    [desc] = [d for n, _, d in raw_notes(str(mini)) if n == "SNAPCORE"]
    ours = note_frames(json.loads(bytes(desc).decode().strip()))
    theirs = pystack_frames(full, PYTHONS[version])
    assert set(ours) == set(theirs) == {t.pid, *t.info["tids"]}
    assert ours == theirs
    assert pystack_frames(mini, PYTHONS[version]) == theirs
    assert os.path.getsize(mini) < os.path.getsize(full) / 4
    assert_hangs_on(t, t.info["tids"])


def test_gcore_without_note_still_finds_the_mutex_cycle(spawn, tmp_path):
    need_tool("gcore")
    t = spawn_hang(spawn, "mutex")
    prefix = tmp_path / "g"
    r = run(["gcore", "-o", str(prefix), str(t.pid)], timeout=120)
    assert r.returncode == 0, r.stderr
    core = f"{prefix}.{t.pid}"
    assert not [n for n, _, _ in raw_notes(core) if n == "SNAPCORE"]
    result = why_json(core)
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    [proc] = result["processes"]
    assert proc["kernel_state"] == "unknown"
    _, th = thread_of(result, t.info["tids"][0])
    assert th["kernel"]["state"] == "?" and th["kernel"]["source"] == "registers"
    assert th["kernel"]["syscall"]["name"] == "futex"  # from orig_rax
    assert sum(g["count"] for g in result["groups"]) == 3
    assert_hangs_on(t, t.info["tids"])


def test_gcore_of_python_deadlock_walks_memory(spawn, tmp_path):
    need_tool("gcore")
    t = spawn_py(spawn, "rlock")
    r = run(["gcore", "-o", str(tmp_path / "g"), str(t.pid)], timeout=120)
    assert r.returncode == 0, r.stderr
    result = why_json(f"{tmp_path / 'g'}.{t.pid}")
    assert_cycle(result, t.info["tids"], "rlock", t.info["locks"])
    p, _ = thread_of(result, t.pid)
    assert p["python"]["source"] == "memory"
    assert_hangs_on(t, t.info["tids"])


def test_kernel_core_without_note(spawn, tmp_path):
    with open("/proc/sys/kernel/core_pattern") as f:
        if f.read().strip() != "core":
            missing("kernel.core_pattern is not 'core': no kernel core in the cwd")
    workdir = tmp_path / "k"
    workdir.mkdir()
    t = spawn(
        "hang",
        "mutex",
        cwd=str(workdir),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (-1, -1)),
    )
    wait_in(t.pid, t.info["tids"], (X86_64_FUTEX,))
    os.kill(t.pid, signal.SIGABRT)
    assert t.proc.wait(timeout=60) == -signal.SIGABRT
    core = kernel_core_path(str(workdir), t.pid)
    result = why_json(core)
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    assert result["processes"][0]["kernel_state"] == "unknown"


def test_compressed_core_and_a_kept_tree(spawn, tmp_path):
    t = spawn_hang(spawn, "mutex")
    core = tmp_path / "m.core.zst"
    p = snapcore_cli(t.pid, "-o", core, "--mini", "--compress", "zstd", "-q")
    assert p.returncode == 0, p.stderr
    assert_cycle(why_json(core), t.info["tids"], "mutex", t.info["mutexes"])
    keep = tmp_path / "kept"
    result = why_json(t.pid, "--tree", "--keep", keep)
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    assert (keep / "manifest.json").is_file() and (keep / f"core.{t.pid}").is_file()
    # the tree directory reads the same afterwards
    assert why_json(keep)["deadlocks"] == result["deadlocks"]
    assert_hangs_on(t, t.info["tids"])


def test_samples_say_stuck_or_slow(spawn):
    stuck = spawn_hang(spawn, "mutex")
    result = why_json(stuck.pid, "--samples", "2", "--interval", "0.2")
    assert result["samples"] == 2
    [deadlocked] = [
        g for g in result["groups"] if [stuck.pid, stuck.info["tids"][0]] in g["threads"]
    ]
    # (each snapshot costs a frozen thread some microseconds of CPU, never a ms)
    assert deadlocked["progress"] == "stuck" and deadlocked["cpu_ns_used"] < 1_000_000
    spinner = spawn("hang", "spin")
    result = why_json(spinner.pid, "--samples", "3", "--interval", "0.2")
    [group] = result["groups"]
    assert group["progress"] == "slow" and group["cpu_ns_used"] > 0
    assert_hangs_on(stuck, stuck.info["tids"])
    assert_hangs_on(spinner)


def test_info_shows_each_threads_kernel_view(spawn, tmp_path):
    t = spawn_hang(spawn, "mutex")
    core = tmp_path / "c"
    assert snapcore_cli(t.pid, "-o", core, "--mini", "-q").returncode == 0
    p = snapcore_cli("info", core, "--json")
    assert p.returncode == 0, p.stderr
    threads = {th["tid"]: th for th in json.loads(p.stdout)["threads"]}
    for tid in t.info["tids"]:
        k = threads[tid]["kernel"]
        assert k["state"] == "S" and k["wchan"]
        assert k["syscall"]["name"] == "futex" and k["syscall"]["nr"] == X86_64_FUTEX
        assert len(k["syscall"]["args"]) == 6 and k["syscall"]["args"][0] in t.info["mutexes"]
        assert k["sigblk"] is not None and k["voluntary_ctxt_switches"] >= 1
    text = snapcore_cli("info", core).stdout
    assert "futex, wchan " in text
    assert_hangs_on(t, t.info["tids"])


def test_errors_are_one_line(tmp_path):
    bad = tmp_path / "not-a-core"
    bad.write_text("hello")
    for args, code in (((bad,), 1), ((tmp_path,), 1), ((), 2), ((bad, "--samples", "2"), 2)):
        p = snapcore_cli("why", *args)
        assert p.returncode == code, (args, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("snapcore: error: "), p.stderr
        assert "Traceback" not in p.stderr
    p = snapcore_cli("why", "999999999")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr


def test_why_of_a_process_without_unwinders(spawn, tmp_path):
    """No eu-stack, drgn or gdb: kernel state and the symbol at each pc, no traceback."""
    t = spawn_hang(spawn, "mutex")
    env = dict(os.environ, PATH="/nonexistent", SNAPCORE_WHY_UNWINDERS="none")
    p = subprocess.run(
        [sys.executable, "-m", "snapcore", "why", str(t.pid), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["processes"][0]["unwinder"] is None
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    _, th = thread_of(result, t.info["tids"][0])
    assert th["stack"] and th["stack"][0].startswith("__lll_lock_wait"), th["stack"]
    assert_hangs_on(t, t.info["tids"])


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_gil_held_by_a_thread_blocked_on_a_mutex(spawn, version):
    """ctypes.PyDLL keeps the GIL through a C call that blocks on a mutex whose owner
    waits for the GIL: a deadlock through the GIL."""
    # (the main thread reads stdin, or waits for the GIL too)
    t = spawn_py(spawn, "gil", version, main=(X86_64_READ, X86_64_FUTEX))
    c_holder, gil_holder = t.info["tids"]
    result = why_json(t.pid)
    assert result["verdict"] == "deadlock", shown(result)
    [cycle] = result["deadlocks"]
    edges = {n["tid"]: n["waits_for"] for n in cycle}
    assert edges[c_holder]["kind"] == "gil"
    assert edges[c_holder]["owner"] == {"pid": t.pid, "tid": gil_holder}
    assert edges[gil_holder]["kind"] == "mutex" and edges[gil_holder]["address"] == t.info["mutex"]
    assert edges[gil_holder]["owner"] == {"pid": t.pid, "tid": c_holder}
    p, _ = thread_of(result, t.pid)
    assert p["python"]["gil"]["locked"] and p["python"]["gil"]["holder"] == gil_holder
    assert_hangs_on(t, t.info["tids"])


def test_stopped_process(spawn):
    t = spawn_hang(spawn, "accept", syscalls=(X86_64_ACCEPT,))
    os.kill(t.pid, signal.SIGSTOP)
    try:
        wait_all_stopped(t.pid)
        result = why_json(t.pid)
        _, th = thread_of(result, t.pid)
        assert th["class"] == "stopped" and th["kernel"]["state"] == "T"
        assert result["verdict"] == "idle" and "stopped (job control" in result["summary"]
        wait_all_stopped(t.pid)  # snapcore left it in its job-control stop
    finally:
        os.kill(t.pid, signal.SIGCONT)
    wait_in(t.pid, [t.pid], (X86_64_ACCEPT,))
    assert_hangs_on(t)


def test_process_that_cannot_be_frozen_gets_a_verdict_from_proc(spawn):
    """A thread in uninterruptible sleep (a vfork parent) cannot be stopped: the verdict
    comes from /proc, naming the D thread and its kernel stack."""
    t = spawn("mt")
    assert t.command("vfork 20") == "ok"
    deadline = time.monotonic() + 10
    while "D" not in {s for s, _ in task_states(t.pid).values()}:
        assert time.monotonic() < deadline, task_states(t.pid)
        time.sleep(0.01)
    [stuck] = [tid for tid, (s, _) in task_states(t.pid).items() if s == "D"]
    result = why_json(t.pid, "--stop-timeout", "0.5")
    assert result["verdict"] == "blocked", shown(result)
    [proc] = result["processes"]
    assert proc["unfrozen"] and str(stuck) in proc["unfrozen"] and proc["core"] is None
    _, th = thread_of(result, stuck)
    assert th["class"] == "uninterruptible" and th["waits_for"]["kind"] == "kernel"
    assert th["kernel"]["stack"] and th["kernel"]["syscall"]["name"] == "vfork"
    assert result["summary"].startswith(f"blocked: thread {stuck} ")
    assert "not frozen" in result["summary"]
    assert_untraced(t.pid, stopped_ok=False)
    assert_runs_on(t)


def test_process_traced_by_someone_else(spawn):
    """ptrace allows one tracer: with strace attached the verdict comes from /proc,
    and says who traces it."""
    need_tool("strace")
    t = spawn_hang(spawn, "mutex")
    strace = subprocess.Popen(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(t.pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not all(tr == strace.pid for _, tr in task_states(t.pid).values()):
            assert time.monotonic() < deadline, task_states(t.pid)
            time.sleep(0.02)
        result = why_json(t.pid)
        [proc] = result["processes"]
        assert proc["unfrozen"] == f"traced by PID {strace.pid} (strace)"
        # the mutex owners come from the running process's memory
        assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
        _, th = thread_of(result, t.info["tids"][0])
        assert th["kernel"]["tracer"] == strace.pid
        assert th["kernel"]["syscall"]["name"] == "futex"
        assert f"traced by PID {strace.pid} (strace)" in result["summary"]
    finally:
        strace.terminate()
        strace.wait(timeout=10)
    assert_hangs_on(t, t.info["tids"])


def test_why_of_a_bundle_whose_binary_is_gone(spawn, tmp_path):
    """why BUNDLE: the verdict, and native stacks unwound with the bundle's copy of an
    executable that no longer exists at its path on this machine."""
    exe = tmp_path / "hang-copy"
    shutil.copy(target_path("hang"), exe)
    t = spawn([str(exe), "mutex"])
    wait_in(t.pid, t.info["tids"], (X86_64_FUTEX,))
    bundle = tmp_path / "b.tar.zst"
    p = run([sys.executable, "-m", "snapcore", str(t.pid), "--bundle", "-o", str(bundle), "-q"])
    assert p.returncode == 0, p.stderr
    assert_hangs_on(t, t.info["tids"])
    os.unlink(exe)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    p = run([sys.executable, "-m", "snapcore", "why", str(bundle), "--json"], env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert_cycle(result, t.info["tids"], "mutex", t.info["mutexes"])
    for tid, func in zip(t.info["tids"], ("lock_ab", "lock_ba")):
        _, th = thread_of(result, tid)
        assert func in th["stack"], th["stack"]
