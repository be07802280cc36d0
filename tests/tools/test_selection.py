"""What goes in the core: --mini, --max-size, --all, --filter.

Oracles: gdb's backtraces, eu-stack, the executable file on disk, smaps.
"""

import json
import os
import re

import pytest

import snapcore

from support.oracles import (
    assert_known_frames,
    assert_mt_backtraces,
    core_loads,
    eu_stack,
    read_core_memory,
    snapcore_note,
)
from support.procs import (
    assert_one_line_error,
    assert_runs_on,
    info_json,
    live_tids,
    snapcore_cli,
)
from support.targets import MT_OUTER, MT_THREAD_FUNCS, need_built, pattern_buf, target_path

# --- filters -----------------------------------------------------------------------------


def test_mini_core_gives_every_thread_a_backtrace(mt, tmp_path):
    full = snapcore.snapshot(mt.pid, tmp_path / "full")
    mt.wait_blocked()
    p = snapcore_cli(mt.pid, "--mini", "-o", tmp_path / "mini", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["mode"] == "mini" and res["truncated"] is False and res["dropped"]
    size = os.path.getsize(tmp_path / "mini")
    assert size < full.file_size / 20, (size, full.file_size)
    _, gdb = assert_mt_backtraces(target_path("mt"), str(tmp_path / "mini"), mt.info["tids"])
    assert "libthread_db enabled" in gdb.stdout  # the thread lists are there too
    # the 1 MiB pattern buffer is not what backtraces need: left out
    assert read_core_memory(tmp_path / "mini", mt.info["buf"], 4096) == b"\0" * 4096
    frames, _ = eu_stack(tmp_path / "mini", target_path("mt"))
    assert_known_frames(frames, mt.info["tids"], MT_THREAD_FUNCS, MT_OUTER)
    note = snapcore_note(tmp_path / "mini")
    assert note["mode"] == "mini" and note["dropped"] == res["dropped"]
    assert_runs_on(mt)


def test_max_size_drops_the_largest_regions_first(mt, tmp_path):
    full = snapcore.snapshot(mt.pid, tmp_path / "full")
    mt.wait_blocked()
    limit = full.file_size - (2 << 20)  # the 4 MiB buffer alone must go
    p = snapcore_cli(mt.pid, "--max-size", str(limit), "-o", tmp_path / "fit", "--json")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["truncated"] is True and res["mode"] == "max-size"
    assert os.path.getsize(tmp_path / "fit") <= limit
    assert [d["start"] for d in res["dropped"]] == [mt.info["half"]]
    # the smaller pattern buffer stayed, byte for byte
    assert read_core_memory(tmp_path / "fit", mt.info["buf"], mt.info["buf_len"]) == pattern_buf(
        mt.info["buf_len"]
    )
    assert_mt_backtraces(target_path("mt"), str(tmp_path / "fit"), mt.info["tids"])
    r = info_json(tmp_path / "fit")
    assert r["snapcore"]["truncated"] is True and r["snapcore"]["max_size"] == limit
    assert "TRUNCATED" in snapcore_cli("info", tmp_path / "fit").stdout
    assert_runs_on(mt)


def test_max_size_small_still_gives_backtraces(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--max-size", "1M", "-o", tmp_path / "small", "-q")
    assert p.returncode == 0, p.stderr
    assert os.path.getsize(tmp_path / "small") <= 1 << 20
    assert_mt_backtraces(target_path("mt"), str(tmp_path / "small"), mt.info["tids"])
    assert snapcore_note(tmp_path / "small")["truncated"] is True
    # below what stacks and headers need: refused, nothing written, target resumed
    p = snapcore_cli(mt.pid, "--max-size", "16K", "-o", tmp_path / "tiny")
    assert_one_line_error(p, 1, "--max-size", "needed")
    assert not (tmp_path / "tiny").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    assert_runs_on(mt)


@pytest.mark.parametrize("exe", ["mt_nopie", "mt_static", "mt32"])
def test_mini_and_max_size_in_other_link_modes(spawn, tmp_path, exe):
    need_built(exe)
    t = spawn(exe)
    t.wait_blocked()
    for opts, name in ((["--mini"], "mini"), (["--max-size", "1M"], "small")):
        p = snapcore_cli(t.pid, *opts, "-o", tmp_path / name, "-q")
        assert p.returncode == 0, p.stderr
        assert os.path.getsize(tmp_path / name) <= 1 << 20
        assert_mt_backtraces(target_path(exe), str(tmp_path / name), t.info["tids"])
        r = info_json(tmp_path / name)
        assert sorted(th["tid"] for th in r["threads"]) == live_tids(t.pid)
        assert_runs_on(t)
        t.wait_blocked()


def test_all_dumps_every_readable_mapping(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--all", "-o", tmp_path / "all", "-q")
    assert p.returncode == 0, p.stderr
    with open(f"/proc/{mt.pid}/smaps") as f:
        smaps = f.read()
    io = [
        m.group(2).split()[-1]
        for m in re.finditer(
            r"^([0-9a-f]+)-[0-9a-f]+ ([^\n]*)\n.*?VmFlags:([^\n]*)", smaps, re.M | re.S
        )
        if " io" in m.group(3)
    ]
    # mt maps no device memory: its only VM_IO mappings are the kernel's special ones,
    # which --all dumps whole like the kernel (holes); so every mapping is dumped whole
    assert set(io) <= {"[vvar]", "[vvar_vclock]"}, io
    for ld in core_loads(tmp_path / "all"):
        assert ld["filesz"] == ld["memsz"], ld
    # the executable's text (never dumped by the kernel's rule) equals the file on disk
    exe = os.path.realpath(target_path("mt"))
    with open(f"/proc/{mt.pid}/maps") as f:
        text = [
            ln.split() for ln in f if ln.split()[1].startswith("r-x") and ln.rstrip().endswith(exe)
        ][0]
    start, end = (int(x, 16) for x in text[0].split("-"))
    with open(exe, "rb") as f:
        f.seek(int(text[2], 16))
        ondisk = f.read(end - start)
    assert read_core_memory(tmp_path / "all", start, len(ondisk)) == ondisk
    assert_mt_backtraces(target_path("mt"), str(tmp_path / "all"), mt.info["tids"])
    assert_runs_on(mt)


def test_filter_overrides_coredump_filter(mt, tmp_path):
    assert snapcore_cli(mt.pid, "--filter", "0x37", "-o", tmp_path / "f", "-q").returncode == 0
    note = snapcore_note(tmp_path / "f")
    assert note["coredump_filter"] == "0x37" and note["filter_source"] == "option"
    libc_text = [
        ld for ld in core_loads(tmp_path / "f") if ld["flags"] == 5 and ld["memsz"] > 1 << 20
    ]
    assert libc_text and all(ld["filesz"] == ld["memsz"] for ld in libc_text)
    assert_runs_on(mt)
