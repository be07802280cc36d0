"""The output is private, atomic, and a failed write leaves nothing behind."""

import errno
import os
import resource
import stat
import subprocess
import sys

import pytest

import snapcore

from support.procs import assert_runs_on
from support.strict import need_root


def test_core_is_private(mt, tmp_path):
    os.umask(0o022)
    s = snapcore.snapshot(mt.pid, tmp_path / "core")
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600
    assert_runs_on(mt)


def test_never_replaces_a_device_or_fifo_even_forced(mt, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(snapcore.OutputError, match="not a regular file"):
        snapcore.snapshot(mt.pid, fifo, force=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo"]
    assert_runs_on(mt)


def test_disk_full(spawn, tmp_path):
    need_root("mounting a small tmpfs")
    t = spawn("mt", "mib=64")
    t.wait_blocked()
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True, timeout=30
    )
    try:
        with pytest.raises(snapcore.OutputError) as ei:
            snapcore.snapshot(t.pid, mnt / "core")
        assert ei.value.errno == errno.ENOSPC
        assert os.listdir(mnt) == []  # no partial file, no temp file
        assert_runs_on(t)
        p = subprocess.run(
            [sys.executable, "-m", "snapcore", str(t.pid), "-o", str(mnt / "core")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 1 and p.stderr.count("\n") == 1
        assert "No space left on device" in p.stderr and "Traceback" not in p.stderr
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], timeout=30)
    assert_runs_on(t)


def test_file_size_limit_is_an_output_error(spawn, tmp_path):
    """RLIMIT_FSIZE makes the write fail with EFBIG (Python ignores SIGXFSZ)."""
    t = spawn("mt", "mib=16")
    t.wait_blocked()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    p = subprocess.run(
        [sys.executable, "-m", "snapcore", str(t.pid), "-o", str(tmp_path / "core")],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )
    assert p.returncode == 1, p.stderr
    assert "File too large" in p.stderr and p.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == []
    assert_runs_on(t)
