"""Processes in other pid and mount namespaces (a container), snapshotted from the host.

The oracle is the kernel's own core of the same process (SIGABRT after the
snapshot): the kernel dumps from inside the target, so its NT_FILE names are
d_path() relative to the target's root and its pids are those of the target's
pid namespace (fs/binfmt_elf.c fill_files_note(), fill_prstatus()).  Both
ways of making the root are covered: pivot_root (the old root out of reach)
and chroot (the old root still mounted, so the host sees longer paths).
"""

import json
import os
import resource
import signal
import time

import pytest

import snapcore

from support.containers import APP, LIB, Container, make_root, require_namespaces
from support.coreparse import Core
from support.oracles import kernel_core_path, need_kernel_cores
from support.procs import assert_untraced, snapcore_cli


def _core_limit():
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def runs_on(c):
    """nsapp is not stopped, not traced, and its sleeper thread still ticks."""
    assert_untraced(c.pid)
    first = c.ticks()
    deadline = time.monotonic() + 5
    while c.ticks() <= first:
        assert time.monotonic() < deadline, "nsapp answers but does not tick"
        time.sleep(0.01)


def ns_facts(core):
    """(NT_FILE names, {pr_pid: (ppid, pgrp, sid)}, prpsinfo ids) of a core."""
    _, files = core.file_note()
    threads = {
        t.tid: (t.prstatus["pr_ppid"], t.prstatus["pr_pgrp"], t.prstatus["pr_sid"])
        for t in core.threads
    }
    ps = core.prpsinfo()
    return (
        [(s, e, pg, n) for s, e, pg, n in files],
        threads,
        (ps["pr_pid"], ps["pr_ppid"], ps["pr_pgrp"], ps["pr_sid"]),
    )


@pytest.mark.parametrize("chroot", [False, True], ids=["pivot_root", "chroot"])
def test_core_of_a_container_process_names_what_the_kernels_does(spawn, tmp_path, chroot):
    require_namespaces()
    need_kernel_cores()
    root = make_root(tmp_path / "root")
    c = Container(spawn, root, chroot=chroot, preexec_fn=_core_limit)
    try:
        ns_pid, ns_tids = c.target.info["pid"], c.ns_tids
        assert ns_pid != c.pid  # really in its own pid namespace
        snap = snapcore.snapshot(c.pid, tmp_path / "snap.core", metadata=True)
        runs_on(c)
        os.kill(c.pid, signal.SIGABRT)
        kpath = kernel_core_path(root, ns_pid)  # written in its cwd, its root's "/"
        deadline = time.monotonic() + 30
        while not os.path.exists(kpath) or os.path.exists(f"/proc/{c.pid}"):
            assert time.monotonic() < deadline, f"no kernel core at {kpath}"
            time.sleep(0.05)
        with Core(snap.path) as ours, Core(kpath) as theirs:
            mine, kernels = ns_facts(ours), ns_facts(theirs)
        names = {n for *_, n in mine[0]}
        assert APP.encode() in names and LIB.encode() in names, names
        assert mine[0] == kernels[0]  # NT_FILE: the same ranges and names
        assert mine[1] == kernels[1]  # NT_PRSTATUS: the namespace's ids
        assert sorted(mine[1]) == sorted(ns_tids)
        assert mine[2] == kernels[2] == (ns_pid, 1, 0, 0)  # its parent is pid 1, nsenter
        record = json.load(open(snap.metadata_path))
        assert record["ns_pid"][0] == c.pid and record["ns_pid"][-1] == ns_pid
        assert {t["tid"] for t in record["threads"]} == set(snap.tids)
        assert sorted(t["ns_tid"] for t in record["threads"]) == sorted(ns_tids)
        assert record["root"] == (str(root) if chroot else "/")
        assert "pid" not in record["namespaces"]["shared"]
        assert "mnt" not in record["namespaces"]["shared"]
    finally:
        c.close()


def test_tree_manifest_records_namespace_pids_and_bundle_members(spawn, tmp_path):
    require_namespaces()
    root = make_root(tmp_path / "root")
    c = Container(spawn, root)
    try:
        out = tmp_path / "tree"
        p = snapcore_cli(c.target.pid, "--tree", "--bundle", "-o", out, "-q")
        assert p.returncode == 0, p.stderr
        runs_on(c)
        manifest = json.loads((out / "manifest.json").read_text())
        by_pid = {e["pid"]: e for e in manifest["processes"]}
        assert set(by_pid) == {c.target.pid, c.init, c.pid}
        assert manifest["bundle"] == "bundle.tar.zst"
        app, init, unshare = by_pid[c.pid], by_pid[c.init], by_pid[c.target.pid]
        assert app["ns_pid"] == c.target.info["pid"] and init["ns_pid"] == 1
        assert unshare["ns_pid"] == c.target.pid  # the host's namespace
        assert sorted(app["ns_threads"]) == sorted(c.ns_tids)
        assert {"core." + str(c.pid), "sysroot" + APP, "sysroot" + LIB} <= set(app["bundle"])
        assert "sysroot" + LIB not in unshare["bundle"]
        # every member a process lists is in the archive, with the sha256 its manifest says
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
        info = snapcore_cli("info", out / "bundle.tar.zst", "--json", "--pid", c.pid, env=env)
        assert info.returncode == 0, info.stderr
        report = json.loads(info.stdout)
        assert report["process"]["pid"] == c.target.info["pid"]
        provided = {m["file"]: m["provided_by"] for m in report["modules"]}
        assert provided[APP] == provided[LIB] == "bundle", provided
    finally:
        c.close()
