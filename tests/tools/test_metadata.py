"""The metadata record (SNAPCORE note, --metadata sidecar), output naming, --json."""

import json
import os
import resource
import socket
import time

import snapcore

from support.oracles import (
    snapcore_note,
)
from support.procs import (
    assert_one_line_error,
    assert_runs_on,
    info_json,
    live_tids,
    snapcore_cli,
)
from support.targets import MT_THREAD_NAMES, target_path

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
    # the target inherited our stack limit: /proc/PID/limits spells it like this
    stack = [
        "unlimited" if v == resource.RLIM_INFINITY else str(v)
        for v in resource.getrlimit(resource.RLIMIT_STACK)
    ]
    assert meta["limits"]["max_stack_size"] == stack
    assert sorted(t["tid"] for t in meta["threads"]) == live_tids(mt.pid)
    assert {t["name"] for t in meta["threads"]} == set(MT_THREAD_NAMES)
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
