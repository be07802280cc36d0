"""SIGKILL, SIGINT and SIGTERM of snapcore at any moment: the target runs on, nothing is left.

Each trial checks everything a killed snapshot could leave behind:

  * the target: untraced, not stopped, back in its wait, and no forked image
    among its children (live mode), alive or zombie;
  * snapcore's helper process (snapcore.capture.helperd: forked from the CLI,
    in a session of its own) and the image it reads from: the test is a child
    subreaper for the trials (procs.Subreaper), so whatever the CLI leaves
    behind when it dies is re-parented to the test, which sees it and reaps
    it; all of it must be gone within seconds;
  * the output directory: no temporary file, and a core at the final name
    only if it was there, complete, before the kill.

The moment of each signal is known, not raced: the CLI is stopped (SIGSTOP)
at the chosen moment, what it is doing then is read from /proc (target
traced, image alive, core published), then it gets the signal.  So each trial
has one right outcome: -SIGKILL, or 130/143 with nothing written.
"""

import os
import random
import signal
import time

import pytest
from elftools.elf.elffile import ELFFile

from support.procs import (
    Subreaper,
    assert_runs_on,
    assert_untraced,
    children_of,
    proc_state,
    snapcore_popen,
    stop_process,
    tracer_of,
    trials,
    wait_frozen,
    wait_traced,
)

BIG = ("mt", "mib=192", "threads=40")  # 192 MiB of random data and 40 extra threads


def image_children(pid):
    """(live, zombie) children of the target: live mode's forked images."""
    alive, zombies = [], []
    for k in children_of(pid):
        state = proc_state(k)
        if state is None:
            continue
        (zombies if state in "ZX" else alive).append(k)
    return alive, zombies


def images_of(reaper, target):
    """Live processes re-parented to the test that run the target's executable:
    live mode's image, orphaned when its parent was killed."""
    exe = os.readlink(f"/proc/{target.pid}/exe")
    return [p for p, (state, e) in reaper.orphans().items() if e == exe and state not in "ZX"]


def assert_nothing_left(t, reaper, tmp_path, published, trial):
    """The four things a killed snapshot could leave, checked after a trial."""
    # 1. the forked image, as a child of the target (alive or not yet reaped)
    deadline = time.monotonic() + 10
    while image_children(t.pid) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert image_children(t.pid) == ([], []), f"{trial}: images left in the target"
    # 2. the helper and the image it read from, re-parented to us when the CLI died:
    # they finish their step, put the target back and exit
    left = reaper.reap(timeout=15)
    assert left == {}, f"{trial}: left running after snapcore was killed: {left}"
    # 3. no temporary file; 4. a core at its final name only if published before
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(published), f"{trial}: {names}, published {published}"
    for name in published:
        assert_complete_core(tmp_path / name)
    assert_untraced(t.pid)
    t.wait_blocked()


def assert_complete_core(path):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        segs = list(ELFFile(f).iter_segments())
    end = max(s["p_offset"] + s["p_filesz"] for s in segs)
    assert end == size and len(segs) > 10, (path, end, size)


def _busy(t, reaper):
    """What the snapshot is doing right now: 'copying' (live: the image it reads from is
    alive; the target may be traced a moment more, to reap the image's first copy),
    'frozen' (the target traced), or None."""
    if images_of(reaper, t):
        return "copying"
    if tracer_of(t.pid) > 0:
        return "frozen"
    return None


@pytest.mark.parametrize("mode", ["normal", "live"])
def test_sigkill_at_random_moments(spawn, tmp_path, mode):
    n = trials(20, 200)
    extra = ("--live",) if mode == "live" else ()
    rng = random.Random(os.getpid())
    with Subreaper() as reaper:
        t = spawn(*BIG)
        reaper.known.add(t.pid)
        t.wait_blocked()
        # how long one whole run takes here, to spread the kills over it
        t0 = time.monotonic()
        p = snapcore_popen(t.pid, "-o", tmp_path / "ref.core", *extra)
        reaper.known.add(p.pid)
        p.communicate(timeout=120)
        assert p.returncode == 0
        whole = time.monotonic() - t0
        os.unlink(tmp_path / "ref.core")
        assert reaper.reap(timeout=10) == {}
        seen = {"frozen": 0, "copying": 0, None: 0}
        published = []
        i = attempts = 0
        while i < n:
            attempts += 1
            assert attempts < 2 * n, f"kills kept missing the runs ({i} of {n} landed)"
            out = tmp_path / f"core.{i}"
            p = snapcore_popen(t.pid, "-o", out, *extra)
            reaper.known.add(p.pid)
            try:
                if i % 2 == 0:
                    time.sleep(rng.uniform(0, whole * 0.7))  # anywhere, start-up included
                else:
                    assert wait_traced(t.pid, timeout=30, proc=p)  # the freeze has begun
                    time.sleep(rng.uniform(0, whole / 3))
                landed = stop_process(p.pid)
                if landed:
                    doing = _busy(t, reaper)
                    if out.exists():
                        published.append(out.name)
                    p.send_signal(signal.SIGKILL)
                p.communicate(timeout=60)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
            if not landed:  # the run ended before the chosen moment: not a trial
                assert p.returncode == 0, p.stderr
                os.unlink(out)
                assert reaper.reap(timeout=10) == {}
                # runs are quicker than the reference one was (it met a busier
                # machine): draw the next moments from a shorter window
                whole *= 0.8
                continue
            assert p.returncode == -signal.SIGKILL, (i, p.returncode, p.stderr)
            seen[doing] += 1
            assert_nothing_left(t, reaper, tmp_path, published, f"trial {i}")
            i += 1
        assert_runs_on(t)
    print(
        f"\n{mode}: {n} SIGKILL trials ({attempts - n} re-drawn: the run had ended), "
        f"{seen['frozen']} with the target frozen, {seen['copying']} while copying from "
        f"the image, {len(published)} after the core was published; 0 harmed, "
        f"nothing left behind"
    )
    assert seen["frozen"] + seen["copying"] >= n // 4, "kills did not land inside snapshots"


def _interrupt(spawn, tmp_path, sig, code, word, live=False):
    """Stop the CLI while its snapshot is under way, send it sig, let it go on."""
    with Subreaper() as reaper:
        t = spawn(*BIG)
        reaper.known.add(t.pid)
        t.wait_blocked()
        out = tmp_path / "core"
        p = snapcore_popen(t.pid, "-o", out, *(["--live"] if live else []))
        reaper.known.add(p.pid)
        try:
            if live:
                deadline = time.monotonic() + 60
                while not images_of(reaper, t):  # the copy from the image has begun
                    assert p.poll() is None and time.monotonic() < deadline, p.communicate()
                    time.sleep(0.001)
            else:
                assert wait_frozen(t.pid, proc=p) == p.pid
            assert stop_process(p.pid)
            # still under way with the CLI stopped: nothing can have been published
            assert _busy(t, reaper) == ("copying" if live else "frozen")
            os.kill(p.pid, sig)
            os.kill(p.pid, signal.SIGCONT)
            stdout, stderr = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        assert p.returncode == code, (p.returncode, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("snapcore: error: ") and word in lines[0]
        assert "Traceback" not in stderr and stdout == ""
        assert_nothing_left(t, reaper, tmp_path, [], sig.name)
        assert_runs_on(t)


def test_sigint_resumes_and_exits_130(spawn, tmp_path):
    _interrupt(spawn, tmp_path, signal.SIGINT, 130, "interrupted")


def test_sigterm_resumes_and_exits_143(spawn, tmp_path):
    _interrupt(spawn, tmp_path, signal.SIGTERM, 143, "terminated")


@pytest.mark.parametrize(
    "sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_live_snapshot_interrupted(spawn, tmp_path, sig, code, word):
    """In live mode the guardian finishes its step, puts everything back, and exits."""
    _interrupt(spawn, tmp_path, sig, code, word, live=True)
