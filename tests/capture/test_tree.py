"""snapshot_tree / snapcore PID --tree: real process trees, read back by pystack and gdb."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import snapcore

from support.oracles import gdb_frames, pystack, raw_notes
from support.procs import (
    assert_untraced,
    frozen,
    proc_state,
    snapcore_cli,
    snapcore_popen,
    stop_process,
    wait_all_stopped,
    wait_frozen,
    wait_written,
)
from support.targets import TREE, Target

GONE = {"NoSuchProcess", "TargetExited", "ZombieProcess"}
NT_PRPSINFO = 3


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def tree(tmp_path):
    """tree(fanout) -> Target of tests/targets/tree.py; every process of it is killed after."""
    started = []

    def _start(fanout="2,1"):
        t = Target([sys.executable, TREE, "--fanout", fanout], cwd=str(tmp_path))
        started.append(t)
        return t

    try:
        yield _start
    finally:
        for t in started:
            kill_all(t.info.get("pids", [])[1:])
            t.close()


def pingall(t):
    reply = t.command("pingall")
    assert reply.startswith("pongs "), reply
    return {int(k): v for k, v in json.loads(reply[6:]).items()}


def assert_tree_runs_on(t):
    """Every process untraced, not stopped, and its ticker still counting."""
    for pid in t.info["pids"]:
        assert_untraced(pid)
    first = pingall(t)
    deadline = time.monotonic() + 5
    while True:
        now = pingall(t)
        if all(now[p] > first[p] for p in first):
            return
        assert time.monotonic() < deadline, f"some process makes no progress: {first} {now}"
        time.sleep(0.01)


def test_every_process_gets_a_core_and_runs_on(tree, tmp_path):
    t = tree("2,1")  # root, 2 children, 1 grandchild each
    pids = t.info["pids"]
    assert len(pids) == 5
    out = tmp_path / "hang"
    result = snapcore.snapshot_tree(t.pid, out)
    assert_tree_runs_on(t)

    assert sorted(p.pid for p in result.processes) == sorted(pids)
    assert result.processes[0].pid == t.pid  # parents before children
    assert not result.failed, [(p.pid, p.error) for p in result.failed]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["root"] == t.pid
    by_pid = {p["pid"]: p for p in doc["processes"]}
    assert sorted(by_pid) == sorted(pids)
    for pid in pids:
        entry = by_pid[pid]
        assert entry["result"] == "ok" and entry["error"] is None
        assert entry["core"] == f"core.{pid}"
        assert (out / entry["core"]).stat().st_mode & 0o777 == 0o600
        assert entry["comm"].startswith("python")
        assert entry["cmdline"][:2] == [sys.executable, TREE]
        assert entry["python"] is True
        assert pid in entry["threads"] and len(entry["threads"]) == 2  # main + ticker
        with open(f"/proc/{pid}/stat") as f:
            assert entry["ppid"] == int(f.read().rsplit(")", 1)[1].split()[1])
    assert by_pid[t.pid]["ppid"] == os.getpid()
    for child in t.info["children"]:
        assert by_pid[child]["ppid"] == t.pid

    # an independent reader: pystack finds each process's Python stack in its core
    for pid in pids:
        p = pystack(str(out / f"core.{pid}"))
        assert p.returncode == 0, p.stderr
        want = "root_loop" if pid == t.pid else "child_loop"
        assert f"in {want}" in p.stdout and "in serve" in p.stdout, p.stdout
        assert f"pid: {pid} " in p.stdout


def test_one_failing_process_does_not_lose_the_others(tree, tmp_path):
    t = tree("2")
    zombie = int(t.command("zombie").split()[1])  # a child of the root that exited
    stopped = int(t.command("stop").split()[1])  # a child in a job-control stop
    wait_all_stopped(stopped)  # (SIGSTOP was sent; every thread takes its stop in turn)
    out = tmp_path / "hang"
    result = snapcore.snapshot_tree(t.pid, out)

    doc = json.loads((out / "manifest.json").read_text())
    by_pid = {p["pid"]: p for p in doc["processes"]}
    assert by_pid[zombie]["result"] == "error" and by_pid[zombie]["core"] is None
    assert by_pid[zombie]["error_type"] == "ZombieProcess"
    assert "zombie" in by_pid[zombie]["error"]
    assert not (out / f"core.{zombie}").exists()
    for pid in t.info["pids"]:
        assert by_pid[pid]["result"] == "ok", by_pid[pid]
        assert (out / f"core.{pid}").exists()
    assert [p.pid for p in result.failed] == [zombie]
    # the stopped child is stopped again, nobody is traced; the others run on (a thread
    # let go by the tracer re-enters the group stop once it gets a CPU)
    assert_untraced(stopped, stopped_ok=True)
    wait_all_stopped(stopped, timeout=10.0)
    for pid in t.info["pids"]:
        if pid != stopped:
            assert_untraced(pid)
    # its core says it was stopped, like the kernel's would (pr_sname 'T')
    prpsinfo = [
        d
        for n, typ, d in raw_notes(str(out / f"core.{stopped}"))
        if n == "CORE" and typ == NT_PRPSINFO
    ][0]
    assert prpsinfo[1:2] == b"T"
    os.kill(stopped, signal.SIGCONT)
    assert t.ping()


def test_processes_that_come_and_go_during_the_freeze(tmp_path):
    """A shell forking short-lived children: each run freezes what it can catch."""
    sh = subprocess.Popen(["sh", "-c", "while :; do sleep 0.005 & sleep 0.002; wait; done"])
    try:
        time.sleep(0.2)
        for i in range(5):
            result = snapcore.snapshot_tree(sh.pid, tmp_path / f"run{i}")
            root = result.get(sh.pid)
            assert root.ok, root.error
            for p in result.failed:
                # a child that went away while the tree was frozen: one fact, "it is
                # gone", which the error names by when it was seen (before the check,
                # during the freeze, or not yet reaped); the race is the shell's
                assert p.error_type in GONE, (p.pid, p.error)
                assert proc_state(p.pid) in (None, "Z"), (p.pid, proc_state(p.pid))
            for p in result.ok:
                assert os.path.exists(p.core)
            assert_untraced(sh.pid)
            leftovers = [f for f in os.listdir(tmp_path / f"run{i}") if f.startswith(".")]
            assert not leftovers, leftovers  # no temp file of a failed core
        assert sh.poll() is None
    finally:
        sh.kill()
        sh.wait(timeout=10)


def test_gdb_reads_a_tree_core_of_a_native_process(tmp_path):
    sh = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(snapcore.proctree.descendants(sh.pid)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        result = snapcore.snapshot_tree(sh.pid, tmp_path / "t")
        assert len(result.ok) == 3 and not result.failed
        sleeper = [p for p in result.processes if p.comm == "sleep"][0]
        frames, p = gdb_frames(sleeper.exe, sleeper.core)
        assert list(frames) == [sleeper.pid], p.stdout + p.stderr
        # coreutils sleep: nanosleep(), which glibc makes a clock_nanosleep syscall
        assert re.fullmatch(r"(__GI___)?clock_nanosleep", frames[sleeper.pid][0]), frames
        assert "__libc_start_call_main" in frames[sleeper.pid]  # (sleep has no symbols)
        assert "not a core" not in p.stderr.lower()
        for q in result.processes:
            assert_untraced(q.pid)
    finally:
        kill_all(snapcore.proctree.descendants(sh.pid))
        sh.kill()
        sh.wait(timeout=10)


def test_existing_manifest_is_refused_unless_forced(tree, tmp_path):
    t = tree("1")
    out = tmp_path / "t"
    snapcore.snapshot_tree(t.pid, out)
    with pytest.raises(snapcore.OutputExists):
        snapcore.snapshot_tree(t.pid, out)
    assert_tree_runs_on(t)
    again = snapcore.snapshot_tree(t.pid, out, force=True)
    assert len(again.ok) == 2


def test_no_such_root(tmp_path):
    with pytest.raises(snapcore.NoSuchProcess):
        snapcore.snapshot_tree(2**22 + 7, tmp_path / "t")
    assert not (tmp_path / "t").exists()


# --- the command line ------------------------------------------------------------------


def test_cli_tree(tree, tmp_path):
    t = tree("1,1")
    out = tmp_path / "cli"
    p = snapcore_cli(t.pid, "--tree", "-o", out)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert len(lines) == 4  # one per process, then the summary
    for pid in t.info["pids"]:
        assert any(line.startswith(f"{out}/core.{pid}: pid {pid} ") for line in lines)
    assert "3 cores of a tree of 3 processes" in lines[-1]
    assert_tree_runs_on(t)

    p = snapcore_cli(t.pid, "--tree", "-o", out)  # manifest exists
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("snapcore: error: ")
    assert "manifest.json already exists" in p.stderr

    p = snapcore_cli(t.pid, "--tree", "-q", "--force", "-o", out)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""


def test_cli_tree_default_directory(tree, tmp_path):
    t = tree("")
    p = snapcore_cli(t.pid, "--tree", "-q", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    dirs = [d for d in os.listdir(tmp_path) if d.startswith(f"snapcore-{t.pid}-")]
    assert len(dirs) == 1
    assert sorted(os.listdir(tmp_path / dirs[0])) == sorted([f"core.{t.pid}", "manifest.json"])
    assert_tree_runs_on(t)


def test_cli_tree_warns_about_a_process_it_could_not_dump(tree, tmp_path):
    t = tree("1")
    zombie = int(t.command("zombie").split()[1])
    p = snapcore_cli(t.pid, "--tree", "-o", tmp_path / "z")
    assert p.returncode == 0
    assert p.stderr.startswith(f"snapcore: warning: pid {zombie} ")
    assert "zombie" in p.stderr and p.stderr.count("\n") == 1
    assert_tree_runs_on(t)


def test_cli_tree_no_such_process(tmp_path):
    p = snapcore_cli(2**22 + 7, "--tree", "-o", tmp_path / "t")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("snapcore: error: no process with pid")
    assert p.stderr.count("\n") == 1


BIG = """
import os, subprocess, sys, time
data = os.urandom(300 << 20)             # 300 MiB that cannot be holes: the copy takes a while
kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print("READY {\\"pids\\": [%d, %d]}" % (os.getpid(), kid.pid), flush=True)
sys.stdin.read()
kid.kill()
"""


def test_cli_tree_terminated_midway_resumes_everything(tmp_path):
    """SIGTERM while the tree is frozen: exit 143, one line, no core, no directory,
    every process resumed.  The CLI is stopped (SIGSTOP) at a chosen point of its
    dump after the whole tree is frozen (0 to 150 MiB of the 300 MiB written), the tree
    is seen still frozen, then it gets SIGTERM and SIGCONT: the signal is known to land
    mid-snapshot.  Left alone, it writes every core and exits 0."""
    t = Target([sys.executable, "-c", BIG], ready_timeout=60)
    try:
        pids = t.info["pids"]
        landed = 0
        for i, at in enumerate((0, 50 << 20, 100 << 20, 150 << 20)):
            out = tmp_path / f"t{i}"
            p = snapcore_popen(t.pid, "--tree", "-q", "-o", out)
            try:
                tracer = wait_frozen(t.pid, proc=p)
                assert tracer == p.pid
                # the whole tree: the root is frozen before its child
                deadline = time.monotonic() + 30
                while not all(frozen(pid) == p.pid for pid in pids):
                    assert time.monotonic() < deadline and p.poll() is None, "never all frozen"
                # a point in the dump, not a delay (a faster copy outran 40 ms); False
                # from either: it finished, and exited, first
                if not wait_written(p.pid, at) or not stop_process(p.pid):
                    assert p.wait(timeout=60) == 0
                    continue
                if not all(frozen(pid) == p.pid for pid in pids):  # done already
                    os.kill(p.pid, signal.SIGCONT)
                    assert p.wait(timeout=60) == 0
                    continue
                os.kill(p.pid, signal.SIGTERM)
                os.kill(p.pid, signal.SIGCONT)
                _, err = p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
            assert p.returncode == 143, err
            assert err == "snapcore: error: terminated; every process was resumed\n"
            assert not out.exists(), os.listdir(out)  # no core, no directory
            for pid in pids:
                assert_untraced(pid)
            landed += 1
        assert landed >= 3, landed
        # and untouched, the same run writes every core
        p = snapcore_cli(t.pid, "--tree", "-q", "-o", tmp_path / "whole")
        assert p.returncode == 0, p.stderr
        assert sorted(os.listdir(tmp_path / "whole")) == sorted(
            ["manifest.json"] + [f"core.{pid}" for pid in pids]
        )
        assert t.proc.poll() is None
        for pid in pids:
            assert_untraced(pid)
    finally:
        kill_all(t.info.get("pids", []))
        t.close()


RETITLE = """
import ctypes, sys, time
with open("/proc/self/stat") as f:
    fields = f.read().rsplit(")", 1)[1].split()
start, end = int(fields[45]), int(fields[46])      # arg_start, arg_end
title = b"postgres: checkpointer"
ctypes.memset(start, 0, end - start)               # what setproctitle does
ctypes.memmove(start, title, len(title))
print("READY", flush=True)
time.sleep(600)
"""


def test_manifest_cmdline_of_a_retitled_process_has_no_padding(tmp_path):
    """A process that rewrote its title (PostgreSQL, setproctitle) leaves its
    argument area as NUL padding: the manifest lists the title, not 50 empty args."""
    p = subprocess.Popen(
        [sys.executable, "-c", RETITLE, "x" * 200, "y" * 200],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline() == "READY\n"
        with open(f"/proc/{p.pid}/cmdline", "rb") as f:
            raw = f.read()
        assert raw.startswith(b"postgres: checkpointer\0\0\0")  # the padding is there
        tree = snapcore.snapshot_tree(p.pid, tmp_path / "t", metadata=True)
        doc = json.loads((tmp_path / "t" / "manifest.json").read_text())
        assert doc["processes"][0]["cmdline"] == ["postgres: checkpointer"]
        assert tree.processes[0].cmdline == ["postgres: checkpointer"]
        side = json.loads((tmp_path / "t" / f"core.{p.pid}.json").read_text())
        assert side["cmdline"] == ["postgres: checkpointer"]
        assert_untraced(p.pid)
    finally:
        p.kill()
        p.wait()
