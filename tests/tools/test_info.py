"""snapcore info: what it says of snapcore's, the kernel's and gcore's cores.

Oracles: /proc of the live target, gdb (`info symbol`), readelf's build-ids,
and cores written by the kernel and by gcore.
"""

import os
import re
import resource
import signal

from support.oracles import (
    build_id,
    core_loads,
    gdb_batch,
    need_kernel_cores,
)
from support.procs import (
    assert_one_line_error,
    assert_runs_on,
    info_json,
    live_tids,
    run,
    snapcore_cli,
)
from support.strict import need_tool
from support.targets import MT_THREAD_NAMES, target_path


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


def test_info_json_describes_the_live_process(spawn, tmp_path):
    mt = spawn("mt", "still")  # every thread asleep: each state is known, S
    mt.wait_blocked()
    core = tmp_path / "core"
    assert snapcore_cli(mt.pid, "-o", core, "-q").returncode == 0
    tids_now = live_tids(mt.pid)
    r = info_json(core)
    assert r["schema"] == "snapcore-info/1"
    assert sorted(t["tid"] for t in r["threads"]) == tids_now == sorted(mt.info["tids"])
    assert r["threads"][0]["tid"] == mt.pid and r["threads"][0]["current"]
    assert {t["name"] for t in r["threads"]} == set(MT_THREAD_NAMES)
    # sampled just before the freeze
    assert [t["state"] for t in r["threads"]] == ["S"] * 4
    p = r["process"]
    assert p["pid"] == mt.pid and p["comm"] == "mt"
    assert p["executable"] == target_path("mt") and p["cmdline"] == [target_path("mt"), "still"]
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
    assert exe["build_id"] == build_id(target_path("mt")) and exe["build_id_source"] == "core"
    libc = [m for f, m in mods.items() if "libc.so" in f][0]
    assert libc["build_id"] == build_id(libc["file"]) and libc["matches"] is True
    assert r["snapcore"]["pid"] == mt.pid and r["snapcore"]["final"] is True
    # every symbol named agrees with gdb's (same function start: same offset)
    ours = {t["tid"]: t["symbol"] for t in r["threads"]}
    assert all(ours.values()), r["threads"]
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
    assert_runs_on(mt, progress=False)


def test_info_reads_a_kernel_core(spawn, tmp_path):
    need_kernel_cores()
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
    assert mods[os.path.realpath(target_path("mt"))]["build_id"] == build_id(target_path("mt"))
    # the target was killed on purpose: this test is about reading the kernel's core


def test_info_reads_a_gcore_core(mt, tmp_path):
    need_tool("gcore", "gdb")
    tids = live_tids(mt.pid)
    p = run(["gcore", "-o", str(tmp_path / "gc"), str(mt.pid)], timeout=120)
    core = tmp_path / f"gc.{mt.pid}"
    assert core.exists(), p.stdout + p.stderr
    r = info_json(core)
    assert r["core"]["producer"] == "gcore"
    assert sorted(th["tid"] for th in r["threads"]) == tids
    assert r["process"]["pid"] == mt.pid
    assert any(m["build_id"] == build_id(target_path("mt")) for m in r["modules"])
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
