"""Units of issue 8 that need no target: naming, sizes, selection passes,
sparse decompression, the metadata record, build-ids from an ELF image."""

import argparse
import io
import json
import os
import re
import subprocess

import pytest

from snapcore import metadata
from snapcore.capture.plan import NONE, READ, VmaPlan
from snapcore.capture.publish import IOV_MAX, CoreFile, expand_output, writev_all
from snapcore.capture.request import SnapshotOptions
from snapcore.capture.select import Dropped, Selection, _split, select_max_size, select_mini
from snapcore.cli.common import size as _size
from snapcore.cli.decompress import write_sparse
from snapcore.procmaps import Vma
from snapcore.read.coreinfo import build_id_from_image

from support.targets import need_built

HERE = os.path.dirname(os.path.abspath(__file__))
MT = os.path.join(os.path.dirname(HERE), "targets", "bin", "mt")
P = 4096


# --- naming ---------------------------------------------------------------------------


def test_expand_output(tmp_path):
    assert expand_output(None, 42) == "core.42"
    assert expand_output(None, 42, suffix=".zst") == "core.42.zst"
    assert (
        expand_output("x/%p.%e.%t.%h.%%", 42, comm="a/b", now=1700000000.7, host="box")
        == "x/42.a!b.1700000000.box.%"
    )
    assert expand_output(str(tmp_path), 7) == os.path.join(str(tmp_path), "core.7")
    assert expand_output(str(tmp_path) + "/", 7, suffix=".zst") == os.path.join(
        str(tmp_path), "core.7.zst"
    )
    assert expand_output("plain.core", 7, suffix=".zst") == "plain.core"
    (tmp_path / "d42").mkdir()
    assert expand_output(str(tmp_path / "d%p"), 42) == str(tmp_path / "d42" / "core.42")
    for bad in ("core.%q", "core.%"):
        with pytest.raises(ValueError, match="unknown specifier"):
            expand_output(bad, 1)


@pytest.mark.parametrize(
    "text,value",
    [
        ("4096", 4096),
        ("4K", 4096),
        ("1.5M", 3 << 19),
        ("2GiB", 2 << 30),
        ("10mb", 10 << 20),
        (" 1T ", 1 << 40),
    ],
)
def test_size_parser(text, value):
    assert _size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1K", "1X", "0", "1.2.3"])
def test_size_parser_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        _size(text)


# --- selection ------------------------------------------------------------------------


def vma(start, pages, name="", perms="rw-p", offset=0):
    return Vma(
        start=start,
        end=start + pages * P,
        perms=perms,
        offset=offset,
        dev_major=0,
        dev_minor=0,
        inode=0,
        name=name,
    )


def plan(v, has_file=False, filesz=None):
    size = v.size if filesz is None else filesz
    return VmaPlan(v, size, READ, "written private", has_file)


def test_split_keeps_ranges_as_pieces():
    p = plan(vma(0x10000, 8))
    pieces = _split(p, [(0x12000, 0x13000), (0x15000, 0x17000)], "mini")
    assert [(x.start, x.end, x.filesz, x.fill) for x in pieces] == [
        (0x10000, 0x12000, 0, NONE),
        (0x12000, 0x15000, P, READ),
        (0x15000, 0x18000, 2 * P, READ),
    ]
    assert sum(x.size for x in pieces) == p.size
    assert [x.first_piece for x in pieces] == [True, False, False]
    # the load of a piece covers the piece; the copy reads the right file offset
    assert pieces[1].vaddr == 0x12000 and pieces[1].memsz == 3 * P
    assert _split(p, [(p.start, p.end)], "mini") == [p]
    assert [(x.filesz, x.fill) for x in _split(p, [], "mini")] == [(0, NONE)]


def test_select_mini_keeps_only_essential_bytes():
    a, b = plan(vma(0x10000, 4)), plan(vma(0x20000, 4))
    out, sel = select_mini([a, b], [(0x11000, 0x12000)])
    assert sum(x.filesz for x in out) == P
    assert sel.dropped == [
        Dropped(0x10000, 0x14000, 3 * P, "mini"),
        Dropped(0x20000, 0x24000, 4 * P, "mini"),
    ]
    assert not sel.truncated


def test_select_max_size_drops_largest_anonymous_first():
    big = plan(vma(0x100000, 64))  # anonymous, 256 KiB
    mid = plan(vma(0x200000, 16))  # anonymous, 64 KiB
    small = plan(vma(0x300000, 2))  # anonymous, 8 KiB
    data = plan(vma(0x400000, 32), has_file=True)  # file data, 128 KiB
    stack = plan(vma(0x500000, 64))  # a thread stack, top 2 pages live
    essential = [(0x53E000, 0x540000)]
    plans = [big, mid, small, data, stack]
    total = sum(p.filesz for p in plans)
    # largest first, whatever their kind, until it fits
    out, sel, minimum = select_max_size(plans, essential, total - 300 * 1024, stacks={0x500000})
    assert [d.start for d in sel.dropped] == [0x100000, 0x400000] and sel.truncated
    assert minimum == 2 * P
    assert sum(p.filesz for p in out) <= total - 300 * 1024
    # thread stacks go last: the small region goes before the stack's dead part
    out, sel, _ = select_max_size(plans, essential, 260 * 1024, stacks={0x500000})
    assert [d.start for d in sel.dropped] == [0x100000, 0x200000, 0x300000, 0x400000]
    assert {p.start: p.filesz for p in out if p.filesz} == {0x500000: 64 * P}
    # dropping the big ones made room: the small one comes back
    out, sel, _ = select_max_size(plans, essential, 300 * 1024, stacks={0x500000})
    assert [d.start for d in sel.dropped] == [0x100000, 0x200000, 0x400000]
    assert {p.start: p.filesz for p in out if p.filesz} == {0x300000: 2 * P, 0x500000: 64 * P}
    # no room: only the essential bytes stay
    out, sel, _ = select_max_size(plans, essential, 8 * 1024, stacks={0x500000})
    assert {p.start: p.filesz for p in out if p.filesz} == {0x53E000: 2 * P}
    # enough room: nothing changes
    out, sel, _ = select_max_size(plans, essential, total)
    assert out == plans and sel.dropped == [] and not sel.truncated


# --- sparse decompression ---------------------------------------------------------------


def test_write_sparse_leaves_zero_pages_as_holes(tmp_path):
    data = b"\0" * (3 << 20) + b"x" * 5000 + b"\0" * (2 << 20) + b"tail" + b"\0" * 123
    out = CoreFile(tmp_path / "out")
    n = write_sparse(io.BytesIO(data).read, out)
    out.finish(n)
    assert n == len(data)
    assert (tmp_path / "out").read_bytes() == data
    assert os.stat(tmp_path / "out").st_blocks * 512 <= 64 << 10


# --- metadata --------------------------------------------------------------------------


@pytest.mark.parametrize("to_pipe", [False, True], ids=["pwritev", "writev"])
def test_writev_all_writes_every_part_in_order(tmp_path, monkeypatch, to_pipe):
    """More parts than one call takes, empty ones among them, and calls that write
    only part of what they were given (as a signal can make them): every byte
    lands once, in order."""
    parts = [bytes([i % 251]) * (i % 5) for i in range(3 * IOV_MAX + 7)]
    want = b"".join(parts)
    calls = []
    for name in ("writev", "pwritev"):
        real = getattr(os, name)

        def short(fd, views, *off, _real=real):  # the first 13 bytes of what is asked
            calls.append(len(views))
            budget, cut = 13, []
            for v in views:
                cut.append(v[:budget])
                budget -= len(cut[-1])
                if not budget:
                    break
            return _real(fd, cut, *off)

        monkeypatch.setattr(os, name, short)
    if to_pipe:
        r, w = os.pipe()
        try:
            assert writev_all(w, parts) == len(want)
            os.close(w)
            w = -1
            with os.fdopen(r, "rb") as f:
                got = f.read()
        finally:
            if w >= 0:
                os.close(w)
    else:
        path = tmp_path / "out"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            assert writev_all(fd, parts, 100) == len(want)
        finally:
            os.close(fd)
        got = path.read_bytes()
        assert got[:100] == b"\0" * 100
        got = got[100:]
    assert got == want
    assert max(calls) <= IOV_MAX and len(calls) >= len(want) // 13


def test_parse_limits():
    text = (
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max core file size        0                    unlimited            bytes     \n"
        "Max open files            1024                 4096                 files     \n"
    )
    assert metadata.parse_limits(text) == {
        "max_core_file_size": ["0", "unlimited"],
        "max_open_files": ["1024", "4096"],
    }


def test_note_reserves_room_and_final_fits():
    sel = Selection(
        mode="max-size",
        max_size=1 << 20,
        truncated=True,
        dropped=[Dropped(0x1000, 0x3000, 8192, "max-size")],
    )
    rec = metadata.new_record(
        facts={
            "pid": 1,
            "comm": "x",
            "cmdline": ["x"],
            "cwd": "/",
            "exe": "/x",
            "limits": {},
            "cgroup": [],
        },
        uid=0,
        gid=0,
        options=SnapshotOptions(max_size=1 << 20, reason="r", trigger="api"),
        filt=0x33,
        threads=[{"tid": 1, "name": "x", "state": "S"}],
        selection=sel,
        started=1700000000.5,
    )
    desc = metadata.note_desc(rec)
    assert json.loads(desc)["final"] is False and desc.endswith(b" ")
    bad = [(0x1000 * i, 4096, 14) for i in range(1000)]
    final = metadata.fit_final(
        rec, len(desc), pause=0.01, wall=0.02, unreadable=bad, unreadable_omitted=0
    )
    assert len(final) == len(desc)
    rec2 = metadata.parse_note(final)
    assert rec2["final"] is True and rec2["truncated"] is True
    assert len(rec2["unreadable"]) + rec2["unreadable_omitted"] == 1000
    assert rec2["dropped"] == [{"start": 0x1000, "end": 0x3000, "bytes": 8192, "why": "max-size"}]
    assert metadata.parse_note(b"not json") is None


# --- build-id from an ELF image ----------------------------------------------------------


def test_build_id_from_the_first_page():
    need_built("mt")
    out = subprocess.run(["readelf", "-n", MT], capture_output=True, text=True).stdout
    want = re.search(r"Build ID: ([0-9a-f]+)", out).group(1)
    with open(MT, "rb") as f:
        assert build_id_from_image(f.read(P)) == want
    assert build_id_from_image(b"\x7fELF" + b"\0" * 100) is None
    assert build_id_from_image(b"nope") is None
