"""The bundle format without processes: pack.write_bundle, then open_bundle.

Files are small fake ones; what is checked is the layout: one copy per
build-id (the other path a hard link to it once unpacked), a second file under
a path another process already uses (alt/ and a per-process view), the
--bundle-max-size order, and names the writer refuses.
"""

import json
import os

import pytest

from snapcore.bundle import layout
from snapcore.bundle.pack import CoreSource, MappedFile, plan_files, write_bundle
from snapcore.bundle.unpack import open_bundle

from support.strict import need_module


def _file(tmp_path, data):
    """A file holding data, opened read-only (the fds live until the test ends)."""
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    path = d / str(len(os.listdir(d)))
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def mapped(tmp_path, path, data, build_id, pids, executable=False):
    fd = _file(tmp_path, data)
    source = f"/proc/{pids[0]}/map_files/1000-2000"
    return MappedFile(path, fd, len(data), build_id, source, executable, False, list(pids))


def core(tmp_path, pid, files, exe):
    fd = _file(tmp_path, b"\x7fELF" + bytes(100 + pid))
    return CoreSource(pid, fd, 104 + pid, {"pid": pid}, "comm", pid, exe, "/", files)


def test_round_trip_dedup_conflict_and_views(tmp_path):
    need_module("zstandard")
    a = mapped(tmp_path, "/usr/lib/libc.so.6", b"libc" * 100, "aa" * 20, [10, 11])
    b = mapped(tmp_path, "/lib/libc.so.6", b"libc" * 100, "aa" * 20, [12])  # same build-id
    c = mapped(tmp_path, "/app/bin/app", b"app one", "bb" * 20, [10], executable=True)
    d = mapped(tmp_path, "/app/bin/app", b"app two!", "cc" * 20, [11], executable=True)
    cores = [
        core(tmp_path, 10, ["/usr/lib/libc.so.6", "/app/bin/app"], "/app/bin/app"),
        core(tmp_path, 11, ["/usr/lib/libc.so.6", "/app/bin/app"], "/app/bin/app"),
    ]
    out = tmp_path / "b.tar.zst"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    summary = write_bundle(fd, cores, [a, b, c, d], root_pid=10, tree=True)
    os.close(fd)
    assert summary["files"] == 3 and summary["left_out"] == []
    assert (a.member, b.member, b.same_as) == ("sysroot/usr/lib/libc.so.6",) * 2 + (a.path,)
    assert c.member == "sysroot/app/bin/app" and d.member == "alt/" + "cc" * 20 + "/app/bin/app"

    cache = tmp_path / "cache"
    path10, root10, manifest = open_bundle(out, cache=cache)
    assert os.path.basename(path10) == "core.10" and root10.endswith("/sysroot")
    assert open(root10 + "/app/bin/app", "rb").read() == b"app one"
    # the other name of the same build-id is there too, the same inode
    assert os.path.samefile(root10 + "/lib/libc.so.6", root10 + "/usr/lib/libc.so.6")
    path11, root11, _ = open_bundle(out, pid=11, cache=cache)
    assert root11.endswith("/views/11")
    assert open(root11 + "/app/bin/app", "rb").read() == b"app two!"
    assert open(root11 + "/usr/lib/libc.so.6", "rb").read() == b"libc" * 100
    assert set(manifest["members"]) == {
        "core.10",
        "core.10.json",
        "core.11",
        "core.11.json",
        "sysroot/usr/lib/libc.so.6",
        "sysroot/app/bin/app",
        "alt/" + "cc" * 20 + "/app/bin/app",
    }
    assert json.load(open(os.path.join(os.path.dirname(path10), "bundle.json"))) == manifest
    # unpacked once: a second open reuses the directory
    assert open_bundle(out, cache=cache)[0] == path10


def test_max_size_takes_the_executable_first_then_the_smallest(tmp_path):
    big = mapped(tmp_path, "/lib/big.so", bytes(5000), "01" * 20, [1])
    small = mapped(tmp_path, "/lib/small.so", bytes(100), "02" * 20, [1])
    exe = mapped(tmp_path, "/bin/app", bytes(3000), "03" * 20, [1], executable=True)
    assert plan_files([big, small, exe], max_size=3500) == 3100
    assert exe.member and small.member and big.member is None
    assert big.left_out.startswith("over --bundle-max-size")


def test_unreadable_and_odd_paths_are_left_out_with_a_reason(tmp_path):
    gone = MappedFile("/lib/gone.so", -1, 0, "04" * 20, None, left_out="replaced since")
    odd = mapped(tmp_path, "/lib/../etc/x.so", b"x", "05" * 20, [1])
    plan_files([gone, odd])
    assert gone.member is None and gone.left_out == "replaced since"
    assert odd.member is None and odd.left_out == "a path that cannot be stored"


@pytest.mark.parametrize(
    "name,ok",
    [
        ("core.12", True),
        ("core.12.json", True),
        ("bundle.json", True),
        ("sysroot/usr/lib/libc.so.6", True),
        ("alt/abcd/usr/lib/x", True),
        ("/etc/passwd", False),
        ("sysroot/../../x", False),
        ("sysroot//x", False),
        ("alt/notHEX/x", False),
        ("core.12.sh", False),
        ("", False),
    ],
)
def test_member_names(name, ok):
    assert (layout.check_member_name(name) is None) is ok
