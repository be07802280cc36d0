"""Every snapshot option on every path: it takes effect, or it is refused up front.

Paths: single (`snapcore PID`), self (`snapshot(os.getpid())`), tree (`snapcore PID
--tree`), live (`snapcore PID --live`), run (`snapcore run --timeout`) and pytest
(the plugin).  Each path runs the same four combinations of options, and every
option of a combination is checked on what was written, with oracles that share
no code with snapcore: tests/support/coreparse.py for the ELF framing and the notes,
zstandard for compressed streams, json for the sidecars, tarfile and hashlib
for bundles.  Refusals are checked
for their exit status, their one-line message and for nothing having been
touched.  The table of refusals is snapcore.capture.request.PATH_REFUSALS;
docs/python-api.md shows it (test_docs_table_is_the_table).
"""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap

import pytest
import zstandard

from snapcore.capture.request import PATH_REFUSALS, PATHS, SnapshotOptions, path_table

from support.coreparse import Core
from support.procs import assert_runs_on, assert_untraced, run, snapcore_cli
from support.targets import HANG2, HANGSUITES, ROOT, TREE

SUITE = os.path.join(HANGSUITES, "hang_suite.py")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PF_X = 1
MAX_SIZE = 6 << 20
BUNDLE_MAX = 2 << 20  # the Python executable fits; libpython and libc do not

# the combinations every path runs; every option appears in one
COMBOS = {
    "mini-zstd": dict(
        mini=True,
        compress="zstd",
        metadata=True,
        coredump_filter=0x13,
        reason="combo one",
        stop_timeout=7.5,
        force=True,
    ),
    "all": dict(all_mappings=True, metadata=True, force=True),
    "max-size": dict(max_size=MAX_SIZE, metadata=True, force=True),
    # compress with bundle: the archive is zstd, the cores inside are plain
    "bundle": dict(
        bundle=True, bundle_max_size=BUNDLE_MAX, compress="zstd", metadata=True, force=True
    ),
}
# how a user spells them on a command line (written out here, not taken from snapcore)
FLAGS = {
    "mini": ["--mini"],
    "all_mappings": ["--all"],
    "compress": ["--compress", "zstd"],
    "metadata": ["--metadata"],
    "coredump_filter": ["--filter", "0x13"],
    "reason": ["--reason", "combo one"],
    "stop_timeout": ["--stop-timeout", "7.5"],
    "force": ["--force"],
    "max_size": ["--max-size", str(MAX_SIZE)],
    "live": ["--live"],
    "bundle": ["--bundle"],
    "bundle_max_size": ["--bundle-max-size", str(BUNDLE_MAX)],
}
TRIGGER = {
    "single": "cli",
    "live": "cli",
    "tree": "cli",
    "self": "self",
    "run": "run",
    "pytest": "pytest",
}


def flags(opts, prefix=""):
    out = []
    for name, _value in opts.items():
        spelled = list(FLAGS[name])
        spelled[0] = "--" + prefix + spelled[0][2:]
        out += spelled
    return out


def applies(path, opts):
    """The options of opts this path takes (pytest refuses --force: see the table)."""
    return {k: v for k, v in opts.items() if (k, path) not in PATH_REFUSALS}


# ---------------------------------------------------------------------------
# reading back what was written


class Written:
    """One core as written: raw bytes (decompressed), its parsed framing, its record."""

    def __init__(self, path, opts, tmp_path):
        self.path = str(path)
        with open(path, "rb") as f:
            raw = f.read()
        self.on_disk = raw
        self.compressed = raw[:4] == ZSTD_MAGIC
        if self.compressed:
            params = zstandard.get_frame_parameters(raw)
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
            self.announced = params.content_size
        plain = tmp_path / (os.path.basename(self.path) + ".plain")
        plain.write_bytes(raw)
        self.size = len(raw)
        self.core = Core(plain)
        self.note_record = json.loads(self.core.process[("SNAPCORE", 0x4D455441)])
        sidecar = self.path + ".json"
        self.sidecar = json.loads(open(sidecar).read()) if os.path.exists(sidecar) else None
        self.record = self.sidecar if self.sidecar is not None else self.note_record

    def close(self):
        self.core.close()


def check_core(w, opts, trigger):
    """Assert the effect of every option in opts on the core w."""
    c = w.core
    assert c.e_type == 4 and c.loads, "not an ELF core with segments"
    assert max(ld.offset + ld.filesz for ld in c.loads) <= w.size
    rec = w.record
    assert rec["trigger"] == trigger
    dumped = sum(ld.filesz for ld in c.loads)
    # compress
    if opts.get("compress"):
        assert w.compressed and w.announced == w.size
        assert rec["compress"] == "zstd"
    else:
        assert w.on_disk[:4] == b"\x7fELF" and not w.compressed
    # metadata: a sidecar beside each core, the same record as the note
    if opts.get("metadata"):
        assert w.sidecar is not None, f"no {w.path}.json"
        assert w.sidecar["final"] is True and w.sidecar["pid"] == w.note_record["pid"]
        assert oct(os.stat(w.path + ".json").st_mode & 0o777) == "0o600"
    else:
        assert w.sidecar is None
    # mini: only what backtraces need, every thread's stack page among it
    if opts.get("mini"):
        assert rec["mode"].startswith("mini") and rec["dropped"]
        assert dumped < 8 << 20, dumped
        for t in c.threads:
            sp = c.regs(t)[19]  # rsp
            ld = c.load_at(sp)
            assert ld.vaddr <= sp < ld.vaddr + ld.filesz, f"stack of {t.tid} not kept"
    # all: executable file mappings dumped whole (never, in a normal core)
    if opts.get("all_mappings"):
        assert rec["mode"] == "all"
        assert any(ld.flags & PF_X and ld.filesz == ld.memsz > 256 << 10 for ld in c.loads)
    # max-size: the bound holds and the core says it was cut
    if opts.get("max_size"):
        assert w.size <= opts["max_size"] < 20 << 20
        assert rec["max_size"] == opts["max_size"] and rec["truncated"] is True
        assert rec["mode"] == "max-size"
    if not any(opts.get(k) for k in ("mini", "all_mappings", "max_size")):
        assert rec["mode"] == "normal"
    if "coredump_filter" in opts:
        assert rec["coredump_filter"] == hex(opts["coredump_filter"])
        assert rec["filter_source"] == "option"
    else:
        assert rec["filter_source"] == "target"
    if "reason" in opts:
        assert rec["reason"] == opts["reason"]
    assert rec["stop_timeout"] == opts.get("stop_timeout", 5.0)
    return dumped


def check_all(paths, opts, trigger, tmp_path, want_pids):
    found = {}
    for p in paths:
        w = Written(p, opts, tmp_path)
        try:
            check_core(w, opts, trigger)
            found[w.note_record["pid"]] = w.path
        finally:
            w.close()
    assert sorted(found) == sorted(want_pids), (found, want_pids)


def cores_in(d):
    return sorted(
        str(d / n) for n in os.listdir(d) if n.startswith("core.") and not n.endswith(".json")
    )


def unpack_bundle(path, dest, opts, pids):
    """Check a bundle with tarfile and hashlib; returns the paths of its cores, unpacked.

    One zstd frame of a tar: every member listed in bundle.json with its sha256,
    a core (and its record) per process, the executables within bundle_max_size.
    """
    raw = open(path, "rb").read()
    assert raw[:4] == ZSTD_MAGIC
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    data = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert all(m.isreg() for m in tf.getmembers())
        tf.extractall(dest, filter="data")
    manifest = json.loads((dest / "bundle.json").read_text())
    for name, want in manifest["members"].items():
        got = hashlib.sha256((dest / name).read_bytes()).hexdigest()
        assert got == want["sha256"], name
    assert sorted(c["pid"] for c in manifest["cores"]) == sorted(pids)
    binaries = manifest["binaries"]
    assert binaries["max_size"] == opts.get("bundle_max_size")
    if opts.get("bundle_max_size"):
        assert 0 < binaries["stored"] <= opts["bundle_max_size"] and binaries["left_out"] > 0
    for c in manifest["cores"]:
        exe = next(f for f in manifest["files"] if f["path"] == c["executable"])
        assert exe["member"] and (dest / exe["member"]).is_file(), exe
    return [str(dest / c["member"]) for c in manifest["cores"]]


def check_bundles(path, paths, pids, opts, tmp_path):
    """The cores a bundle path wrote, unpacked (a tree's: its loose cores, which must
    be the archive's); the options as the cores themselves take them."""
    dest = tmp_path / "unpacked"
    dest.mkdir()
    if path in ("single", "live", "self"):
        if opts.get("metadata"):  # the sidecar is the archive's
            assert oct(os.stat(str(paths[0]) + ".json").st_mode & 0o777) == "0o600"
        paths = unpack_bundle(paths[0], dest, opts, pids)
    else:
        inside = unpack_bundle(
            os.path.join(os.path.dirname(paths[0]), "bundle.tar.zst"), dest, opts, pids
        )
        for loose in paths:
            twin = dest / os.path.basename(loose)
            assert open(loose, "rb").read() == twin.read_bytes()
        paths = inside
    return paths, {k: v for k, v in opts.items() if k != "compress"}


# ---------------------------------------------------------------------------
# the paths


@pytest.fixture
def tree(spawn):
    t = spawn([sys.executable, TREE, "--fanout", "1"])
    return t


def _stale(path):
    """A file that --force must replace (and that without it would be refused)."""
    with open(path, "w") as f:
        f.write("stale\n")


def run_single(tree, opts, tmp_path, live=False):
    child = tree.info["pids"][1]
    out = tmp_path / "core"
    _stale(out)
    if opts.get("metadata"):
        _stale(str(out) + ".json")
    extra = ["--live"] if live else []
    p = snapcore_cli(child, "-o", out, *extra, *flags(opts))
    assert p.returncode == 0, p.stderr
    return [out], [child]


def run_self(tree, opts, tmp_path):
    out = tmp_path / "core"
    _stale(out)
    if opts.get("metadata"):
        _stale(str(out) + ".json")
    code = textwrap.dedent(f"""
        import os, snapcore
        s = snapcore.snapshot(os.getpid(), {str(out)!r}, **{opts!r})
        print(s.pid)
    """)
    p = run([sys.executable, "-c", code], timeout=120)
    assert p.returncode == 0, p.stderr
    return [out], [int(p.stdout)]


def run_tree(tree, opts, tmp_path):
    out = tmp_path / "tree"
    out.mkdir()
    _stale(out / "manifest.json")
    p = snapcore_cli(tree.pid, "--tree", "-o", out, *flags(opts))
    assert p.returncode == 0, p.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(e["result"] == "ok" for e in manifest["processes"]), manifest
    return cores_in(out), tree.info["pids"]


def run_run(opts, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _stale(out / "manifest.json")
    pidfile = str(tmp_path / "pids")
    p = snapcore_cli(
        "run",
        "--timeout",
        "1.5",
        "--grace",
        "0.5",
        "--out",
        out,
        "--no-stacks",
        *flags(opts),
        "--",
        sys.executable,
        HANG2,
        pidfile,
        timeout=120,
    )
    assert p.returncode == 124, p.stderr
    with open(pidfile) as f:
        pids = [int(x) for x in f.read().split()]
    return cores_in(out), pids


def pytest_suite(tmp_path, *args):
    (tmp_path / "suite").mkdir(exist_ok=True)
    root = tmp_path / "suite"
    with open(SUITE) as f:
        (root / "test_hang_suite.py").write_text(f.read())
    (root / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPCORE_"))}
    env["SNAPCORE_SUITE_PIDFILE"] = str(root / "child.pid")
    env["PYTHONPATH"] = ROOT
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--snapcore-timeout",
            "2",
            "--snapcore-grace",
            "0.5",
            *args,
            "test_hang_suite.py::test_hangs",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return root, p


def run_pytest(opts, tmp_path):
    root, p = pytest_suite(tmp_path, *flags(opts, prefix="snapcore-"))
    assert p.returncode == 1, p.stdout + p.stderr  # the hung test failed
    folders = sorted((root / "snapcore-hangs").iterdir())
    assert len(folders) == 1, folders
    cores = cores_in(folders[0])
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    return cores, [e["pid"] for e in manifest["processes"]]


@pytest.mark.parametrize("combo", sorted(COMBOS))
@pytest.mark.parametrize("path", PATHS)
def test_every_option_takes_effect(path, combo, tree, tmp_path):
    opts = applies(path, COMBOS[combo])
    if path in ("single", "live"):
        paths, pids = run_single(tree, opts, tmp_path, live=path == "live")
    elif path == "self":
        paths, pids = run_self(tree, opts, tmp_path)
    elif path == "tree":
        paths, pids = run_tree(tree, opts, tmp_path)
    elif path == "run":
        paths, pids = run_run(opts, tmp_path)
    else:
        paths, pids = run_pytest(opts, tmp_path)
    if opts.get("bundle"):
        paths, opts = check_bundles(path, paths, pids, opts, tmp_path)
    check_all(paths, opts, TRIGGER[path], tmp_path, pids)
    if path == "live":
        rec = (
            json.loads(open(str(paths[0]) + ".json").read())
            if opts.get("metadata")
            else Written(paths[0], opts, tmp_path).note_record
        )
        assert rec["live"] is True and rec["live_fallback"] is None
    assert_runs_on(tree)


# ---------------------------------------------------------------------------
# refusals: exit 2 (or InvalidRequest, or pytest's usage error), one line, nothing touched


REFUSED = sorted(PATH_REFUSALS)


@pytest.mark.parametrize("option,path", REFUSED)
def test_refused_before_anything_is_touched(option, path, tree, tmp_path):
    before = sorted(os.listdir(tmp_path))
    if option == "progress":
        code = (
            "import os, snapcore\n"
            "try:\n"
            "    snapcore.snapshot(os.getpid(), 'core', progress=print)\n"
            "except snapcore.InvalidRequest as e:\n"
            "    print('refused', e)\n"
        )
        p = run([sys.executable, "-c", code], cwd=tmp_path)
        assert p.stdout.startswith("refused progress cannot be used on the calling process"), (
            p.stdout + p.stderr
        )
    elif path == "self":
        code = (
            "import os, snapcore\n"
            "try:\n"
            f"    snapcore.snapshot(os.getpid(), 'core', {option}=True)\n"
            "except snapcore.InvalidRequest as e:\n"
            "    print('refused', e)\n"
        )
        p = run([sys.executable, "-c", code], cwd=tmp_path)
        assert p.stdout.startswith(f"refused --{option} cannot be used on the calling"), (
            p.stdout + p.stderr
        )
    elif path == "tree":
        p = snapcore_cli(tree.pid, "--tree", "-o", tmp_path / "t", f"--{option}")
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith(f"snapcore: error: --{option} cannot be used with --tree")
    elif path == "run":
        marker = tmp_path / "ran"
        p = snapcore_cli("run", "--timeout", "5", f"--{option}", "--", "touch", marker)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "cannot be used with snapcore run" in p.stderr
        assert not marker.exists()  # CMD never started
    elif path == "pytest":
        root, p = pytest_suite(tmp_path, f"--snapcore-{option}")
        assert p.returncode == 4, p.stdout + p.stderr  # pytest's usage error
        assert f"--{option} cannot be used in the pytest plugin" in p.stderr
        assert not (root / "child.pid").exists()  # no test ran
        before.append("suite")
    else:
        raise AssertionError(f"no check written for ({option}, {path})")
    assert sorted(os.listdir(tmp_path)) == before
    assert_untraced(tree.pid)
    assert_runs_on(tree)


def test_invalid_combinations_are_refused_by_the_options_themselves():
    for bad in (
        dict(mini=True, all_mappings=True),
        dict(max_size=0),
        dict(compress="lz4"),
        dict(stop_timeout=0),
        dict(coredump_filter=1 << 40),
        dict(trigger="cron"),
    ):
        with pytest.raises(ValueError):
            SnapshotOptions(**bad)


def test_docs_table_is_the_table():
    with open(os.path.join(ROOT, "docs", "python-api.md")) as f:
        doc = f.read()
    assert path_table() in doc


def test_cli_refuses_mini_with_all(tree, tmp_path):
    p = snapcore_cli(tree.pid, "-o", tmp_path / "c", "--mini", "--all")
    assert p.returncode == 2 and p.stderr.count("\n") == 1
    assert "--mini and --all" in p.stderr and not os.listdir(tmp_path)
    assert_runs_on(tree)


def test_progress_is_reported_on_single_live_and_tree(tree, tmp_path):
    code = textwrap.dedent(f"""
        import snapcore
        for name, call in (
                ("single", lambda cb: snapcore.snapshot({tree.info["pids"][1]}, 'a',
                                                        progress=cb)),
                ("live", lambda cb: snapcore.snapshot({tree.info["pids"][1]}, 'b', live=True,
                                                      progress=cb)),
                ("tree", lambda cb: snapcore.snapshot_tree({tree.pid}, 'c', progress=cb))):
            calls = []
            call(lambda d, t: calls.append((d, t)))
            assert calls and all(0 < d <= t for d, t in calls), (name, calls)
            assert calls[-1][0] == calls[-1][1], (name, calls)      # the last says: all done
        print("ok")
    """)
    p = run([sys.executable, "-c", code], cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stdout + p.stderr
    assert_untraced(tree.pid)


def test_metadata_records_the_trigger_and_the_measured_pause(tree, tmp_path):
    """The record's pause is the one measured (self: 0.0 before), its trigger the path."""
    code = textwrap.dedent(f"""
        import json, os, snapcore
        s = snapcore.snapshot(os.getpid(), "self.core", mini=True, metadata=True)
        rec = json.load(open("self.core.json"))
        print(json.dumps([s.pause_time, rec["pause_seconds"], rec["trigger"], rec["mode"]]))
        s = snapcore.snapshot({tree.info["pids"][1]}, "api.core", metadata=True)
        rec = json.load(open("api.core.json"))
        print(json.dumps([s.pause_time, rec["pause_seconds"], rec["trigger"], rec["mode"]]))
        t = snapcore.snapshot_tree({tree.pid}, "t", metadata=True)
        for p in t.processes:
            rec = json.load(open(p.snapshot.metadata_path))
            print(json.dumps([p.snapshot.pause_time, rec["pause_seconds"], rec["trigger"],
                              rec["mode"]]))
    """)
    p = run([sys.executable, "-c", code], cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r[2:] for r in rows] == [
        ["self", "mini"],
        ["api", "normal"],
        ["tree", "normal"],
        ["tree", "normal"],
    ]
    for measured, recorded, _, _ in rows:
        assert measured > 0 and recorded == round(measured, 6)
    assert_runs_on(tree)
