"""Compressed cores: --compress zstd, snapcore decompress, info on a .zst.

Oracles: the zstd command-line decoder, the uncompressed core of the same
(stopped) target, gdb.
"""

import json
import os
import signal
import sys

from elftools.elf.elffile import ELFFile

import snapcore

from support.oracles import (
    assert_mt_backtraces,
    snapcore_note,
)
from support.procs import (
    assert_one_line_error,
    assert_runs_on,
    info_json,
    live_tids,
    run,
    snapcore_cli,
    wait_all_stopped,
)
from support.strict import need_root, need_tool
from support.targets import target_path

# --- compression ------------------------------------------------------------------------


def _masked(path):
    """The core's bytes with the SNAPCORE note's description blanked."""
    data = bytearray(open(path, "rb").read())
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_NOTE":
                for n in seg.iter_notes():
                    if n["n_name"] == "SNAPCORE":
                        off = n["n_offset"] + 12 + 12  # Nhdr + "SNAPCORE\0" padded
                        data[off : off + n["n_descsz"]] = b"?" * n["n_descsz"]
    return bytes(data)


def test_zstd_round_trip_equals_the_uncompressed_core(spawn, tmp_path):
    """Two snapshots of a stopped target, one plain, one compressed: identical cores."""
    need_tool("zstd")
    t = spawn("mt")
    t.wait_blocked()
    os.kill(t.pid, signal.SIGSTOP)
    try:
        wait_all_stopped(t.pid)
        plain = snapcore.snapshot(t.pid, tmp_path / "plain")
        wait_all_stopped(t.pid)  # back in the job-control stop, state 'T' again
        z = snapcore.snapshot(t.pid, compress="zstd", path=tmp_path / "core.zst")
        wait_all_stopped(t.pid)
    finally:
        os.kill(t.pid, signal.SIGCONT)
    assert z.compressed == "zstd" and z.core_size == plain.file_size
    assert os.path.getsize(tmp_path / "core.zst") < plain.bytes_on_disk
    assert os.stat(tmp_path / "core.zst").st_mode & 0o777 == 0o600
    p = snapcore_cli("decompress", tmp_path / "core.zst")
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p.stderr
    # snapcore's decompress and the reference decoder agree byte for byte
    run(["zstd", "-q", "-d", str(tmp_path / "core.zst"), "-o", str(tmp_path / "ref")], check=True)
    ours = open(tmp_path / "core", "rb").read()
    assert open(tmp_path / "ref", "rb").read() == ours
    # ... and equal the uncompressed core, except the note that records the mode
    assert _masked(tmp_path / "core") == _masked(plain.path)
    # restored sparse: holes where the plain core has holes
    st = os.stat(tmp_path / "core")
    assert st.st_blocks * 512 <= plain.bytes_on_disk + (64 << 10)
    assert st.st_mode & 0o777 == 0o600
    assert_mt_backtraces(target_path("mt"), str(tmp_path / "core"), t.info["tids"])
    # the compressed core's note says its post-copy facts are elsewhere
    assert snapcore_note(tmp_path / "core")["final"] is False
    assert snapcore_note(plain.path)["final"] is True
    assert_runs_on(t)


def test_info_reads_zst_directly(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--compress", "zstd", "-o", tmp_path, "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["path"] == str(tmp_path / f"core.{mt.pid}.zst") and res["compressed"] == "zstd"
    z = info_json(res["path"])
    assert z["core"]["compressed"] == "zstd" and z["core"]["core_size"] == res["core_size"]
    assert sorted(t["tid"] for t in z["threads"]) == live_tids(mt.pid)
    assert snapcore_cli("decompress", res["path"], "-o", tmp_path / "plain").returncode == 0
    d = info_json(tmp_path / "plain")
    for key in ("threads", "mappings", "modules", "process", "snapcore"):
        assert z[key] == d[key], key
    assert_runs_on(mt)


def test_compress_without_zstandard_is_a_clear_error(mt, tmp_path):
    code = (
        "import sys; sys.modules['zstandard'] = None; from snapcore.cli import main; "
        f"sys.exit(main(['{mt.pid}', '--compress', 'zstd', '-o', '{tmp_path}/c.zst']))"
    )
    p = run([sys.executable, "-c", code], timeout=60)
    assert_one_line_error(p, 1, "zstandard", "pip install 'snapcore[zstd]'")
    assert os.listdir(tmp_path) == []
    p = run(
        [
            sys.executable,
            "-c",
            code.replace(
                f"'{mt.pid}', '--compress', 'zstd', '-o', '{tmp_path}/c.zst'",
                "'decompress', 'x.zst'",
            ),
        ],
        timeout=60,
        cwd=tmp_path,
    )
    assert_one_line_error(p, 1, "pip install 'snapcore[zstd]'")
    assert_runs_on(mt)


def test_decompress_errors_leave_nothing(mt, tmp_path):
    assert (
        snapcore_cli(mt.pid, "--compress", "zstd", "-o", tmp_path / "c.zst", "-q").returncode == 0
    )
    data = open(tmp_path / "c.zst", "rb").read()
    (tmp_path / "cut.zst").write_bytes(data[: len(data) // 2])
    p = snapcore_cli("decompress", tmp_path / "cut.zst")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "cut").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    (tmp_path / "c").write_bytes(b"mine")
    assert_one_line_error(snapcore_cli("decompress", tmp_path / "c.zst"), 1, "exists")
    assert (tmp_path / "c").read_bytes() == b"mine"
    assert snapcore_cli("decompress", tmp_path / "c.zst", "--force").returncode == 0
    assert open(tmp_path / "c", "rb").read(4) == b"\x7fELF"
    assert_one_line_error(snapcore_cli("decompress", tmp_path / "c"), 2, "-o")
    assert_one_line_error(
        snapcore_cli("decompress", tmp_path / "c", "-o", tmp_path / "x"), 1, "not a zstandard"
    )
    assert_runs_on(mt)


def test_full_disk_leaves_no_compressed_file(mt, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    need_root("mounting a small tmpfs")
    run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        p = snapcore_cli(mt.pid, "--compress", "zstd", "-o", small / "c.zst", "--metadata")
        assert_one_line_error(p, 1, "No space left on device")
        assert os.listdir(small) == []
    finally:
        run(["umount", str(small)], check=True)
    assert_runs_on(mt)
