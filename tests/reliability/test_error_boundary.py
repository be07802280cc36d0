"""No input, race or helper crash prints a traceback: one line, a documented status.

Each case is real: a directory where a core is expected, cores cut short at
several places, a target that vanishes while the command line snapshots it,
and snapcore's helper process killed in the middle of its work.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

from support.procs import (
    assert_runs_on,
    assert_untraced,
    snapcore_cli,
    task_states,
    tracer_of,
    wait_traced,
)


def one_line_error(p, code, *fragments):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: "), p.stderr
    assert "Traceback" not in p.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


def test_info_on_a_directory_and_on_cores_cut_short(mt, tmp_path):
    core = tmp_path / "core"
    p = snapcore_cli(mt.pid, "-o", core, "-q")
    assert p.returncode == 0, p.stderr
    data = core.read_bytes()
    one_line_error(snapcore_cli("info", tmp_path), 1, "Is a directory")
    # inside the ELF header, inside the program headers, inside the notes
    for cut, why in ((40, "not an ELF file"), (200, "program headers"), (3000, "truncated")):
        part = tmp_path / f"cut{cut}"
        part.write_bytes(data[:cut])
        one_line_error(snapcore_cli("info", part), 1, why)
    # inside the memory: described, with a warning that says how much is missing
    part = tmp_path / "cut-data"
    part.write_bytes(data[: len(data) // 2])
    p = snapcore_cli("info", part)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "warning    truncated:" in p.stdout, p.stdout
    assert_runs_on(mt)


def test_target_vanishing_mid_snapshot_is_one_line(spawn, tmp_path):
    """The target is SIGKILLed while snapcore is stuck freezing it (one thread sits in
    an uninterruptible vfork wait): exit 1, 'exited during the snapshot', nothing left."""
    for i in range(3):
        t = spawn("mt")
        t.wait_blocked()
        assert t.command("vfork 8") == "ok"  # a thread in D state: the freeze waits
        deadline = time.monotonic() + 10
        while "D" not in {s for s, _ in task_states(t.pid).values()}:
            assert time.monotonic() < deadline, task_states(t.pid)
            time.sleep(0.01)
        out = tmp_path / f"core.{i}"
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snapcore",
                str(t.pid),
                "-o",
                str(out),
                "-q",
                "--stop-timeout",
                "60",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_traced(t.pid, timeout=30, proc=cli)
            time.sleep(0.2)  # the other threads are frozen; the D one keeps it waiting
            assert cli.poll() is None
            os.kill(t.pid, signal.SIGKILL)
            _, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        t.proc.wait(timeout=30)
        assert cli.returncode == 1, err
        assert err.count("\n") == 1 and "exited during the snapshot" in err, err
        assert "Traceback" not in err
        assert os.listdir(tmp_path) == []


SELF_BIG = textwrap.dedent("""
    import os, sys, snapcore
    ballast = os.urandom(256 << 20)          # a dump that takes a while
    try:
        snapcore.snapshot(os.getpid(), sys.argv[1])
    except snapcore.HelperError as exc:
        print("HelperError:", exc)
    else:
        print("written")
""")


def test_helper_killed_while_dumping_its_caller(tmp_path):
    """The helper dies holding the caller frozen: the kernel lets the caller go, and
    the caller reports how the helper ended -- not some other error."""
    out = tmp_path / "core"
    p = subprocess.Popen(
        [sys.executable, "-c", SELF_BIG, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while tracer_of(p.pid) <= 0:  # the helper has frozen its caller
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.001)
        helper = tracer_of(p.pid)
        os.kill(helper, signal.SIGKILL)
        stdout, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert stdout.startswith("HelperError: snapcore's helper process was killed by SIGKILL")
    assert not out.exists() and os.listdir(tmp_path) == []


def test_helper_killed_during_a_live_copy(spawn, tmp_path):
    """Live mode: the helper dies while it copies from the image (the target already
    runs on): the CLI says so in one line, no core is left, the target is untouched."""
    t = spawn("mt", "mib=384")
    t.wait_blocked()
    out = tmp_path / "core"
    cli = subprocess.Popen(
        [sys.executable, "-m", "snapcore", str(t.pid), "--live", "-o", str(out), "-q"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_traced(t.pid, timeout=30, proc=cli)  # frozen, forking its image
        helper = tracer_of(t.pid)
        deadline = time.monotonic() + 30
        while tracer_of(t.pid) != 0:  # resumed: the copy from the image is under way
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        assert cli.poll() is None, "the live copy ended before the helper could be killed"
        os.kill(helper, signal.SIGKILL)
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 1, err
    assert err.count("\n") == 1, err
    assert "helper process was killed by SIGKILL" in err, err
    assert os.listdir(tmp_path) == []
    assert_untraced(t.pid)
    assert_runs_on(t)
