"""SIGKILL, SIGINT and SIGTERM of snapcore at any moment: the target runs on."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from support.procs import assert_runs_on, assert_untraced, trials, wait_traced

BIG = ("mt", "mib=192", "threads=40")  # 192 MiB of random data and 40 extra threads


def _cli(pid, out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "snapcore", str(pid), "-o", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _TraceWatch:
    """Notices, from a thread, the moment snapcore starts tracing the target."""

    def __init__(self, pid):
        import threading

        self.traced = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._t.start()

    def _run(self, pid):
        while not self._stop.is_set() and not self.traced:
            self.traced = wait_traced(pid, timeout=0.05)

    def wait(self, timeout, proc):
        deadline = time.monotonic() + timeout
        while not self.traced and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)

    def stop(self):
        self._stop.set()
        self._t.join(5)


def _image_children(pid):
    """(live, zombie) children of the target: live mode's forked images."""
    alive, zombies = [], []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for k in kids:
            try:
                with open(f"/proc/{k}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            (zombies if state in "ZX" else alive).append(k)
    return alive, zombies


@pytest.mark.parametrize("mode", ["normal", "live"])
def test_sigkill_at_random_moments(spawn, tmp_path, mode):
    t = spawn(*BIG)
    t.wait_blocked()
    n = trials(20, 200)
    extra = ("--live",) if mode == "live" else ()
    rng = random.Random(os.getpid())
    # how long one whole run takes here, to spread the kills over it
    t0 = time.monotonic()
    p = _cli(t.pid, tmp_path / "ref.core", *extra)
    p.communicate(timeout=120)
    assert p.returncode == 0
    whole = time.monotonic() - t0
    os.unlink(tmp_path / "ref.core")
    killed_while_traced = completed = 0
    zombies = set()
    for i in range(n):
        out = tmp_path / f"core.{i}"
        p = _cli(t.pid, out, *extra)
        seen = _TraceWatch(t.pid)
        try:
            if i % 2 == 0:
                time.sleep(rng.uniform(0, whole * 1.1))  # anywhere, start-up included
            else:
                seen.wait(timeout=30, proc=p)  # after the freeze began
                time.sleep(rng.uniform(0, whole / 3))
            traced = seen.traced and p.poll() is None
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=30)
        finally:
            seen.stop()
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        killed_while_traced += traced
        if out.exists():
            # killed after publishing: whatever is at the final path is a whole core
            assert_complete_core(out)
            completed += 1
        assert_untraced(t.pid)
        # a forked image never outlives snapcore (EXITKILL); it can only be left
        # as a zombie when snapcore died between killing it and having it reaped
        deadline = time.monotonic() + 5
        while _image_children(t.pid)[0] and time.monotonic() < deadline:
            time.sleep(0.01)
        alive, dead = _image_children(t.pid)
        assert alive == [], f"trial {i}: a live image survived snapcore: {alive}"
        zombies.update(dead)
        t.wait_blocked()
    assert [f for f in os.listdir(tmp_path) if not f.startswith("core.")] == []
    assert_runs_on(t)
    # a zombie seen right after a kill may be an image the guardian is still reaping
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _image_children(t.pid)[1]:
        time.sleep(0.05)
    left = _image_children(t.pid)[1]
    print(
        f"\n{mode}: {n} SIGKILL trials, {killed_while_traced} once the freeze had begun, "
        f"{completed} after the core was complete, 0 harmed, 0 partial files, "
        f"{len(left)} image zombies left ({len(zombies)} seen while being reaped)"
    )
    assert left == [], f"forked images left as zombies of the target: {left}"
    assert killed_while_traced >= n // 4, "kills did not land inside snapshots"


def assert_complete_core(path):
    from elftools.elf.elffile import ELFFile

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        segs = list(ELFFile(f).iter_segments())
    end = max(s["p_offset"] + s["p_filesz"] for s in segs)
    assert end == size and len(segs) > 10, (path, end, size)


def _states(pid):
    from support.procs import task_states

    return task_states(pid)


def _interrupt(spawn, tmp_path, sig, code, word):
    t = spawn(*BIG)
    t.wait_blocked()
    out = tmp_path / "core"
    p = _cli(t.pid, out)
    try:
        assert wait_traced(t.pid, timeout=30, proc=p), p.communicate(timeout=30)
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    assert p.returncode == code, (p.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: ") and word in lines[0]
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == []  # no core, no temp file
    assert_runs_on(t)


def test_sigint_resumes_and_exits_130(spawn, tmp_path):
    _interrupt(spawn, tmp_path, signal.SIGINT, 130, "interrupted")


def test_sigterm_resumes_and_exits_143(spawn, tmp_path):
    _interrupt(spawn, tmp_path, signal.SIGTERM, 143, "terminated")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_live_snapshot_interrupted(spawn, tmp_path, sig, code):
    """In live mode the guardian finishes its step, puts everything back, and exits."""
    t = spawn("mt", "mib=384")
    t.wait_blocked()
    out = tmp_path / "core"
    p = _cli(t.pid, out, "--live")
    seen = _TraceWatch(t.pid)
    try:
        seen.wait(timeout=30, proc=p)
        time.sleep(0.05)  # copying from the image now
        p.send_signal(sig)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        seen.stop()
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    assert p.returncode in (code, 0), (p.returncode, stderr)
    if p.returncode == code:
        assert stderr.count("\n") == 1 and "Traceback" not in stderr
        assert os.listdir(tmp_path) == []
    deadline = time.monotonic() + 10
    while _image_children(t.pid) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _image_children(t.pid) == ([], [])
    assert_runs_on(t)
