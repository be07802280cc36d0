"""snapcore run --timeout: a real hung command tree, its cores, and its end."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support.oracles import gdb_batch, pystack
from support.procs import snapcore_cli
from support.strict import need_tool
from support.targets import HANG2, TARGETS


def exists(pid):
    """Present in /proc at all (running, stopped or a zombie)."""
    return os.path.exists(f"/proc/{pid}")


def kill_quietly(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_timeout_cores_both_processes_then_ends_the_tree(tmp_path):
    pidfile = str(tmp_path / "pids")
    out = tmp_path / "cores"
    pids = []
    try:
        t0 = time.monotonic()
        p = snapcore_cli(
            "run",
            "--timeout",
            "2",
            "--grace",
            "0.5",
            "--out",
            out,
            "--",
            sys.executable,
            HANG2,
            pidfile,
            timeout=90,
        )
        took = time.monotonic() - t0
        with open(pidfile) as f:
            pids = [int(x) for x in f.read().split()]
        parent, child = pids
        assert p.returncode == 124, p.stderr
        assert 2 <= took < 30
        assert p.stdout == "hang2: both running\n"  # CMD's stdout, untouched
        # the tree is gone: killed and reaped (the child ignored SIGTERM, was orphaned
        # when its parent died, and was re-parented to snapcore, the subreaper)
        assert not exists(parent) and not exists(child)

        doc = json.loads((out / "manifest.json").read_text())
        by_pid = {e["pid"]: e for e in doc["processes"]}
        assert sorted(by_pid) == sorted(pids)
        assert by_pid[child]["ppid"] == parent
        for pid in pids:
            assert by_pid[pid]["result"] == "ok"
            assert (out / f"core.{pid}").is_file()
        # the cores are readable: pystack finds both Python stacks, gdb the threads
        for pid, func in ((parent, "parent_waits_for_child"), (child, "child_sleeps_forever")):
            r = pystack(out / f"core.{pid}", timeout=60)
            assert r.returncode == 0 and f"in {func}" in r.stdout, r.stdout + r.stderr
            g = gdb_batch(by_pid[pid]["exe"], str(out / f"core.{pid}"), "info threads")
            assert f"LWP {pid}" in g.stdout, g.stdout + g.stderr

        err = p.stderr
        assert f"(pid {parent}) still running after 2s" in err
        assert f"cores of 2 processes in {out}/" in err
        assert "parent_waits_for_child (hang2.py:" in err  # the stack summary
        assert "child_sleeps_forever (<string>:" in err
        assert "terminated 2 processes" in err
        assert "Traceback" not in err
    finally:
        kill_quietly(pids)


def test_default_directory_and_quiet(tmp_path):
    pidfile = str(tmp_path / "pids")
    pids = []
    try:
        p = snapcore_cli(
            "run",
            "-q",
            "--timeout",
            "1",
            "--grace",
            "0",
            "--",
            sys.executable,
            HANG2,
            pidfile,
            cwd=str(tmp_path),
            timeout=90,
        )
        with open(pidfile) as f:
            pids = [int(x) for x in f.read().split()]
        assert p.returncode == 124
        dirs = [d for d in os.listdir(tmp_path) if d.startswith(f"snapcore-{pids[0]}-")]
        assert len(dirs) == 1
        assert sorted(os.listdir(tmp_path / dirs[0])) == sorted(
            [f"core.{pids[0]}", f"core.{pids[1]}", "manifest.json"]
        )
        assert "stacks by" not in p.stderr and len(p.stderr.splitlines()) == 3
        assert not any(exists(pid) for pid in pids)
    finally:
        kill_quietly(pids)


@pytest.mark.parametrize(
    "script,status",
    [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9), ("kill -TERM $$", 128 + 15)],
)
def test_in_time_the_status_is_the_commands(tmp_path, script, status):
    p = snapcore_cli(
        "run", "--timeout", "20", "--", "sh", "-c", f"echo out; {script}", cwd=str(tmp_path)
    )
    assert p.returncode == status
    assert p.stdout == "out\n" and p.stderr == ""
    assert os.listdir(tmp_path) == []


def test_signals_are_passed_on(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapcore",
            "run",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(tmp_path),
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 7, err
        assert out == "got TERM\n"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize(
    "argv,code,text",
    [
        (["--timeout", "5", "--", "/nonexistent/cmd"], 127, "/nonexistent/cmd: command not found"),
        (["--timeout", "5", "--", "/etc/passwd"], 126, "cannot execute"),
        (["--", "true"], 2, "--timeout"),
        (["--timeout", "5"], 2, "no command given"),
        (["--timeout", "soon", "--", "true"], 2, "'soon' is not a number of seconds"),
        (["--timeout", "-1", "--", "true"], 2, "must be positive"),
        (["--timeout", "1", "--grace", "-2", "--", "true"], 2, "cannot be negative"),
    ],
)
def test_bad_input_is_one_line(argv, code, text):
    p = snapcore_cli("run", *argv)
    assert p.returncode == code
    assert p.stdout == ""
    assert p.stderr.startswith("snapcore: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert text in p.stderr


def test_native_processes_get_a_gdb_summary(tmp_path):
    need_tool("gdb")
    p = snapcore_cli(
        "run",
        "--timeout",
        "1",
        "--grace",
        "0",
        "--out",
        tmp_path / "c",
        "--",
        "sleep",
        "60",
        timeout=90,
    )
    assert p.returncode == 124
    assert "stacks by eu-stack" in p.stderr, p.stderr  # the first unwinder (read/unwind.py)
    assert "sleep" in p.stderr.split("stacks by eu-stack", 1)[1]


def test_timeout_report_carries_the_verdict(tmp_path):
    """`snapcore run` prints the verdict of `snapcore why` on the cores it took."""
    p = snapcore_cli(
        "run",
        "--timeout",
        "1",
        "--grace",
        "0.2",
        "--out",
        tmp_path / "cores",
        "--",
        os.path.join(TARGETS, "bin", "hang"),
        "mutex",
        timeout=90,
    )
    assert p.returncode == 124, p.stderr
    ready = json.loads(p.stdout.split("READY ", 1)[1])
    err = p.stderr
    assert "snapcore why: deadlock: " in err, err
    for tid in ready["tids"]:
        assert f"thread {tid} (hang) of pid {ready['pid']} waits for mutex 0x" in err
    assert "lock_ab" in err and "lock_ba" in err  # the stack groups follow
    verdict = err[err.index("snapcore why: ") :].splitlines()
    assert len([ln for ln in verdict if not ln.startswith("snapcore: ")]) <= 20
    assert not exists(ready["pid"])
