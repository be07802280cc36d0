"""Pure parsers and builders, on captured text (no processes needed)."""

import struct

import pytest

from snapcore import procfs, procmaps
from snapcore.arch import I386, X86_64, x86
from snapcore.arch.base import CLK_TCK
from snapcore.elf import notes
from snapcore.elf.layout import CoreLayout, Load
from snapcore.elf.structs import PN_XNUM, iter_notes, note

STAT = (
    "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 7 3 1 2 20 0 4 0 "
    "1234 10000000 300 18446744073709551615 1 1 0 0 0 0 0 4096 1 0 0 0 17 1 0 0 0 0 0 "
    "94000000000000 94000000001000 94000000002000 140720000000000 140720000000100 "
    "140720000000100 140720000000200 0"
)

SMAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 260386                     /usr/bin/my prog
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me dw
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  8 kB
Anonymous:             8 kB
Swap:                  4 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac
7f0000100000-7f0000101000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)
Rss:                   0 kB
VmFlags: rd wr sh mr mw me ms sd
7ffd00000000-7ffd00001000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
VmFlags: ex
"""


def test_parse_stat_with_parens_in_comm():
    st = procfs.parse_stat(STAT)
    assert st.pid == 4242 and st.comm == "a (weird) name" and st.state == "S"
    assert (st.ppid, st.pgrp, st.session, st.flags) == (1, 4242, 4242, 4194560)
    assert (st.utime, st.stime, st.cutime, st.cstime, st.nice) == (7, 3, 1, 2, 0)
    assert st.arg_start == 140720000000000 and st.arg_end == 140720000000100


def test_parse_stat_rejects_truncated():
    with pytest.raises(ValueError):
        procfs.parse_stat("1 (x) S 0 1")


def test_parse_smaps():
    vmas = procmaps.parse_smaps(SMAPS)
    assert len(vmas) == 5
    exe, anon, shm, vvar, vsys = vmas
    assert exe.name == "/usr/bin/my prog" and exe.inode == 260386
    assert (exe.dev_major, exe.dev_minor) == (0xFE, 0)
    assert anon.name == "" and anon.anonymous == 8192 and anon.swap == 4096
    assert anon.size == 0x21000 and anon.writable and not anon.shared
    assert shm.shared and shm.name.endswith("(deleted)")
    assert vvar.special and "io" in vvar.vmflags and "dd" in vvar.vmflags
    assert vsys.special and vsys.executable and not vsys.readable
    assert not exe.special


def test_parse_smaps_rejects_garbage():
    with pytest.raises(ValueError):
        procmaps.parse_smaps("not a mapping\n")
    with pytest.raises(ValueError):
        procmaps.parse_smaps("Rss: 4 kB\n")
    # a block without its VmFlags line is not taken for part of the next one
    with pytest.raises(ValueError, match="without VmFlags"):
        procmaps.parse_smaps(SMAPS.replace("VmFlags", "VmFlagz", 1))
    with pytest.raises(ValueError, match="ends inside"):
        procmaps.parse_smaps(SMAPS[: SMAPS.rindex("VmFlags")])


@pytest.mark.parametrize("size", [1, 100, 4096, 1 << 20])
def test_smaps_read_in_chunks_of_any_size(size):
    """Blocks after the first are taken by their layout (procmaps._SmapsLayout): the
    same Vmas, wherever the chunks end, as a line-by-line reading of this process's
    own smaps, and of a text whose blocks are laid out differently."""
    with open("/proc/self/smaps", "rb") as f:
        own = f.read()
    # a block with a line more (as a kernel field that only some mappings print)
    mixed = own + SMAPS.encode().replace(b"Swap:", b"Extra:    0 kB\nSwap:", 1) + own
    for data in (own, mixed):
        one_by_one, block = [], []  # each block alone: read line by line
        for line in data.split(b"\n")[:-1]:
            block.append(line)
            if line.startswith(b"VmFlags:"):
                text = b"\n".join(block).decode("utf-8", "surrogateescape") + "\n"
                one_by_one += procmaps.parse_smaps(text)
                block = []
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        got = list(procmaps.iter_smaps(chunks))
        assert len(got) == data.count(b"\nVmFlags:") + data.startswith(b"VmFlags:") > 3
        assert got == one_by_one


@pytest.mark.parametrize(
    "name,special",
    [
        ("[vdso]", True),
        ("[vvar]", True),
        ("[uprobes]", True),
        ("[heap]", False),
        ("[stack]", False),
        ("[anon:my arena]", False),
        ("/lib/x.so", False),
        ("", False),
    ],
)
def test_special_mappings(name, special):
    v = procmaps.Vma(0, 4096, "r--p", 0, 0, 0, 0, name)
    assert v.special is special


def test_parse_status():
    text = (
        "Name:\tmt\nState:\tS (sleeping)\nTgid:\t10\nPPid:\t1\nTracerPid:\t0\n"
        "Uid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\nSigPnd:\t0000000000000200\n"
        "ShdPnd:\t0000000000000000\nSigBlk:\t0000000000010000\nSeccomp:\t0\nKthread:\t0\n"
        "Threads:\t4\n"
    )
    st = procfs.parse_status(text)
    assert st.uid[0] == 1000 and st.gid[0] == 100 and st.sig_pnd == 0x200
    assert st.sig_blk == 0x10000 and st.threads == 4 and not st.kthread and st.state == "S"


def test_parse_thread_status():
    text = (
        "Name:\tmt\nUmask:\t0022\nState:\tt (tracing stop)\nTgid:\t10\n"
        "SigQ:\t0/100\nSigPnd:\t0000000000000200\nShdPnd:\t0000000000000000\n"
        "SigBlk:\t0000000000010000\nSigIgn:\t0000000000000000\n"
    )
    assert procfs.parse_thread_status(text) == ("t", 0x200, 0x10000)
    with pytest.raises(ValueError):
        procfs.parse_thread_status("Name:\tmt\n")


def test_unescape_maps_name():
    assert procmaps.unescape_maps_name("/tmp/a\\012b") == "/tmp/a\nb"


def test_prstatus_layout_x86_64():
    regs = bytes(range(216))
    d = X86_64.build_prstatus(
        tid=77,
        ppid=1,
        pgrp=2,
        sid=3,
        sigpend=0x200,
        sighold=0x400,
        utime=150,
        stime=0,
        cutime=0,
        cstime=0,
        regs=regs,
        fpvalid=True,
    )
    assert len(d) == 336
    assert struct.unpack_from("<iiii", d, 32) == (77, 1, 2, 3)
    assert struct.unpack_from("<QQ", d, 16) == (0x200, 0x400)
    assert d[112 : 112 + 216] == regs
    assert struct.unpack_from("<i", d, 328) == (1,)
    sec, usec = struct.unpack_from("<qq", d, 48)
    assert sec * CLK_TCK + usec * CLK_TCK // 1_000_000 == 150


def test_prstatus_layout_i386():
    regs = bytes(68)
    d = I386.build_prstatus(
        tid=5,
        ppid=6,
        pgrp=7,
        sid=8,
        sigpend=1 << 40,
        sighold=3,
        utime=0,
        stime=0,
        cutime=0,
        cstime=0,
        regs=regs,
        fpvalid=False,
    )
    assert len(d) == 144
    assert struct.unpack_from("<iiii", d, 24) == (5, 6, 7, 8)
    assert struct.unpack_from("<II", d, 16) == (0, 3)  # 32-bit sigsets


def test_wrong_register_size_is_refused():
    with pytest.raises(ValueError):
        X86_64.build_prstatus(
            tid=1,
            ppid=0,
            pgrp=0,
            sid=0,
            sigpend=0,
            sighold=0,
            utime=0,
            stime=0,
            cutime=0,
            cstime=0,
            regs=bytes(68),
            fpvalid=False,
        )


def test_prpsinfo_fields():
    d = X86_64.build_prpsinfo(
        state_index=1,
        sname="S",
        nice=-5,
        flag=0x400000,
        uid=1000,
        gid=100,
        pid=9,
        ppid=1,
        pgrp=9,
        sid=9,
        fname=b"mt",
        psargs=notes.psargs_field(b"./mt\0arg\0"),
    )
    assert len(d) == 136
    assert d[0:4] == bytes([1, ord("S"), 0, 251])
    assert struct.unpack_from("<QIIiiii", d, 8) == (0x400000, 1000, 100, 9, 1, 9, 9)
    assert d[40:56].rstrip(b"\0") == b"mt"
    assert d[56:].rstrip(b"\0") == b"./mt arg "  # kernel keeps the trailing space


def test_psargs_truncates_to_79():
    assert len(notes.psargs_field(b"x" * 200)) == 79


@pytest.mark.parametrize(
    "letter,expect",
    [
        ("R", (0, "R")),
        ("S", (1, "S")),
        ("D", (2, "D")),
        ("T", (3, "T")),
        ("t", (3, "T")),
        ("Z", (4, "Z")),
        ("I", (2, "D")),
    ],
)
def test_state_index(letter, expect):
    assert notes.state_index(letter) == expect


def test_file_note_format():
    d = notes.build_file_note([(0x1000, 0x3000, 2, b"/a"), (0x5000, 0x6000, 0, b"/b c")], 8, 4096)
    count, page = struct.unpack_from("<QQ", d)
    assert (count, page) == (2, 4096)
    assert struct.unpack_from("<6Q", d, 16) == (0x1000, 0x3000, 2, 0x5000, 0x6000, 0)
    assert d[64:] == b"/a\0/b c\0"


def test_file_note_kept_or_left_out_like_the_kernel():
    one = [(0x1000, 0x2000, 0, b"/lib/libc.so.6")]
    limit = 4 << 20
    # the kernel's estimate is 64 bytes per VMA, whatever the files
    assert notes.file_note_fits(one, 65535, 8, 4096, limit)
    assert not notes.file_note_fits(one, 65536, 8, 4096, limit)
    assert not notes.file_note_fits(one, 70000, 4, 4096, limit)
    # names longer than the estimate make the buffer grow by 5/4 until the limit
    long_names = [(0, 0, 0, b"/" + b"x" * 4000)] * 3
    assert notes.file_note_fits(long_names, 3, 8, 4096, limit)
    assert not notes.file_note_fits(long_names, 3, 8, 4096, 8192)


def test_note_padding_and_roundtrip():
    blob = note("CORE", 1, b"abcde") + note("LINUX", 0x202, b"xy")
    assert len(blob) % 4 == 0
    assert list(iter_notes(blob)) == [("CORE", 1, b"abcde"), ("LINUX", 0x202, b"xy")]


def test_layout_offsets_back_to_back():
    loads = [
        Load(0x1000, 0x2000, 0x2000, 6),
        Load(0x5000, 0x1000, 0, 4),
        Load(0x9000, 0x3000, 0x1000, 5),
    ]
    lay = CoreLayout(X86_64, b"n" * 100, loads)
    assert lay.data_off % 4096 == 0 and lay.data_off >= lay.notes_off + 100
    assert list(lay.offsets) == [lay.data_off, lay.data_off + 0x2000, lay.data_off + 0x2000]
    assert lay.file_size == lay.data_off + 0x3000
    hdr = lay.header_block()
    assert len(hdr) == lay.notes_off + 100
    assert struct.unpack_from("<H", hdr, 56)[0] == 4  # e_phnum


def test_pn_xnum_threshold():
    few = CoreLayout(X86_64, b"", [Load(i * 4096, 4096, 0, 4) for i in range(PN_XNUM - 2)])
    assert not few.xnum and few.phnum == PN_XNUM - 1
    many = CoreLayout(X86_64, b"", [Load(i * 4096, 4096, 0, 4) for i in range(PN_XNUM - 1)])
    assert many.xnum and many.phnum == PN_XNUM
    hdr = many.header_block()
    e_shoff = struct.unpack_from("<Q", hdr, 40)[0]
    e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHH", hdr, 56)
    assert (e_phnum, e_shentsize, e_shnum) == (PN_XNUM, 64, 1)
    assert e_shoff == many.data_end
    off, shdr = many.trailer_block()
    assert off == e_shoff and struct.unpack_from("<I", shdr, 44)[0] == PN_XNUM  # sh_info
    assert many.file_size == e_shoff + 64


def test_xsave_layout_from_xcr0():
    xstate = bytearray(600)
    struct.pack_into("<Q", xstate, 464, 0b10000111)  # x87|SSE|AVX|bit 7

    def fake_cpuid(leaf, sub):
        return {2: (256, 576, 0, 0), 7: (1024, 1408, 0, 0)}[sub]

    d = x86.build_xsave_layout(bytes(xstate), fake_cpuid)
    assert struct.unpack("<8I", d) == (2, 256, 576, 0, 7, 1024, 1408, 0)


def test_auxv_through_null_ia32():
    """/proc/PID/auxv of an ia32 process runs on past AT_NULL (it scans 64-bit words)."""
    entries = struct.pack("<6I", 33, 0xF7FAF000, 6, 4096, 0, 0)
    proc_text = entries + struct.pack("<4I", 0x1F8BFBFF, 0, 0, 0)  # as captured
    assert procfs.auxv_through_null(proc_text, 4) == entries
    assert procfs.auxv_through_null(entries, 4) == entries
    as64 = struct.pack("<4Q", 6, 4096, 0, 0)
    assert procfs.auxv_through_null(as64, 8) == as64
    with pytest.raises(ValueError):
        procfs.auxv_through_null(struct.pack("<2I", 6, 4096), 4)


def test_ia32_tls_note_only_when_a_slot_is_in_use():
    """The kernel writes NT_386_TLS only if regset_tls_active(); GETREGSET always gives 48."""
    empty = b"".join(struct.pack("<IIII", n, 0, 0, 0x28) for n in (12, 13, 14))
    # captured from a gcc -m32 thread: glibc's TLS in slot 12, the other two empty
    used = struct.pack("<IIII", 12, 0xF683FB40, 0xFFFFF, 0x51) + empty[16:]
    assert I386.regset_active(0x200, used)
    assert not I386.regset_active(0x200, empty)
    assert X86_64.regset_active(0x202, b"\0" * 512)  # no rule: any data counts
    assert not X86_64.regset_active(0x202, b"")
