"""Issue 8: snapcore info, progress, compression, filters, metadata, naming.

Oracles are independent of snapcore where one exists: /proc of the live
target, gdb (backtraces, `info symbol`), eu-stack, readelf's build-ids, the
zstd command-line decoder, the executable file on disk, and cores written by
the kernel and by gcore.
"""

import json
import os
import pty
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import snapcore

from helpers import (
    assert_runs_on,
    core_loads,
    gdb_batch,
    have,
    pattern_buf,
    raw_notes,
    read_core_memory,
    run,
    snapcore_cli,
    target_path,
    wait_all_stopped,
)

THREAD_FUNCS = ("command_loop", "sleeper_thread", "cond_waiter_thread", "pipe_reader_thread")
THREAD_NAMES = {"mt", "sleeper", "waiter", "reader"}
NT_SNAPCORE = 0x4D455441


def live_tids(pid):
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def info_json(path, *extra):
    p = snapcore_cli("info", path, "--json", *extra)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


def build_id_of(path):
    out = run(["readelf", "-n", path], check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def assert_backtraces(exe, core, tids):
    out = gdb_batch(exe, core, "thread apply all bt").stdout
    for fn in THREAD_FUNCS:
        assert re.search(rf"\b{fn} \(", out), f"{fn} missing from gdb's backtraces:\n{out}"
    for tid in tids:
        assert f"LWP {tid}" in out, out
    return out


def assert_one_line_error(p, code, *fragments):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snapcore: error: "), p.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]


def snapcore_note(path):
    notes = [d for n, t, d in raw_notes(path) if n == "SNAPCORE"]
    assert len(notes) == 1
    return json.loads(notes[0])


def gdb_symbols(exe, core):
    """{tid: (name, offset)} from gdb's `info symbol $pc` for every thread."""
    out = gdb_batch(exe, core, "thread apply all info symbol $pc").stdout
    found = {}
    for block in re.split(r"\nThread \d+ \(", "\n" + out)[1:]:
        m = re.search(r"LWP (\d+)", block)
        s = re.search(r"^(\S+)(?: \+ (\d+))? in section", block, re.M)
        if m and s:
            found[int(m.group(1))] = (s.group(1), int(s.group(2) or 0))
    return found


# --- snapcore info ------------------------------------------------------------------------


def test_info_json_describes_the_live_process(mt, tmp_path):
    core = tmp_path / "core"
    assert snapcore_cli(mt.pid, "-o", core, "-q").returncode == 0
    tids_now = live_tids(mt.pid)
    r = info_json(core)
    assert r["schema"] == "snapcore-info/1"
    assert sorted(t["tid"] for t in r["threads"]) == tids_now == sorted(mt.info["tids"])
    assert r["threads"][0]["tid"] == mt.pid and r["threads"][0]["current"]
    assert {t["name"] for t in r["threads"]} == THREAD_NAMES
    # sampled just before the freeze; the sleeper wakes every millisecond
    assert all(t["state"] in ("S", "R") for t in r["threads"])
    assert r["threads"][0]["state"] == "S"  # blocked in read()
    p = r["process"]
    assert p["pid"] == mt.pid and p["comm"] == "mt"
    assert p["executable"] == target_path("mt") and p["cmdline"] == [target_path("mt")]
    assert r["core"]["producer"] == "snapcore" and r["core"]["compressed"] is None
    assert r["core"]["core_size"] == os.path.getsize(core)
    loads = core_loads(core)
    assert r["memory"]["dumped"] == sum(ld["filesz"] for ld in loads)
    assert r["memory"]["mapped"] == sum(ld["memsz"] for ld in loads)
    assert [(m["start"], m["dumped"]) for m in r["mappings"]] == [
        (ld["vaddr"], ld["filesz"]) for ld in loads
    ]
    mods = {m["file"]: m for m in r["modules"]}
    exe = mods[os.path.realpath(target_path("mt"))]
    assert exe["build_id"] == build_id_of(target_path("mt")) and exe["build_id_source"] == "core"
    libc = [m for f, m in mods.items() if "libc.so" in f][0]
    assert libc["build_id"] == build_id_of(libc["file"]) and libc["matches"] is True
    assert r["snapcore"]["pid"] == mt.pid and r["snapcore"]["final"] is True
    # every symbol named agrees with gdb's (same function start: same offset)
    ours = {t["tid"]: t["symbol"] for t in r["threads"] if t["symbol"]}
    assert mt.pid in ours, r["threads"]
    theirs = gdb_symbols(target_path("mt"), str(core))
    for tid, sym in ours.items():
        name, off = sym.rsplit("+", 1)
        assert tid in theirs, (tid, sym, theirs)
        assert int(off, 16) == theirs[tid][1], (tid, sym, theirs[tid])
    # the text form names the same facts
    text = snapcore_cli("info", core)
    assert text.returncode == 0 and text.stderr == ""
    for tid in tids_now:
        assert str(tid) in text.stdout
    assert exe["build_id"] in text.stdout and "sleeper" in text.stdout
    assert_runs_on(mt)


def test_info_reads_a_kernel_core(spawn, tmp_path):
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern is {pattern!r}: the kernel core does not land in cwd")
    kdir = tmp_path / "kernel"
    kdir.mkdir()

    def unlimited_core():
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    t = spawn("mt", cwd=str(kdir), preexec_fn=unlimited_core)
    t.wait_blocked()
    tids = live_tids(t.pid)
    os.kill(t.pid, signal.SIGABRT)
    t.proc.wait(timeout=30)
    assert t.proc.returncode == -signal.SIGABRT
    # the kernel writes the core before the exit status is reported
    cores = [p for p in kdir.iterdir() if p.name.startswith("core")]
    assert len(cores) == 1, os.listdir(kdir)
    r = info_json(cores[0])
    assert r["core"]["producer"] == "kernel" and r["snapcore"] is None
    assert sorted(th["tid"] for th in r["threads"]) == tids
    assert r["process"]["pid"] == t.pid and r["process"]["signal_name"] == "SIGABRT"
    assert all(th["signal_name"] == "SIGABRT" for th in r["threads"])
    assert r["process"]["executable"] == os.path.realpath(target_path("mt"))
    mods = {m["file"]: m for m in r["modules"]}
    assert mods[os.path.realpath(target_path("mt"))]["build_id"] == build_id_of(target_path("mt"))
    # the target was killed on purpose: this test is about reading the kernel's core


@pytest.mark.skipif(not have("gcore"), reason="gdb's gcore not installed")
def test_info_reads_a_gcore_core(mt, tmp_path):
    tids = live_tids(mt.pid)
    p = run(["gcore", "-o", str(tmp_path / "gc"), str(mt.pid)], timeout=120)
    core = tmp_path / f"gc.{mt.pid}"
    assert core.exists(), p.stdout + p.stderr
    r = info_json(core)
    assert r["core"]["producer"] == "gcore"
    assert sorted(th["tid"] for th in r["threads"]) == tids
    assert r["process"]["pid"] == mt.pid
    assert any(m["build_id"] == build_id_of(target_path("mt")) for m in r["modules"])
    assert_runs_on(mt)


def test_info_errors(tmp_path):
    notcore = tmp_path / "notcore"
    notcore.write_bytes(b"hello, world\n" * 10)
    assert_one_line_error(snapcore_cli("info", notcore), 1, "not an ELF file")
    exe = target_path("mt")
    assert_one_line_error(snapcore_cli("info", exe), 1, "not a core")
    assert_one_line_error(snapcore_cli("info", tmp_path / "missing"), 1, "No such file")
    assert_one_line_error(snapcore_cli("info"), 2, "CORE")
    assert_one_line_error(snapcore_cli("info", exe, "--bogus"), 2, "--bogus")
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)
    assert_one_line_error(snapcore_cli("info", bad), 1, "bad.zst")


# --- compression ------------------------------------------------------------------------


def _masked(path):
    """The core's bytes with the SNAPCORE note's description blanked."""
    data = bytearray(open(path, "rb").read())
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_NOTE":
                for n in seg.iter_notes():
                    if n["n_name"] == "SNAPCORE":
                        off = n["n_offset"] + 12 + 12  # Nhdr + "SNAPCORE\0" padded
                        data[off : off + n["n_descsz"]] = b"?" * n["n_descsz"]
    return bytes(data)


@pytest.mark.skipif(not have("zstd"), reason="zstd command-line tool not installed")
def test_zstd_round_trip_equals_the_uncompressed_core(spawn, tmp_path):
    """Two snapshots of a stopped target, one plain, one compressed: identical cores."""
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
    assert_backtraces(target_path("mt"), str(tmp_path / "core"), t.info["tids"])
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
    out = assert_backtraces(target_path("mt"), str(tmp_path / "mini"), mt.info["tids"])
    assert "libthread_db enabled" in out  # the thread lists are there too
    # the 1 MiB pattern buffer is not what backtraces need: left out
    assert read_core_memory(tmp_path / "mini", mt.info["buf"], 4096) == b"\0" * 4096
    if have("eu-stack"):
        es = run(["eu-stack", "--core", str(tmp_path / "mini"), "-e", target_path("mt")])
        for fn in THREAD_FUNCS:
            assert fn in es.stdout, es.stdout + es.stderr
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
    assert_backtraces(target_path("mt"), str(tmp_path / "fit"), mt.info["tids"])
    r = info_json(tmp_path / "fit")
    assert r["snapcore"]["truncated"] is True and r["snapcore"]["max_size"] == limit
    assert "TRUNCATED" in snapcore_cli("info", tmp_path / "fit").stdout
    assert_runs_on(mt)


def test_max_size_small_still_gives_backtraces(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--max-size", "1M", "-o", tmp_path / "small", "-q")
    assert p.returncode == 0, p.stderr
    assert os.path.getsize(tmp_path / "small") <= 1 << 20
    assert_backtraces(target_path("mt"), str(tmp_path / "small"), mt.info["tids"])
    assert snapcore_note(tmp_path / "small")["truncated"] is True
    # below what stacks and headers need: refused, nothing written, target resumed
    p = snapcore_cli(mt.pid, "--max-size", "16K", "-o", tmp_path / "tiny")
    assert_one_line_error(p, 1, "--max-size", "needed")
    assert not (tmp_path / "tiny").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []
    assert_runs_on(mt)


@pytest.mark.parametrize("exe", ["mt_nopie", "mt_static", "mt32"])
def test_mini_and_max_size_in_other_link_modes(spawn, tmp_path, exe):
    if not os.path.exists(target_path(exe)):
        pytest.skip(f"{exe} not built (gcc -m32 unavailable?)")
    read_nr = (3,) if exe == "mt32" else (0,)  # read(2) on i386 / x86_64
    t = spawn(exe)
    t.wait_blocked(syscalls=read_nr)
    for opts, name in ((["--mini"], "mini"), (["--max-size", "1M"], "small")):
        p = snapcore_cli(t.pid, *opts, "-o", tmp_path / name, "-q")
        assert p.returncode == 0, p.stderr
        assert os.path.getsize(tmp_path / name) <= 1 << 20
        assert_backtraces(target_path(exe), str(tmp_path / name), t.info["tids"])
        r = info_json(tmp_path / name)
        assert sorted(th["tid"] for th in r["threads"]) == live_tids(t.pid)
        assert_runs_on(t)
        t.wait_blocked(syscalls=read_nr)


def test_all_dumps_every_readable_mapping(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--all", "-o", tmp_path / "all", "-q")
    assert p.returncode == 0, p.stderr
    with open(f"/proc/{mt.pid}/smaps") as f:
        smaps = f.read()
    io_starts = {
        int(m.group(1), 16)
        for m in re.finditer(r"^([0-9a-f]+)-[0-9a-f]+ .*?\nVmFlags:([^\n]*)", smaps, re.M | re.S)
        if " io" in m.group(2)
    }
    for ld in core_loads(tmp_path / "all"):
        if ld["vaddr"] not in io_starts:
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
    assert_backtraces(target_path("mt"), str(tmp_path / "all"), mt.info["tids"])
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


# --- metadata, naming, output modes ------------------------------------------------------


def test_metadata_sidecar_and_note(mt, tmp_path):
    core = tmp_path / "core"
    p = snapcore_cli(mt.pid, "-o", core, "--metadata", "--reason", "hung in test", "-q")
    assert p.returncode == 0, p.stderr
    side = tmp_path / "core.json"
    st = os.stat(side)
    assert st.st_mode & 0o777 == 0o600
    meta = json.loads(side.read_text())
    assert meta == snapcore_note(core)  # the core carries the same record
    assert meta["final"] is True and meta["format"] == 1
    assert meta["reason"] == "hung in test" and meta["trigger"] == "cli"
    assert meta["snapcore_argv"][0] == "snapcore" and "--metadata" in meta["snapcore_argv"]
    assert meta["snapcore"] == snapcore.__version__ and meta["mode"] == "normal"
    assert meta["pid"] == mt.pid and meta["cmdline"] == [target_path("mt")]
    assert meta["cwd"] == os.readlink(f"/proc/{mt.pid}/cwd")
    assert meta["exe"] == os.readlink(f"/proc/{mt.pid}/exe")
    with open(f"/proc/{mt.pid}/cgroup") as f:
        assert meta["cgroup"] == f.read().splitlines()
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    assert meta["limits"]["max_stack_size"][0] in (str(soft), "unlimited")
    assert sorted(t["tid"] for t in meta["threads"]) == live_tids(mt.pid)
    assert {t["name"] for t in meta["threads"]} == THREAD_NAMES
    assert 0 < meta["pause_seconds"] <= meta["wall_seconds"]
    assert meta["truncated"] is False and meta["dropped"] == [] and meta["max_size"] is None
    assert meta["host"] == socket.gethostname()
    assert abs(meta["time_unix"] - time.time()) < 120
    # an existing sidecar is refused before the target is touched; nothing is written
    (tmp_path / "y.core.json").write_text("keep")
    p = snapcore_cli(mt.pid, "-o", tmp_path / "y.core", "--metadata")
    assert_one_line_error(p, 1, "y.core.json already exists")
    assert not (tmp_path / "y.core").exists()
    assert (tmp_path / "y.core.json").read_text() == "keep"
    assert_runs_on(mt)


def test_sidecar_of_a_compressed_core_has_the_final_facts(mt, tmp_path):
    p = snapcore_cli(mt.pid, "--compress", "zstd", "-o", tmp_path / "c.zst", "--metadata", "-q")
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "c.zst.json").read_text())
    assert meta["final"] is True and meta["pause_seconds"] > 0
    r = info_json(tmp_path / "c.zst")
    assert r["snapcore"]["final"] is False and r["snapcore"]["pause_seconds"] is None
    assert {
        k: v
        for k, v in r["snapcore"].items()
        if k not in ("final", "pause_seconds", "wall_seconds", "unreadable", "unreadable_omitted")
    } == {
        k: v
        for k, v in meta.items()
        if k not in ("final", "pause_seconds", "wall_seconds", "unreadable", "unreadable_omitted")
    }
    assert_runs_on(mt)


def test_output_templates_and_directories(mt, tmp_path):
    host = socket.gethostname()
    p = snapcore_cli(mt.pid, "-o", tmp_path / "%e-%p-%h.core", "-q")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / f"mt-{mt.pid}-{host}.core").exists()
    before = int(time.time())
    assert snapcore_cli(mt.pid, "-o", tmp_path / "t%t.%%", "-q").returncode == 0
    made = [n for n in os.listdir(tmp_path) if n.startswith("t") and n.endswith(".%")]
    assert len(made) == 1 and before <= int(made[0][1:-2]) <= int(time.time())
    sub = tmp_path / "dir"
    sub.mkdir()
    assert snapcore_cli(mt.pid, "-o", sub, "-q").returncode == 0
    assert (sub / f"core.{mt.pid}").exists()
    assert snapcore_cli(mt.pid, "-o", f"{sub}/", "--compress", "zstd", "-q").returncode == 0
    assert (sub / f"core.{mt.pid}.zst").exists()
    p = snapcore_cli(mt.pid, "-o", tmp_path / "bad%q")
    assert_one_line_error(p, 2, "%q")
    assert not list(tmp_path.glob("bad*"))
    assert_runs_on(mt)


def test_json_summary_is_one_object(mt, tmp_path):
    p = snapcore_cli(mt.pid, "-o", tmp_path / "core", "--json")
    assert p.returncode == 0 and p.stderr == ""
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["path"] == str(tmp_path / "core") and res["pid"] == mt.pid
    assert sorted(res["tids"]) == live_tids(mt.pid)
    assert res["file_size"] == os.path.getsize(tmp_path / "core")
    assert res["compressed"] is None and res["mode"] == "normal"
    assert 0 < res["pause_seconds"] <= res["wall_seconds"]
    assert_runs_on(mt)


# --- progress ----------------------------------------------------------------------------


def run_on_pty(argv, env_extra, timeout=120):
    """Run argv with stderr on a pseudo-terminal; return (rc, stdout, terminal output)."""
    master, slave = pty.openpty()
    env = dict(os.environ, **env_extra)
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "CLI did not finish"
            r, _, _ = select.select([master], [], [], left)
            if not r:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        out = proc.stdout.read().decode()
        proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(mt, tmp_path):
    cli = [sys.executable, "-m", "snapcore", str(mt.pid), "-f"]
    # a snapshot longer than the delay draws a bar on the terminal, then erases it
    rc, out, term = run_on_pty(cli + ["-o", str(tmp_path / "a")], {"SNAPCORE_PROGRESS_DELAY": "0"})
    assert rc == 0 and str(tmp_path / "a") in out
    assert re.search(r"\[[=> ]+\] +\d+% .*/s", term), term
    assert "100%" in term and term.endswith("\r\x1b[K"), repr(term)
    # shorter than the default delay (1 s): nothing drawn
    rc, out, term = run_on_pty(cli + ["-o", str(tmp_path / "b")], {})
    assert rc == 0 and term == "", repr(term)
    # --quiet: nothing at all, even past the delay
    rc, out, term = run_on_pty(
        cli + ["-o", str(tmp_path / "c"), "-q"], {"SNAPCORE_PROGRESS_DELAY": "0"}
    )
    assert rc == 0 and out == "" and term == ""
    # not a terminal: nothing on stderr
    p = run(cli + ["-o", str(tmp_path / "d")], env=dict(os.environ, SNAPCORE_PROGRESS_DELAY="0"))
    assert p.returncode == 0 and p.stderr == ""
    assert_runs_on(mt)


# --- help and usage errors -----------------------------------------------------------------


def test_help_names_every_option():
    p = snapcore_cli("--help")
    assert p.returncode == 0
    for opt in (
        "--all",
        "--mini",
        "--max-size",
        "--compress",
        "--metadata",
        "--reason",
        "--json",
        "--quiet",
        "--filter",
        "%p",
        "%e",
        "%t",
        "%h",
        "info",
        "decompress",
    ):
        assert opt in p.stdout, opt
    p = snapcore_cli("info", "--help")
    assert p.returncode == 0 and "--json" in p.stdout and "kernel" in p.stdout
    p = snapcore_cli("decompress", "--help")
    assert p.returncode == 0 and "-o" in p.stdout and "sparse" in p.stdout


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--max-size", "lots"], "not a size"),
        (["--max-size", "0"], "positive"),
        (["--mini", "--all"], "exclude each other"),
        (["--compress", "lz4"], "invalid choice"),
        (["--filter", "xyz"], "coredump_filter"),
        (["--reason"], "expected one argument"),
    ],
)
def test_usage_errors(args, fragment):
    p = snapcore_cli("1", *args)
    assert_one_line_error(p, 2, fragment)


def test_full_disk_leaves_no_compressed_file(mt, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        p = snapcore_cli(mt.pid, "--compress", "zstd", "-o", small / "c.zst", "--metadata")
        assert_one_line_error(p, 1, "No space left on device")
        assert os.listdir(small) == []
    finally:
        run(["umount", str(small)], check=True)
    assert_runs_on(mt)
