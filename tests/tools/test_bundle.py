"""Bundles: a core with the files it maps, opened where those files do not exist.

Oracles: gdb, lldb and pystack on the unpacked bundle (what they show), eu-unstrip
for the build-ids the core's memory holds, readelf for the bundled files' own,
and the test's own knowledge of which files it installed, deleted or replaced.
Every target is checked to run on after its snapshot; the container's root
is then removed, so that the bundle is the only place its files are.
"""

import json
import os
import re
import shlex
import shutil
import sys
import time

import snapcore
from snapcore.bundle import open_bundle

from support.containers import APP, LIB, Container, make_root, require_namespaces
from support.procs import assert_runs_on, assert_untraced, have, run, snapcore_cli
from support.strict import need_module, need_tool
from support.targets import TARGETS, spawn_python_threads, target_path

NS_FUNCS = ("nspriv_read_line", "nspriv_command_loop", "main")  # main thread, innermost first


def cache_env(tmp_path):
    return dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))


def readelf_build_id(path):
    out = run(["readelf", "-n", str(path)], check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


def core_build_ids(core):
    """{module name: build-id} as eu-unstrip finds them in the core's memory
    (the name of a deleted file without its " (deleted)")."""
    out = run(["eu-unstrip", "-n", "--core", str(core)], check=True).stdout
    ids = {}
    for row in (line.split(maxsplit=4) for line in out.splitlines()):
        if len(row) == 5:
            ids[row[4].removesuffix(" (deleted)")] = row[1].split("@")[0]
    return ids


def gdb_threads(text):
    """{LWP: backtrace text} from gdb's `thread apply all bt`."""
    out, key = {}, None
    for line in text.splitlines():
        m = re.match(r"^Thread \d+ \(.*LWP (\d+)\)\):", line)
        if m:
            key = int(m.group(1))
            out[key] = ""
        elif key is not None:
            out[key] += line + "\n"
    return out


def debug(bundle, tmp_path, *args, timeout=120):
    return snapcore_cli("debug", bundle, *args, env=cache_env(tmp_path), timeout=timeout)


def bundle_manifest(bundle, tmp_path):
    _, _, manifest = open_bundle(bundle, cache=tmp_path / "cache" / "snapcore" / "bundles")
    return manifest


# ---------------------------------------------------------------------------


def test_container_bundle_gives_full_backtraces_where_its_files_do_not_exist(spawn, tmp_path):
    need_tool("gdb")
    require_namespaces()
    for inside in (APP, LIB):
        assert not os.path.exists(inside), f"{inside} exists on this machine: the test needs not"
    root = make_root(tmp_path / "root")
    bundle = tmp_path / "app.tar.zst"
    c = Container(spawn, root)
    try:
        ns_tids = c.ns_tids
        p = snapcore_cli(c.pid, "--bundle", "-o", bundle)
        assert p.returncode == 0, p.stderr
        assert "bundle (zstd)" in p.stdout
        assert oct(os.stat(bundle).st_mode & 0o777) == "0o600"
        assert_runs_on_container(c)
    finally:
        c.close()
    shutil.rmtree(root)  # from now on the bundle is the only copy of nsapp and its library
    p = debug(bundle, tmp_path, "--", "-batch", "-ex", "thread apply all bt")
    assert p.returncode == 0, p.stdout + p.stderr
    threads = gdb_threads(p.stdout)
    assert sorted(threads) == sorted(ns_tids), p.stdout  # the namespace's ids
    main, sleeper = threads[ns_tids[0]], threads[ns_tids[1]]
    order = [main.index(f" {fn} (") for fn in NS_FUNCS]
    assert order == sorted(order), main
    assert " nspriv_sleeper (" in sleeper, sleeper
    assert "??" not in p.stdout, p.stdout
    assert "the same without snapcore:" in p.stderr
    # the plain command, as printed, does the same on its own
    plain = debug(bundle, tmp_path, "--print", "--", "-batch", "-ex", "thread apply all bt")
    assert plain.returncode == 0 and plain.stdout.startswith("gdb "), plain.stdout + plain.stderr
    again = run(shlex.split(plain.stdout), timeout=120)
    assert gdb_threads(again.stdout) == threads
    # the bytes are the ones that ran: the core's build-ids
    core, sysroot, manifest = open_bundle(bundle, cache=tmp_path / "cache/snapcore/bundles")
    ids = core_build_ids(core)
    for inside in (APP, LIB):
        assert readelf_build_id(sysroot + inside) == ids[inside]
    entry = {f["path"]: f for f in manifest["files"]}
    assert entry[APP]["executable"] and entry[APP]["source"].startswith(f"/proc/{c.pid}/map_files/")


def assert_runs_on_container(c):
    assert_untraced(c.pid)
    first = c.ticks()
    deadline = time.monotonic() + 10  # the sleeper ticks every 2 ms, when it gets a CPU
    while time.monotonic() < deadline:
        if c.ticks() > first:
            return
        time.sleep(0.001)
    raise AssertionError("nsapp does not tick after the snapshot")


def test_container_bundle_in_lldb(spawn, tmp_path):
    need_tool("lldb")
    require_namespaces()
    root = make_root(tmp_path / "root")
    bundle = tmp_path / "app.tar.zst"
    c = Container(spawn, root)
    try:
        assert snapcore_cli(c.pid, "--bundle", "-o", bundle, "-q").returncode == 0
        assert_runs_on_container(c)
    finally:
        c.close()
    shutil.rmtree(root)
    p = debug(bundle, tmp_path, "--lldb", "--", "--batch", "-o", "thread backtrace all")
    assert p.returncode == 0, p.stdout + p.stderr
    for fn in NS_FUNCS[:2] + ("nspriv_sleeper",):
        assert f"libnspriv.so`{fn}" in p.stdout, p.stdout


def _nsapp_outside(spawn, tmp_path, exe, libdir):
    env = dict(os.environ, LD_LIBRARY_PATH=str(libdir))
    return spawn([str(exe)], env=env)


def test_deleted_executable_is_bundled_as_it_ran(spawn, tmp_path):
    need_tool("gdb")
    d = tmp_path / "deploy"
    (d / "lib").mkdir(parents=True)
    exe = d / "nsapp"
    shutil.copy(target_path("nsapp"), exe)
    shutil.copy(target_path("nspriv/libnspriv.so"), d / "lib" / "libnspriv.so")
    t = _nsapp_outside(spawn, tmp_path, exe, d / "lib")
    original = readelf_build_id(exe)
    os.unlink(exe)  # the next deploy removed it
    bundle = tmp_path / "b.tar.zst"
    snap = snapcore.snapshot(t.pid, bundle, bundle=True)
    assert_runs_on(t)
    assert snap.bundle["left_out"] == []
    core, sysroot, manifest = open_bundle(bundle, cache=tmp_path / "cache")
    entry = next(f for f in manifest["files"] if f["executable"])
    assert entry["path"] == str(exe) and entry["deleted"] is True
    assert entry["source"].startswith(f"/proc/{t.pid}/map_files/")
    bundled = sysroot + str(exe)
    assert readelf_build_id(bundled) == original == core_build_ids(core)[str(exe)]
    p = debug(bundle, tmp_path, "--", "-batch", "-ex", "bt")
    assert p.returncode == 0 and " nspriv_command_loop (" in p.stdout, p.stdout + p.stderr
    assert re.search(r" main \(", p.stdout), p.stdout


def test_replaced_library_is_bundled_as_it_ran(spawn, tmp_path):
    need_tool("gdb")
    lib = tmp_path / "lib"
    lib.mkdir()
    so = lib / "libnspriv.so"
    shutil.copy(target_path("nspriv/libnspriv.so"), so)
    t = _nsapp_outside(spawn, tmp_path, target_path("nsapp"), lib)
    running = readelf_build_id(so)
    # a deploy: the new build is renamed over the old one
    shutil.copy(target_path("nspriv2/libnspriv.so"), lib / ".new")
    os.replace(lib / ".new", so)
    assert readelf_build_id(so) != running
    bundle = tmp_path / "b.tar.zst"
    snapcore.snapshot(t.pid, bundle, bundle=True)
    assert_runs_on(t)
    core, sysroot, manifest = open_bundle(bundle, cache=tmp_path / "cache")
    entry = next(f for f in manifest["files"] if f["path"] == str(so))
    assert entry["deleted"] is True and entry["build_id"] == running
    assert readelf_build_id(sysroot + str(so)) == running == core_build_ids(core)[str(so)]
    p = debug(bundle, tmp_path, "--", "-batch", "-ex", "bt", "-ex", "print nspriv_variant")
    assert p.returncode == 0, p.stdout + p.stderr
    assert " nspriv_read_line (" in p.stdout and '"nspriv variant 1"' in p.stdout, p.stdout


def test_python_bundle_in_pystack_and_gdb(spawn, tmp_path):
    need_module("pystack")
    t = spawn_python_threads(spawn)
    bundle = tmp_path / "py.tar.zst"
    p = snapcore_cli(t.pid, "--bundle", "-o", bundle, "-q")
    assert p.returncode == 0, p.stderr
    assert_runs_on(t)
    p = debug(bundle, tmp_path, "--pystack")
    assert p.returncode == 0, p.stdout + p.stderr
    for fn in ("<module>", "main", "outer", "inner", "worker_loop"):
        assert f" in {fn}\n" in p.stdout, p.stdout
    assert "--lib-search-root" in p.stderr  # the plain command
    # pystack by hand on the unpacked bundle: its executable, its libraries
    core, sysroot, manifest = open_bundle(bundle, cache=tmp_path / "cache/snapcore/bundles")
    exe = sysroot + next(f["path"] for f in manifest["files"] if f["executable"])
    libpython = [f for f in manifest["files"] if "libpython" in f["path"]]
    assert all(f["member"] for f in libpython)
    q = run([sys.executable, "-m", "pystack", "core", core, exe, "--lib-search-root", sysroot])
    assert q.returncode == 0, q.stdout + q.stderr
    order = [q.stdout.index(f" in {fn}\n") for fn in ("<module>", "main", "outer", "inner")]
    assert order == sorted(order), q.stdout
    if have("gdb"):
        g = debug(bundle, tmp_path, "--", "-batch", "-ex", "thread apply all bt")
        assert g.returncode == 0 and " time_sleep (" in g.stdout, g.stdout + g.stderr


def test_bundle_max_size_leaves_out_the_largest_and_says_so(spawn, tmp_path):
    t = spawn("mt")
    bundle = tmp_path / "b.tar.zst"
    p = snapcore_cli(t.pid, "--bundle", "--bundle-max-size", "300K", "-o", bundle, "--json")
    assert p.returncode == 0, p.stderr
    assert_runs_on(t)
    result = json.loads(p.stdout)["bundle"]
    assert result["binaries_bytes"] <= 300 << 10
    manifest = bundle_manifest(bundle, tmp_path)
    files = {os.path.basename(f["path"]): f for f in manifest["files"]}
    assert files["mt"]["member"] is not None  # the executable first
    assert files["libc.so.6"]["member"] is None
    assert files["libc.so.6"]["left_out"].startswith("over --bundle-max-size")
    assert manifest["binaries"]["left_out"] == len(result["left_out"]) >= 1
    d = debug(bundle, tmp_path, "--print")
    assert d.returncode == 0
    d = debug(bundle, tmp_path, "--", "-batch", "-ex", "bt")
    assert "libc.so.6 is not in the bundle: over --bundle-max-size" in d.stderr, d.stderr


def test_tree_bundle_holds_every_core_once_per_library(spawn, tmp_path):
    t = spawn([sys.executable, os.path.join(TARGETS, "tree.py"), "--fanout", "1"])
    out = tmp_path / "tree"
    p = snapcore_cli(t.pid, "--tree", "--bundle", "-o", out, "-q")
    assert p.returncode == 0, p.stderr
    assert_runs_on(t)
    manifest = bundle_manifest(out / "bundle.tar.zst", tmp_path)
    assert manifest["tree"] is True
    assert sorted(c["pid"] for c in manifest["cores"]) == sorted(t.info["pids"])
    libc = [f for f in manifest["files"] if f["path"].endswith("/libc.so.6")]
    assert len({f["build_id"] for f in libc}) == 1 and len({f["member"] for f in libc}) == 1
    assert sorted(libc[0]["pids"]) == sorted(t.info["pids"])
    stored = [n for n in manifest["members"] if n.startswith("sysroot/")]
    assert len(stored) == len(set(stored))


def test_snapcore_bundle_packs_a_core_taken_earlier_with_matching_files_only(spawn, tmp_path):
    need_tool("gdb")
    d = tmp_path / "app"
    d.mkdir()
    exe = d / "mt"
    shutil.copy(target_path("mt"), exe)
    t = spawn([str(exe)])
    core = snapcore.snapshot(t.pid, tmp_path / "core", compress="zstd").path
    assert_runs_on(t)
    bundle = tmp_path / "later.tar.zst"
    p = snapcore_cli("bundle", core, "-o", bundle)
    assert p.returncode == 0 and p.stderr == "", p.stdout + p.stderr
    g = debug(bundle, tmp_path, "--", "-batch", "-ex", "thread apply all bt")
    assert g.returncode == 0 and " command_loop (" in g.stdout and "??" not in g.stdout, g.stdout
    # the executable replaced by another build: left out, and said so
    shutil.copy(target_path("mt_nopie"), d / ".new")
    os.replace(d / ".new", exe)
    p = snapcore_cli("bundle", core, "-o", bundle, "--force")
    assert p.returncode == 0, p.stderr
    assert f"warning: {exe} left out: {exe} is another build" in p.stderr, p.stderr
    manifest = bundle_manifest(bundle, tmp_path)
    entry = next(f for f in manifest["files"] if f["path"] == str(exe))
    assert entry["member"] is None and entry["executable"] is True
