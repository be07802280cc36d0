"""Bundles that must not be opened: damaged, not bundles, lying, or crafted to escape.

Each archive is made here with tarfile and zstandard (no snapcore code), from
a small valid bundle that `snapcore debug --print` opens.  For each bad one:
exit status 1, one line on stderr, and nothing left anywhere: not outside the
cache (a directory the crafted links and paths aim at stays empty), not in
the cache either (no half-unpacked entry).
"""

import hashlib
import io
import json
import os
import tarfile

import pytest
import zstandard

from support.procs import snapcore_cli

CORE = b"\x7fELF" + bytes(4092)


def _reg(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    return info, data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _manifest(members, lie=None):
    listed = {
        info.name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for info, data in members
        if data is not None
    }
    if lie is not None:
        listed[lie]["sha256"] = "0" * 64
    doc = {
        "schema": "snapcore-bundle/1",
        "root_pid": 7,
        "tree": False,
        "cores": [{"pid": 7, "ns_pid": 7, "member": "core.7", "executable": "/bin/app"}],
        "files": [{"path": "/bin/app", "member": "sysroot/bin/app", "pids": [7], "left_out": None}],
        "binaries": {"stored": 4, "max_size": None, "left_out": 0},
        "members": listed,
    }
    return _reg("bundle.json", json.dumps(doc).encode())


def _archive(members, manifest=True, lie=None, extra=()):
    """A bundle of a fake core and one file, with members added (listed in its
    manifest) and extra ones (after the manifest: not listed)."""
    base = [_reg("core.7", CORE), _reg("core.7.json", b"{}"), _reg("sysroot/bin/app", CORE)]
    members = base + members
    if manifest:
        members.append(_manifest(members, lie))
    members += list(extra)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _zst(data):
    return zstandard.ZstdCompressor().compress(data)


def crafted(kind, outside):
    """(bundle bytes, what the error line must say)."""
    out = str(outside)
    if kind == "truncated":
        whole = _zst(_archive([]))
        return whole[: len(whole) * 2 // 3], "truncated"
    if kind == "not-a-bundle":
        return b"just some text\n" * 100, "not a snapcore bundle"
    if kind == "zstd-not-tar":
        return _zst(b"\x7fELF" + b"x" * 5000), "no tar archive inside"
    if kind == "tar-not-zstd":
        return _archive([]), "not a snapcore bundle"
    if kind == "lying-sha256":
        return _zst(_archive([], lie="sysroot/bin/app")), "sha256 differs from the manifest"
    if kind == "no-manifest":
        return _zst(_archive([], manifest=False)), "no bundle.json"
    if kind == "unlisted-member":
        return _zst(_archive([], extra=[_reg("sysroot/bin/extra", b"x")])), "not in its manifest"
    if kind == "absolute-path":
        return _zst(_archive([_reg(f"{out}/evil", b"x")])), "an absolute path"
    if kind == "dotdot":
        up = "sysroot/" + "../" * 12 + out.lstrip("/") + "/evil"
        return _zst(_archive([_reg(up, b"x")])), "'..'"
    if kind == "symlink-out":
        members = [_special("sysroot/lib", tarfile.SYMTYPE, out), _reg("sysroot/lib/evil", b"x")]
        return _zst(_archive(members)), "is a link"
    if kind == "hardlink-out":
        link = _special("sysroot/evil", tarfile.LNKTYPE, "/etc/passwd")
        return _zst(_archive([link])), "is a link"
    if kind == "device":
        dev = _special("sysroot/dev/null", tarfile.CHRTYPE)
        return _zst(_archive([dev])), "not a regular file"
    if kind == "unknown-member":
        script = _reg("run-me.sh", b"#!/bin/sh\n")
        return _zst(_archive([script])), "not a member a snapcore bundle has"
    if kind == "twice":
        return _zst(_archive([_reg("sysroot/bin/app", CORE)])), "appears twice"
    raise AssertionError(kind)


KINDS = [
    "truncated",
    "not-a-bundle",
    "zstd-not-tar",
    "tar-not-zstd",
    "lying-sha256",
    "no-manifest",
    "unlisted-member",
    "absolute-path",
    "dotdot",
    "symlink-out",
    "hardlink-out",
    "device",
    "unknown-member",
    "twice",
]


def _tree(d):
    return sorted(
        os.path.relpath(os.path.join(r, n), d) for r, ds, fs in os.walk(d) for n in ds + fs
    )


def test_the_crafted_baseline_opens(tmp_path):
    bundle = tmp_path / "ok.tar.zst"
    bundle.write_bytes(_zst(_archive([])))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    p = snapcore_cli("debug", bundle, "--print", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("gdb ") and "/sysroot/bin/app -c " in p.stdout, p.stdout


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["debug", "info"])
def test_bad_bundle_is_refused_in_one_line_leaving_nothing(tmp_path, kind, command):
    outside = tmp_path / "outside"
    outside.mkdir()
    data, says = crafted(kind, outside)
    bundle = tmp_path / "bad.tar.zst"
    bundle.write_bytes(data)
    cache = tmp_path / "cache"
    env = dict(os.environ, XDG_CACHE_HOME=str(cache))
    before = _tree(tmp_path)
    extra = ["--print"] if command == "debug" else []
    p = snapcore_cli(command, bundle, *extra, env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("snapcore: error: "), p.stderr
    if command == "debug" or kind not in ("not-a-bundle", "tar-not-zstd", "zstd-not-tar"):
        assert says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert os.listdir(outside) == []
    assert not os.path.lexists("/etc/passwd.evil")
    leftover = [n for n in _tree(tmp_path) if n not in before]
    assert all(n in ("cache", "cache/snapcore", "cache/snapcore/bundles") for n in leftover), (
        leftover
    )
