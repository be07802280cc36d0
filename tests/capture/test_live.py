"""Live snapshots (--live): a copy-on-write image of one instant, the target paused briefly."""

import os
import re
import select
import signal
import struct
import subprocess
import sys
import time

import pytest

import snapcore
from snapcore import _native

from support.compare import LIVE_ALLOWED, live_differences, live_table, unexpected
from support.coreparse import Core
from support.oracles import (
    assert_known_frames,
    assert_mt_backtraces,
    eu_stack,
    gdb_batch,
    read_core_memory,
)
from support.procs import (
    assert_runs_on,
    assert_untraced,
    children_of,
    snapcore_cli,
    task_states,
    wait_all_blocked,
    wait_all_stopped,
)
from support.strict import need_module
from support.targets import (
    MARKER,
    MT_OUTER,
    MT_THREAD_FUNCS,
    ROOT,
    edge_pattern,
    pattern_buf,
    pattern_half,
    target_path,
)


def assert_image_gone(pid):
    """The forked image was killed and reaped: no child, no zombie, left behind."""
    assert children_of(pid) == [], children_of(pid)


def test_live_core_reads_like_a_normal_one(mt, tmp_path):
    s = snapcore.snapshot(mt.pid, tmp_path / "core", live=True)
    assert s.live and s.fallback is None
    assert s.pause_time < s.wall_time
    # the steps only live mode has are timed too (the image's fork, its hand-off out
    # of the target's children, its release after the copy)
    assert {"fork", "handoff", "release", "copy"} <= set(s.stats["phases"]), s.stats
    assert_runs_on(mt)
    assert_image_gone(mt.pid)
    assert_mt_backtraces(target_path("mt"), s.path, mt.info["tids"])
    out = gdb_batch(target_path("mt"), s.path, "print/x snapcore_marker").stdout
    assert f"= {MARKER:#x}" in out
    info = mt.info
    assert read_core_memory(s.path, info["buf"], info["buf_len"]) == pattern_buf(info["buf_len"])
    touched = info["half_len"] // 4
    assert read_core_memory(s.path, info["half"], touched) == pattern_half(touched)
    frames, _ = eu_stack(s.path, target_path("mt"))
    assert_known_frames(frames, info["tids"], MT_THREAD_FUNCS, MT_OUTER)
    assert_runs_on(mt)


def test_live_core_matches_a_normal_core_of_a_quiet_target(spawn, tmp_path):
    """A process that does nothing: its live core and its normal core must hold the same
    bytes in every dumped page and the same registers in every thread (all register
    notes: general, FPU, XSTATE), and differ only as docs/kernel-differences.md says.

    The target is ``mt still`` with its edge mappings (shared, memfd, PROT_NONE, COW
    file, ...) and glibc's rseq off: every thread blocked, nothing ticking.  Between the
    snapshots each thread must be back in the very same wait."""
    files = tmp_path / "files"
    files.mkdir()
    env = dict(os.environ, GLIBC_TUNABLES="glibc.pthread.rseq=0")
    t = spawn("mt", "still", f"edge={files}", env=env)
    blocked = wait_all_blocked(t.pid)
    a = snapcore.snapshot(t.pid, tmp_path / "normal")
    assert wait_all_blocked(t.pid) == blocked
    b = snapcore.snapshot(t.pid, tmp_path / "live", live=True)
    assert b.live and not a.live and b.missing == []
    assert wait_all_blocked(t.pid) == blocked
    with Core(a.path) as n, Core(b.path) as v:
        diffs = live_differences(n, v)
        bad = unexpected(diffs, LIVE_ALLOWED)
        assert not bad, "the live core differs from the normal one:\n" + "\n".join(bad)
        # the comparison saw real cores: every thread, megabytes of memory, the edge maps
        assert [th.tid for th in v.threads] == t.info["tids"]
        assert all(len(th.notes) >= 2 for th in v.threads)  # NT_PRFPREG, NT_X86_XSTATE
        assert sum(ld.filesz for ld in v.loads) > 5 << 20
        assert v.read(t.info["shared_anon"], 8) == edge_pattern(3, 8)
        assert {key for key, _ in diffs} >= {"snapcore_note"}
    assert_runs_on(t, progress=False)
    assert_image_gone(t.pid)


def test_the_docs_list_the_live_differences():
    with open(os.path.join(ROOT, "docs", "kernel-differences.md"), encoding="utf-8") as f:
        doc = f.read()
    table = live_table()
    assert table in doc, "docs/kernel-differences.md must hold this table:\n" + table


def _writers(core, info):
    n, size, pages = info["nwriters"], info["writer_size"], info["pages"]
    raw = read_core_memory(core, info["writers"], n * size)
    out = []
    for i in range(n):
        count, base = struct.unpack_from("<QQ", raw, i * size)
        out.append(
            (
                count,
                [
                    struct.unpack_from("<Q", read_core_memory(core, base + p * 4096, 8))[0]
                    for p in range(pages)
                ],
            )
        )
    return out


def _consistent(count, stamps):
    """Pages read count+1 up to some page, count after it: one instant of one writer."""
    k = 0
    while k < len(stamps) and stamps[k] == count + 1:
        k += 1
    return all(v == count for v in stamps[k:])


def test_live_core_is_one_instant(spawn, tmp_path):
    t = spawn("gen")
    info = t.info
    for i in range(5):
        before = t.ping()
        s = snapcore.snapshot(t.pid, tmp_path / f"core.{i}", live=True)
        after = t.ping()
        assert s.live
        writers = _writers(s.path, info)
        for count, stamps in writers:
            assert _consistent(count, stamps), (count, stamps[:8], stamps[-8:])
        assert before <= writers[0][0] <= after
        assert sum(c for c, _ in writers) > 0
    assert t.ping() > after
    assert_runs_on(t)
    assert_image_gone(t.pid)


def test_the_consistency_check_can_fail(spawn):
    """Control: the same check on memory read from the running target does fail."""
    t = spawn("gen")
    info = t.info
    # until one read is inconsistent, for 10 s at most (the writers need a CPU meanwhile,
    # which a busy machine may give them late)
    violations = tries = 0
    deadline = time.monotonic() + 10
    while violations == 0 and (tries < 20 or time.monotonic() < deadline):
        tries += 1
        # page by page, as any copy of a running process does, with the count last
        raw = _native.readv(t.pid, info["writers"], info["nwriters"] * info["writer_size"])
        _, base = struct.unpack_from("<QQ", raw, 0)
        stamps = [
            struct.unpack("<Q", _native.readv(t.pid, base + p * 4096, 8))[0]
            for p in range(info["pages"])
        ]
        raw = _native.readv(t.pid, info["writers"], 8)
        count = struct.unpack("<Q", raw)[0]
        if not _consistent(count, stamps):
            violations += 1
    assert violations > 0
    assert_runs_on(t)


def test_dontfork_and_wipeonfork_memory_is_in_the_core(spawn, tmp_path):
    t = spawn("gen")
    info = t.info
    s = snapcore.snapshot(t.pid, tmp_path / "core", live=True)
    assert s.live and s.missing == []
    n = info["nofork_len"]
    assert read_core_memory(s.path, info["dontfork"], n) == b"\xd0" * n
    assert read_core_memory(s.path, info["wipe"], n) == b"\xe1" * n
    assert_runs_on(t)
    assert_image_gone(t.pid)


def test_seccomp_target_falls_back_and_says_so(spawn, tmp_path):
    t = spawn("gen", "seccomp")
    s = snapcore.snapshot(t.pid, tmp_path / "core", live=True)
    assert not s.live and "seccomp" in s.fallback
    p = snapcore_cli(t.pid, "--live", "-o", tmp_path / "cli.core")
    assert p.returncode == 0
    assert "live mode not used" in p.stdout and "seccomp" in p.stdout
    assert_runs_on(t)
    assert_image_gone(t.pid)


@pytest.mark.parametrize(
    "room,where", [(0, "the injected clone failed"), (1, "after the target was resumed")]
)
def test_no_room_for_an_image_falls_back_to_a_normal_core(spawn, tmp_path, room, where):
    """A pids cgroup with room for no image (the clone fails while frozen) or for one
    (the image's own fork fails after the target resumed): a normal core, and why."""
    base = "/sys/fs/cgroup/pids"
    if not os.path.isdir(base):
        base = "/sys/fs/cgroup"  # cgroup v2
    cg = os.path.join(base, f"snapcore-test-{os.getpid()}-{room}")
    t = spawn("mt")
    t.wait_blocked()
    os.mkdir(cg)
    try:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(t.pid))
        with open(os.path.join(cg, "pids.current")) as f:
            current = int(f.read())
        with open(os.path.join(cg, "pids.max"), "w") as f:
            f.write(str(current + room))
        s = snapcore.snapshot(t.pid, tmp_path / "core", live=True)
        assert not s.live and where in s.fallback, s.fallback
        assert "Resource temporarily unavailable" in s.fallback, s.fallback
        out = gdb_batch(target_path("mt"), s.path, "thread apply all bt").stdout
        for fn in MT_THREAD_FUNCS:
            assert re.search(rf"\b{fn} \(", out), out
        assert_untraced(t.pid)
        assert_image_gone(t.pid)
        assert_runs_on(t)
    finally:
        with open(os.path.join(base, "cgroup.procs"), "w") as f:
            f.write(str(t.pid))
        os.rmdir(cg)


def test_stopped_target_stays_stopped_in_live_mode(spawn, tmp_path):
    t = spawn("mt")
    t.wait_blocked()
    os.kill(t.pid, signal.SIGSTOP)
    try:
        wait_all_stopped(t.pid)
        s = snapcore.snapshot(t.pid, tmp_path / "core", live=True)
        assert not s.live and "stopped" in s.fallback
        wait_all_stopped(t.pid)
    finally:
        os.kill(t.pid, signal.SIGCONT)
    assert_runs_on(t)


def test_cli_live_line(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--live", "-o", tmp_path / "core")
    assert p.returncode == 0, p.stderr
    assert ", live" in p.stdout
    assert_runs_on(mt)
    assert_image_gone(mt.pid)


def test_live_compressed_core_keeps_the_nofork_regions(spawn, tmp_path):
    """The regions copied aside before the fork go through the ordered (zstd) stream too."""
    need_module("zstandard")
    t = spawn("gen")
    info = t.info
    s = snapcore.snapshot(t.pid, tmp_path / "core.zst", live=True, compress="zstd")
    assert s.live and s.compressed == "zstd"
    p = snapcore_cli("decompress", tmp_path / "core.zst", "-o", tmp_path / "core")
    assert p.returncode == 0, p.stderr
    n = info["nofork_len"]
    assert read_core_memory(tmp_path / "core", info["dontfork"], n) == b"\xd0" * n
    assert read_core_memory(tmp_path / "core", info["wipe"], n) == b"\xe1" * n
    assert_runs_on(t)
    assert_image_gone(t.pid)


HOLDER = """
import os, sys
w = int(sys.argv[1])
ballast = [os.urandom(1 << 20) for _ in range(768)]     # a live copy that takes a while
print("READY", flush=True)
sys.stdin.readline()
os.close(w)
print("closed", flush=True)
sys.stdin.readline()
"""


def _image_of(pid):
    """The live image being copied: a traced process running pid's executable, not
    pid's child (the image snapcore reads from is orphaned at once)."""
    exe = os.readlink(f"/proc/{pid}/exe")
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == pid:
            continue
        try:
            if os.readlink(f"/proc/{name}/exe") != exe:
                continue
            with open(f"/proc/{name}/status") as f:
                st = dict(line.split(":", 1) for line in f)
        except OSError:
            continue
        if int(st["TracerPid"]) and int(st["PPid"]) != pid:
            return int(name)
    return None


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_live_image_holds_no_reference_to_the_targets_files(tmp_path):
    """The target closes the last write end of a pipe while its live image is being
    copied: the reader sees EOF at once, not when the image dies (the images share
    the target's fd table instead of holding copies of it)."""
    r, w = os.pipe()
    t = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(w)],
        pass_fds=(w,),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(w)
    cli = None
    try:
        assert t.stdout.readline() == "READY\n"
        cli = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "snapcore",
                str(t.pid),
                "--live",
                "-q",
                "-o",
                str(tmp_path / "core"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while _image_of(t.pid) is None or any(tr for _, tr in task_states(t.pid).values()):
            assert cli.poll() is None and time.monotonic() < deadline  # wait: copying
            time.sleep(0.0002)
        img = _image_of(t.pid)
        t.stdin.write("close\n")
        t.stdin.flush()
        assert t.stdout.readline() == "closed\n"
        readable, _, _ = select.select([r], [], [], 5.0)
        image_alive = _alive(img)
        assert readable and os.read(r, 1) == b"", "no EOF while the image lives"
        assert image_alive, "EOF came only once the image was gone (it held the pipe)"
        _, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        assert_untraced(t.pid)
        t.stdin.write("bye\n")
        t.stdin.flush()
        assert t.wait(timeout=30) == 0
    finally:
        os.close(r)
        for p in (cli, t):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
